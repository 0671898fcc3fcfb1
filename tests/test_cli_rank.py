"""`alignkit rank-encoders`: help, bad input (one line, exit 1), and real end-to-end runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import _cli
import pandas as pd
import pytest

OPTIONS = (
    "--vision",
    "--text",
    "--set",
    "--config",
    "--probe",
    "--n",
    "--metric",
    "--permutations",
    "--subsamples",
    "--layers",
    "--k",
    "--seed",
    "--extract-batch",
    "--threads",
    "--class-names",
    "--caption-policy",
    "--device",
    "--cache",
    "--out",
    "--overwrite",
    "--keep-going",
    "--skip-bad",
    "--svg",
    "--null",
    "--alpha",
    "--top",
    "--quiet",
)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    return _cli.run_cli(["rank-encoders", *argv], capsys)


def test_help_explains_every_option(capsys) -> None:
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    for option in OPTIONS:
        assert option in out, option
    assert "offline-small" in out and "synthetic" in out and "ALIGNKIT_DATA_DIR" in out


def _one_error_line(code: int, err: str) -> str:
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_unknown_config_key_lists_valid_keys(tmp_path: Path, capsys) -> None:
    path = tmp_path / "rank.yaml"
    path.write_text("probe: synthetic\nvisoin: [onnx:sscd]\n")
    line = _one_error_line(
        *run_cli(["--config", str(path), "--out", str(tmp_path / "o")], capsys)[::2]
    )
    assert "unknown key 'visoin'" in line and "valid keys:" in line and "vision" in line


def test_out_holding_a_run_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}")
    (out / "scores.csv").write_text("old")
    argv = ["--vision", "no-such:encoder", "--text", "no-such:text", "--out", str(out)]
    line = _one_error_line(*run_cli(argv, capsys)[::2])
    assert "already holds a run's results; pass --overwrite" in line
    assert (out / "scores.csv").read_text() == "old"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--vision", "torchvision:mobilenet_v2"], "no text encoder given"),
        (["--text", "wordllama:l2_supercat"], "no vision encoder given"),
        (
            ["--vision", "a:b", "--text", "c:d", "--metric", "cka"],
            "unknown metric 'cka'; expected one of:",
        ),
        (
            ["--vision", "a:b", "--text", "c:d", "--layers", "some"],
            "layers must be one of last, all",
        ),
        (
            ["--vision", "a:b", "--text", "c:d", "--n", "8"],
            "probe too small: k=10 neighbours need n >= k + 2",
        ),
        (
            ["--vision", "a:b", "--text", "c:d", "--n", "4", "--metric", "linear_cka"]
            + ["--subsamples", "0"],
            "probe too small for 100 permutations: n=4 rows have only 24 orderings",
        ),
        (["--set", "no-such-set"], "unknown encoder set 'no-such-set'; expected one of:"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    line = _one_error_line(
        *run_cli([*argv, "--probe", "synthetic", "--out", str(tmp_path / "o")], capsys)[::2]
    )
    assert message in line
    assert not (tmp_path / "o").exists()


def test_an_encoder_that_fails_to_load_is_named(tmp_path: Path, capsys) -> None:
    argv = [
        "--vision",
        "nope:model",
        "--text",
        "wordllama:l2_supercat",
        "--probe",
        "synthetic",
        "--n",
        "24",
        "--permutations",
        "10",
        "--quiet",
        "--out",
        str(tmp_path / "o"),
    ]
    line = _one_error_line(*run_cli(argv, capsys)[::2])
    assert "encoder nope:model failed" in line and "--keep-going" in line
    assert not (tmp_path / "o").exists()


# -- real weights, real images ---------------------------------------------------------------------
REAL_VISION = ("torchvision:mobilenet_v2", "efficientnet-lite:efficientnet_lite0")
REAL_TEXT = ("st:sentence-transformers/all-MiniLM-L6-v2", "onnx:paraphrase-MiniLM-L3-v2")
CONTROL = "random-init:torchvision:mobilenet_v2"


@pytest.mark.real
def test_real_run_ranks_controls_last_and_resumes_from_the_cache(
    data_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))
    # the session's default cache (CI shares it across tests): the notebooks reuse these features
    out = tmp_path / "flickr"
    argv = ["--probe", "flickr8k:test", "--n", "100", "--permutations", "30", "--subsamples", "10"]
    # (the same probe, encoders and calibration as notebooks/01, which then reads the cache)
    argv += ["--out", str(out), "--quiet"]
    for spec in (*REAL_VISION, CONTROL):
        argv += ["--vision", spec]
    for spec in REAL_TEXT:
        argv += ["--text", spec]

    # 1. interrupted half-way (Ctrl-C while the control, the third vision encoder, is extracted):
    #    no output folder, and the two finished encoders stay in the cache
    import alignkit.ranking.pipeline as ranking_module

    real_extract = ranking_module._extract

    def interrupt_at_control(entry, *args, **kwargs):
        if entry.spec == CONTROL:
            raise KeyboardInterrupt
        return real_extract(entry, *args, **kwargs)

    monkeypatch.setattr(ranking_module, "_extract", interrupt_at_control)
    code, _, err = run_cli(argv, capsys)
    assert code == 130, err
    assert not out.exists()
    from alignkit.features import FeatureCache

    def entries() -> dict[str, tuple[str, str]]:
        return {e.key: (e.encoder, e.created) for e in FeatureCache().list("*flickr8k*")}

    first = entries()
    assert set(REAL_VISION) <= {enc for enc, _ in first.values()}
    monkeypatch.setattr(ranking_module, "_extract", real_extract)

    # 2. the re-run finishes and recomputes nothing that was done
    t0 = time.perf_counter()
    code, stdout, err = run_cli([*argv, "--vision", "nope:missing", "--keep-going"], capsys)
    first_s = time.perf_counter() - t0
    assert code == 0, err
    after = entries()
    for key, (spec, created) in first.items():
        assert after[key] == (spec, created), f"{spec} was recomputed"
    assert "skipped nope:missing" in err
    meta = json.loads((out / "run.json").read_text())
    assert [f["spec"] for f in meta["failed_encoders"]] == ["nope:missing"]
    assert meta["probe"]["name"].startswith("flickr8k") and meta["probe"]["n"] == 100
    assert {e["label"] for e in meta["encoders"]} == {*REAL_VISION, CONTROL, *REAL_TEXT}
    assert all(e["weights_identity"] for e in meta["encoders"])
    for name in (
        "scores.csv",
        "ranking.csv",
        "heatmap_linear_cka_unbiased.png",
        "heatmap_mutual_knn.png",
        "agreement.png",
        "top_pairs.png",
        "summary.md",
    ):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.svg"))  # SVG only with --svg
    assert "mobilenet_v2" in stdout and "wrote" in stdout

    # 3. the controls rank last under every metric, and every real pair beats its null
    table = pd.read_csv(out / "ranking.csv")
    assert len(table) == 3 * 2
    for metric in ("linear_cka_unbiased", "linear_cka", "mutual_knn"):
        ranks = table.set_index("vision")[f"rank_{metric}"]
        assert ranks.loc[CONTROL].min() > ranks.drop(index=CONTROL).max(), metric
    real = table[~table["control"]]
    assert (real["linear_cka_unbiased_p"] < 0.05).all() and (real["mutual_knn_p"] < 0.05).all()
    assert (real["linear_cka_unbiased_z"] > 3).all()
    scores = pd.read_csv(out / "scores.csv")
    knn = scores[scores["metric"] == "mutual_knn"]
    assert (knn["chance"] - 10 / 99).abs().max() < 1e-9

    # 4. a second full run is served from the cache and refuses to overwrite without --overwrite
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and "--overwrite" in err
    t0 = time.perf_counter()
    code, _, err = run_cli([*argv, "--overwrite"], capsys)
    second_s = time.perf_counter() - t0
    assert code == 0, err
    assert entries() == after  # nothing recomputed
    timings = json.loads((out / "run.json").read_text())["timings"]
    print(f"re-run {second_s:.1f} s (first complete run {first_s:.1f} s); {timings}")
    new = pd.read_csv(out / "ranking.csv")
    pd.testing.assert_frame_equal(new, table)  # same seed, same features: the same numbers


def test_quiet_silences_transformers_weight_loading_bars():
    # --quiet promises no bars; transformers' own "Loading weights" bar bypasses progress=.
    from transformers.utils import logging as hf_logging

    from alignkit.cli import silence_third_party_progress

    hf_logging.enable_progress_bar()
    try:
        assert hf_logging.is_progress_bar_enabled()
        silence_third_party_progress()
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()
