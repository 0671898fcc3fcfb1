"""The README's "Your own data" example, run as a user would on 60 real Flickr8k rows.

A new user writes a manifest in exactly the README's format (``{"id", "image", "caption"}``, image
paths relative to the manifest), leaves one row broken, and types the README's command
``alignkit rank-encoders --probe my_pairs.jsonl --skip-bad --out runs/mine`` with two real
offline encoders and a random-initialised control. The images are symlinks in a temporary folder
(never copied anywhere); features go to a cache in the same folder, which the CSV variant of the
manifest then reads back.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import _cli
import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.real, pytest.mark.slow]

ROWS = 60
VISION = "torchvision:mobilenet_v2"
CONTROL = "random-init:torchvision:mobilenet_v2"
TEXT = "st:sentence-transformers/all-MiniLM-L6-v2"

# the columns docs/ranking.md promises in each output file
SCORES_COLUMNS = (
    "vision text metric score null_mean null_std z p ci_low ci_high chance n k "
    "vision_layer text_layer options"
).split()
METRICS = ("linear_cka_unbiased", "linear_cka", "mutual_knn")  # the default metrics, in order
RANKING_COLUMNS = ["rank", "vision", "text", "control"]
for _m in METRICS:
    RANKING_COLUMNS += [_m, f"{_m}_z", f"{_m}_p", f"{_m}_log10_p", f"rank_{_m}"]
RANKING_COLUMNS += ["null_mean", "ci_low", "ci_high", "significant", "max_rank_shift"]  # any order


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    return _cli.run_cli(["rank-encoders", *argv], capsys)


def write_readme_manifests(data_dir: Path, folder: Path) -> tuple[Path, Path, list[dict]]:
    """The first ``ROWS`` Flickr8k test rows (first caption each) as ``my_pairs.jsonl`` and
    ``my_pairs.csv`` in ``folder``, images symlinked under ``folder/img/``, plus one row whose
    image is missing, in the middle."""
    flickr = data_dir / "flickr8k"
    pairs = [json.loads(line) for line in (flickr / "pairs.jsonl").read_text().splitlines()]
    test = [p for p in pairs if p["split"] == "test"][:ROWS]
    assert len(test) == ROWS
    (folder / "img").mkdir(parents=True)
    rows = []
    for i, pair in enumerate(test, start=1):
        os.symlink((flickr / pair["image"]).resolve(), folder / "img" / f"r{i}.jpg")
        rows.append({"id": f"r{i}", "image": f"img/r{i}.jpg", "caption": pair["captions"][0]})
    broken = {"id": "broken", "image": "img/missing.jpg", "caption": "a dog on a beach"}
    written = [*rows[: ROWS // 2], broken, *rows[ROWS // 2 :]]
    jsonl = folder / "my_pairs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in written))
    csv_path = folder / "my_pairs.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "image", "caption"])
        writer.writeheader()
        writer.writerows(written)
    return jsonl, csv_path, rows


def naive_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Biased linear CKA (Kornblith et al. 2019, eq. 5) of (n, d) features, written out."""
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def test_readme_own_data_example_on_60_flickr8k_rows(
    data_dir: Path, tmp_path: Path, capsys
) -> None:
    jsonl, csv_path, rows = write_readme_manifests(data_dir, tmp_path / "mine")
    cache = tmp_path / "cache"
    encoders = ["-v", VISION, "-v", CONTROL, "-t", TEXT, "--cache", str(cache)]

    # without --skip-bad the broken row stops the run, and the error names the flag to pass
    code, _, err = run_cli(["--probe", str(jsonl), "--out", str(tmp_path / "x"), *encoders], capsys)
    assert code == 1 and "broken" in err and "--skip-bad" in err
    assert not (tmp_path / "x").exists()

    # the README's command (no --n): every good row is used, and the run says so
    out = tmp_path / "runs" / "mine"
    argv = ["--probe", str(jsonl), "--skip-bad", "--out", str(out), *encoders]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    said = stdout + err
    assert "all rows up to 500" in said and f"n={ROWS} of {ROWS} rows" in said
    assert "skipped 1 bad probe row (broken)" in said

    meta = json.loads((out / "run.json").read_text())
    assert meta["probe"]["n"] == ROWS and meta["probe"]["n_given"] is None
    assert meta["probe"]["rows_available"] == ROWS
    (skipped,) = meta["probe"]["skipped_rows"]
    assert skipped["id"] == "broken" and "missing.jpg" in skipped["reason"]
    assert "line 31" in skipped["where"]  # the broken row's line in my_pairs.jsonl
    summary = (out / "summary.md").read_text()
    assert "Skipped 1 bad probe row (skip_bad)" in summary and "`broken`" in summary

    # output files with the documented columns
    for name in ("scores.csv", "ranking.csv", "run.json", "summary.md", "top_pairs.png"):
        assert (out / name).is_file(), name
    for metric in METRICS:
        assert (out / f"heatmap_{metric}.png").is_file(), metric
    scores = pd.read_csv(out / "scores.csv")
    assert set(SCORES_COLUMNS) <= set(scores.columns)
    assert set(scores["n"]) == {ROWS}
    ranking = pd.read_csv(out / "ranking.csv")
    assert set(ranking.columns) == set(RANKING_COLUMNS)

    # the real pair is first under the first metric, significant, and apart from the control
    assert list(ranking["vision"]) == [VISION, CONTROL]
    assert list(ranking["control"]) == [False, True]
    real, control = ranking.iloc[0], ranking.iloc[1]
    assert real["rank_linear_cka_unbiased"] == 1 and control["rank_linear_cka_unbiased"] == 2
    assert bool(real["significant"]) and real["linear_cka_unbiased_p"] < 0.05
    assert real["ci_low"] > control["ci_high"]  # intervals do not overlap: not a tie

    # the scores are those of the users' 60 rows: biased linear CKA recomputed here from the
    # cached features, row by row in the manifest's order
    from alignkit.ranking import Ranking

    loaded = Ranking.load(out, features=True)
    assert list(loaded.probe.ids) == [r["id"] for r in rows]
    text = np.asarray(loaded.features[TEXT].features, dtype=np.float64).reshape(ROWS, -1)
    for vision, row in ((VISION, real), (CONTROL, control)):
        image = np.asarray(loaded.features[vision].features, dtype=np.float64).reshape(ROWS, -1)
        assert row["linear_cka"] == pytest.approx(naive_linear_cka(image, text), rel=1e-4)

    # the same rows as CSV: the same probe, read back from the cache, the same scores
    entries_before = sorted(p.name for p in cache.rglob("*.safetensors"))
    out_csv = tmp_path / "runs" / "mine-csv"
    argv = ["--probe", str(csv_path), "--skip-bad", "--out", str(out_csv), *encoders, "--quiet"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    meta_csv = json.loads((out_csv / "run.json").read_text())
    assert meta_csv["probe"]["fingerprint"] == meta["probe"]["fingerprint"]
    assert [r["id"] for r in meta_csv["probe"]["skipped_rows"]] == ["broken"]
    assert "my_pairs.csv line 32" in meta_csv["probe"]["skipped_rows"][0]["where"]  # + header
    assert sorted(p.name for p in cache.rglob("*.safetensors")) == entries_before
    ranking_csv = pd.read_csv(out_csv / "ranking.csv")
    pd.testing.assert_frame_equal(ranking_csv, ranking)
