"""`alignkit evaluate` end to end on small real subsets, and its bad input (one-line errors)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from _cli import run_cli

from alignkit.aligned import load_pair
from alignkit.cli import main
from alignkit.errors import AlignkitError
from alignkit.evaluation.evaluate import (
    AlignedPair,
    check_retrieval_probe,
    evaluate_pair,
    read_judgements,
)
from alignkit.evaluation.prompts import caption_probe
from alignkit.evaluation.retrieval import retrieval
from alignkit.features import extract_features
from alignkit.probes import ProbeRow, ProbeSet, load_probe
from alignkit.runs import check_run_folder, write_run_config

VISION, TEXT = "random:image-16", "random:text-12"


def _run(error_capsys, *argv: str) -> tuple[int, str, str]:
    return run_cli(list(argv), error_capsys)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
    """A real (tiny) training run: a linear projector on 40 flickr8k:train pairs."""
    from alignkit.projectors import PairedFeatures, TrainConfig, train_projector

    train = load_probe("flickr8k:train", n=40, progress=False, data_dir=data_dir)
    img = extract_features(VISION, train, device="cpu", progress=False).features
    txt = extract_features(TEXT, train, device="cpu", progress=False).features
    folder = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = TrainConfig(width=8, epochs=2, batch_size=16, patience=None)
    data = PairedFeatures(img, txt, torch.arange(40), list(train.ids))
    train_projector(cfg, data, None, out_dir=folder, device="cpu", progress=False)
    write_run_config(folder, VISION, TEXT)
    return folder


def test_evaluate_pair_equals_direct_computation(run_dir, data_dir):
    pair = load_pair(run_dir)
    test = load_probe("flickr8k:test", n=15, progress=False, data_dir=data_dir)
    metrics = evaluate_pair(pair, retrieval_probes=[test], device="cpu")
    # the same numbers by hand: features, heads, normalise, retrieval
    img = extract_features(VISION, test, device="cpu", progress=False).features
    caps, index = caption_probe(test)
    txt = extract_features(TEXT, caps, device="cpu", progress=False).features
    with torch.no_grad():
        i = torch.nn.functional.normalize(pair.image_head(img), dim=-1)
        t = torch.nn.functional.normalize(pair.text_head(txt), dim=-1)
    direct = retrieval(i, t, index).metrics()
    assert len(caps) == 75 and len(test) == 15
    for key, value in direct.items():
        assert metrics[f"retrieval/{test.name}/{key}"] == pytest.approx(value)
    assert metrics[f"retrieval/{test.name}/text_to_image_R@1"]["n"] == 75


def test_cli_writes_metrics_and_table(run_dir, data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))
    out = tmp_path / "eval"
    code, stdout, err = _run(
        capsys,
        "evaluate", "--run", str(run_dir), "--zeroshot", "imagenet-samples",
        "--retrieval", "flickr8k:test", "-n", "12", "--templates", "single", "--out", str(out),
        "--quiet",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads((out / "metrics.json").read_text())
    assert data["complete"] is True
    m = data["metrics"]
    zs = m["zeroshot/imagenet-samples[n=12,seed=0]/top1"]
    assert zs["n"] == 12 and zs["chance"] == pytest.approx(1 / 1000)
    r5 = m["retrieval/flickr8k:test[n=12,seed=0]/image_to_text_R@5"]
    assert r5["n"] == 12 and 0 <= r5["value"] <= 1
    assert "image_to_text_R@5" in stdout and "%" in stdout
    assert not (run_dir / "metrics.json").exists()  # --out given: the run folder is untouched

    # two runs: one comparison table
    other = tmp_path / "tiny2"
    shutil.copytree(run_dir, other)
    code, stdout, err = _run(
        capsys,
        "evaluate", "--run", str(run_dir), "--run", str(other), "--retrieval", "flickr8k:test",
        "-n", "12", "--out", str(tmp_path / "cmp"), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    table = (tmp_path / "cmp" / "comparison.csv").read_text().splitlines()
    assert table[0].split(",")[-2:] == ["tiny", "tiny2"]
    assert (tmp_path / "cmp" / "tiny2" / "metrics.json").is_file()


def test_cli_judgements(run_dir, data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))
    test = load_probe("flickr8k:test", n=6, progress=False, data_dir=data_dir)
    lines = ["image\tcaption\tscore"]
    for k, row in enumerate(test.rows):
        lines.append(f"{row.id}.jpg\t{row.id}#0\t{1 + k % 4}")
        lines.append(f"{row.id}\t{test.rows[(k + 1) % 6].captions[1]}\t{1 + (k * 3) % 4}")
    tsv = tmp_path / "j.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    code, _, err = _run(
        capsys,
        "evaluate", "--run", str(run_dir), "--judgements", str(tsv),
        "--judgements-probe", "flickr8k:test", "--out", str(tmp_path / "j"), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    m = json.loads((tmp_path / "j" / "metrics.json").read_text())["metrics"]
    assert m["judgements/j.tsv/kendall_tau_b"]["n"] == 12
    assert -1 <= m["judgements/j.tsv/spearman"]["value"] <= 1


# -- bad input ------------------------------------------------------------------------------------
def test_run_folder_errors(run_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AlignkitError, match="lacks config.json, projector.safetensors"):
        check_run_folder(empty)
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["format"] = "alignkit.aligned/99"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(AlignkitError, match="format 'alignkit.aligned/99'"):
        check_run_folder(other)
    (other / "config.json").write_text(json.dumps({"text": TEXT}))
    with pytest.raises(AlignkitError, match="names no vision encoder"):
        check_run_folder(other)


def test_cli_bad_input_is_one_line(run_dir, data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))
    code, _, err = _run(capsys, "evaluate", "--run", str(tmp_path / "nope"), "--zeroshot", "x")
    assert code == 1 and err.count("\n") == 1 and "does not exist" in err
    # a probe without labels cannot be used for zero-shot
    code, _, err = _run(capsys, "evaluate", "--run", str(run_dir), "--zeroshot", "flickr8k:test")
    assert code == 1 and "needs a label on every row" in err and err.count("\n") == 1
    # class names that do not cover the labels
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    code, _, err = _run(
        capsys, "evaluate", "--run", str(run_dir), "--zeroshot", "imagenet-samples",
        "--class-names", str(names),
    )  # fmt: skip
    assert code == 1 and "got 2" in err and "class-name list" in err
    assert not (run_dir / "metrics.json").exists()  # nothing partial was written


def test_duplicate_retrieval_ids_and_judgements_not_in_probe(tmp_path, data_dir):
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    rows = [ProbeRow("a", img, ("c",), digest="1"), ProbeRow("a", img, ("d",), digest="2")]

    class Loose:  # a hand-made row list that bypasses ProbeSet's own check
        name = "loose"

    loose = Loose()
    loose.rows = rows
    with pytest.raises(AlignkitError, match="duplicate row ids"):
        check_retrieval_probe(loose)
    probe = ProbeSet("p", (ProbeRow("a", img, ("c",), digest="1"),))
    tsv = tmp_path / "j.tsv"
    tsv.write_text("a\tc\t1\nzz\tc\t2\nyy\tc\t3\nzz\tc\t4\na\tq#0\t1\n")
    with pytest.raises(
        AlignkitError, match=r"3 judgements name images not in probe p \(2 distinct: zz, yy\)"
    ):
        read_judgements(tsv, probe)


def test_aligned_pair_name():
    pair = AlignedPair(VISION, TEXT, lambda x: x, lambda x: x)
    assert pair.name == f"{VISION} x {TEXT}"


def test_quiet_silences_alignkit_logs_for_the_command_only(tmp_path):
    """`evaluate --quiet` raises the alignkit logger to ERROR; it must put the level back, or a
    notebook (or the next test) loses every later warning."""
    import logging

    log = logging.getLogger("alignkit")
    before = log.level
    with pytest.raises(SystemExit) as exc:  # fails fast: nothing to evaluate
        main(["evaluate", "--run", str(tmp_path), "--quiet"])
    assert exc.value.code == 1
    assert log.level == before
