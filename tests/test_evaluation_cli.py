"""`alignkit evaluate` end to end on small real subsets, and its bad input (one-line errors)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from _cli import run_cli
from _training_support import tiny_run

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
from alignkit.runs import check_run_folder

VISION, TEXT = "random:image-16", "random:text-12"


def _run(error_capsys, *argv: str) -> tuple[int, str, str]:
    return run_cli(list(argv), error_capsys)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
    """A tiny real run folder (linear projector on 40 flickr8k:train pairs, random encoders)."""
    return tiny_run(tmp_path_factory.mktemp("runs") / "tiny", data_dir, VISION, TEXT, epochs=2)


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


# -- the command's options are the declaration (issue 20) -----------------------------------------
def test_the_options_table_in_the_docs_is_the_declaration() -> None:
    from pathlib import Path

    from alignkit.cli._options import options_markdown
    from alignkit.evaluation.config import EvaluateConfig

    doc = (Path(__file__).parents[1] / "docs" / "evaluation.md").read_text(encoding="utf-8")
    table = doc.split("<!-- evaluate-options:begin -->\n", 1)[1].split("\n<!-- evaluate-", 1)[0]
    assert table == options_markdown(EvaluateConfig), "regenerate the table in docs/evaluation.md"


def test_evaluate_shares_the_vocabulary_and_device_defaults_to_auto() -> None:
    from alignkit.evaluation.config import EvaluateConfig
    from alignkit.options import declared
    from alignkit.vocabulary import SHARED

    fields = {f.name: (f, opt) for f, opt in declared(EvaluateConfig)}
    assert EvaluateConfig().device == "auto"
    for name in ("device", "cache", "n", "seed"):
        f, opt = fields[name]
        assert opt.help.startswith(SHARED[name][1].help) and opt.short == SHARED[name][1].short


def test_old_import_paths_say_where_to_go() -> None:
    import importlib
    import sys

    from alignkit.aligned import load_pair as new_load_pair

    with pytest.warns(DeprecationWarning, match="alignkit.aligned.load_pair"):
        from alignkit.evaluation.runs import load_pair as old
    assert old is new_load_pair
    sys.modules.pop("alignkit.compare", None)
    with pytest.raises(ImportError, match="alignkit.metrics.pairs"):
        importlib.import_module("alignkit.compare")


# -- trust: leakage, merged metrics, output failures, damaged runs (issue 16) ---------------------
def _with_training_probe(run_dir, tmp_path, data_dir, name="trained"):
    """A copy of the run whose config.json records its training rows, as `alignkit train` does
    (40 flickr8k:train rows)."""
    train = load_probe("flickr8k:train", n=40, progress=False, data_dir=data_dir)
    folder = tmp_path / name
    shutil.copytree(run_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["probe"] = {"spec": "flickr8k:train", "name": train.name, "n": 40,
                    "fingerprint": train.fingerprint}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder, train


def test_evaluating_on_training_rows_is_refused_then_marked(
    run_dir, data_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))
    folder, train = _with_training_probe(run_dir, tmp_path, data_dir)
    code, _, err = _run(capsys, "evaluate", "--run", str(folder), "--retrieval", "flickr8k:train",
                        "-n", "60", "--quiet")  # fmt: skip
    probe = load_probe("flickr8k:train", n=60, progress=False, data_dir=data_dir)
    expected = len(set(probe.ids) & set(train.ids))
    assert 0 < expected < 60  # a prefix-stable subsample: the 40 training rows are among the 60
    assert code == 1 and err.count("\n") == 1
    assert f"{expected} of 60 rows" in err and "--allow-overlap" in err
    assert not (folder / "metrics.json").exists()

    code, out, err = _run(capsys, "evaluate", "--run", str(folder), "--retrieval", "flickr8k:train",
                          "-n", "60", "--allow-overlap", "--quiet")  # fmt: skip
    assert code == 0, err
    metrics = json.loads((folder / "metrics.json").read_text())["metrics"]
    key = f"retrieval/{probe.name}/image_to_text_R@1"
    assert metrics[key]["overlap"] == {"rows": expected, "of": 60}
    assert "%*" in out and "not a held-out number" in out
    # held-out rows are evaluated without a mark
    code, out, err = _run(capsys, "evaluate", "--run", str(folder), "--retrieval", "flickr8k:test",
                          "-n", "12", "--quiet")  # fmt: skip
    assert code == 0, err and "*" not in out


def test_overlap_by_image_content_under_other_ids(run_dir, data_dir, tmp_path, capsys, monkeypatch):
    """The same training images under new ids (a manifest of copies) still overlap."""
    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))
    folder, train = _with_training_probe(run_dir, tmp_path, data_dir)
    lines = []
    for k, row in enumerate(train.rows[:5]):
        copy = tmp_path / f"copy{k}.jpg"
        shutil.copyfile(row.image, copy)
        lines.append(json.dumps({"id": f"new{k}", "image": copy.name, "caption": "a photo"}))
    manifest = tmp_path / "copies.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    code, _, err = _run(capsys, "evaluate", "--run", str(folder), "--retrieval", str(manifest))
    assert code == 1 and "5 of 5 rows" in err and "same image" in err


def test_overlap_by_id_needs_the_same_captions(run_dir, data_dir, tmp_path, capsys, monkeypatch):
    """Ids alone collide between unrelated sets (img2dataset numbers every download's keys from
    000000000): other images and captions under the training ids are held out; a re-encoded copy
    of a training row (same id and captions, other image bytes) still overlaps."""
    from PIL import Image

    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))
    folder, train = _with_training_probe(run_dir, tmp_path, data_dir)
    test = load_probe("flickr8k:test", n=6, progress=False, data_dir=data_dir)
    other = [
        {"id": t.id, "image": str(r.image), "captions": list(r.captions)}
        for t, r in zip(train.rows, test.rows, strict=False)
    ]
    unrelated = tmp_path / "unrelated.jsonl"
    unrelated.write_text("".join(json.dumps(x) + "\n" for x in other))
    code, out, err = _run(capsys, "evaluate", "--run", str(folder), "--retrieval", str(unrelated),
                          "--quiet")  # fmt: skip
    assert code == 0, err
    assert "*" not in out
    copies = []
    for k, row in enumerate(train.rows[:5]):
        path = tmp_path / f"reencoded{k}.jpg"
        Image.open(row.image).save(path, quality=70)
        assert path.read_bytes() != open(row.image, "rb").read()
        copies.append({"id": row.id, "image": path.name, "captions": list(row.captions)})
    reencoded = tmp_path / "reencoded.jsonl"
    reencoded.write_text("".join(json.dumps(x) + "\n" for x in copies))
    code, _, err = _run(capsys, "evaluate", "--run", str(folder), "--retrieval", str(reencoded))
    assert code == 1 and "5 of 5 rows" in err and "same row id and captions" in err


def test_a_second_evaluation_merges_into_metrics_json(
    run_dir, data_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    base = ["evaluate", "--run", str(folder), "-n", "12", "--quiet"]
    assert _run(capsys, *base, "--retrieval", "flickr8k:test")[0] == 0
    first = json.loads((folder / "metrics.json").read_text())["metrics"]
    assert _run(capsys, *base, "--zeroshot", "imagenet-samples", "--templates", "single")[0] == 0
    second = json.loads((folder / "metrics.json").read_text())
    keys = second["metrics"]
    assert set(first) < set(keys)  # the retrieval keys are still there, zero-shot added
    for key, value in first.items():
        assert keys[key] == value  # untouched: same value, same time
    test = load_probe("flickr8k:test", n=12, progress=False, data_dir=data_dir)
    zs = load_probe("imagenet-samples", n=12, progress=False, data_dir=data_dir)
    for key, value in keys.items():
        probe = test if key.startswith("retrieval/") else zs
        assert value["probe_fingerprint"] == probe.fingerprint and value["computed"]
    assert len(second["evaluations"]) == 2


def _immutable(path):
    import subprocess

    return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


def test_an_unwritable_output_is_refused_before_the_work(
    run_dir, data_dir, tmp_path, capsys, monkeypatch
):
    import subprocess

    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))
    locked = tmp_path / "locked"
    locked.mkdir()
    if not _immutable(locked):  # not root or no chattr here: a path under a file fails alike
        locked = tmp_path / "a-file"
        locked.write_text("x")
        locked = locked / "out"
    calls = []
    import alignkit.evaluation.evaluate as ev

    monkeypatch.setattr(ev, "evaluate_pair", lambda *a, **k: calls.append(1) or {})
    try:
        code, _, err = _run(
            capsys, "evaluate", "--run", str(run_dir), "--retrieval", "flickr8k:test",
            "-n", "12", "--out", str(locked), "--quiet",
        )  # fmt: skip
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "locked")], capture_output=True)
    assert code == 1 and err.count("\n") == 1 and "cannot write" in err and str(locked) in err
    assert calls == []  # refused before any evaluation


def test_a_failed_write_prints_the_results_and_why(
    run_dir, data_dir, tmp_path, capsys, monkeypatch
):
    import errno

    import alignkit.runs.metrics as metrics_module

    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))

    def full(path, text, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(metrics_module, "atomic_write_text", full)
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "evaluate", "--run", str(run_dir), "--retrieval",
                             "flickr8k:test", "-n", "12", "--out", str(out), "--quiet")  # fmt: skip
    assert code == 1
    assert "image_to_text_R@5" in stdout and "%" in stdout  # the computed results
    assert err.count("\n") == 1 and "No space left on device" in err
    assert str(out / "metrics.json") in err


def _damaged(run_dir, tmp_path, name):
    folder = tmp_path / name
    shutil.copytree(run_dir, folder)
    return folder


def test_damaged_projector_files_are_named_at_load(
    run_dir, data_dir, tmp_path, capsys, monkeypatch
):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from alignkit.aligned import load_aligned

    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))
    argv = ["--retrieval", "flickr8k:test", "-n", "12", "--quiet"]
    # random bytes over the tensor data (the header intact): loads, but the weights are garbage
    noisy = _damaged(run_dir, tmp_path, "noisy")
    path = noisy / "projector.safetensors"
    blob = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(blob[:8], "little")
    blob[header:] = b"\xff" * (len(blob) - header)  # 0xffffffff: NaN in float32
    path.write_bytes(bytes(blob))
    code, _, err = _run(capsys, "evaluate", "--run", str(noisy), *argv)
    assert code == 1 and err.count("\n") == 1
    assert "non-finite" in err and str(path) in err
    with pytest.raises(AlignkitError, match="non-finite"):
        load_aligned(noisy, device="cpu")
    # an explicit NaN weight
    nan = _damaged(run_dir, tmp_path, "nan")
    path = nan / "projector.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    first = sorted(tensors)[0]
    tensors[first] = tensors[first].clone()
    tensors[first].view(-1)[0] = float("inf")
    save_file(tensors, str(path), metadata=meta)
    code, _, err = _run(capsys, "evaluate", "--run", str(nan), *argv)
    assert code == 1 and "non-finite" in err and first in err
    # config.json's width disagrees with the projector's input
    wide = _damaged(run_dir, tmp_path, "wide")
    cfg = json.loads((wide / "config.json").read_text())
    cfg["vision"]["dim"] = 99
    (wide / "config.json").write_text(json.dumps(cfg))
    code, _, err = _run(capsys, "evaluate", "--run", str(wide), *argv)
    assert code == 1 and err.count("\n") == 1 and "config.json" in err and "99" in err
    # config.json names an encoder of another width (no recorded width): refused before extraction
    other = _damaged(run_dir, tmp_path, "other")
    cfg = json.loads((other / "config.json").read_text())
    cfg["vision"] = {"spec": "random:image-8", "options": {}, "tokens": False}
    (other / "config.json").write_text(json.dumps(cfg))
    import alignkit.features as features

    calls = []
    real = features.extract_features
    monkeypatch.setattr(
        features, "extract_features", lambda *a, **k: calls.append(a) or real(*a, **k)
    )
    code, _, err = _run(capsys, "evaluate", "--run", str(other), *argv)
    assert code == 1 and err.count("\n") == 1 and "8-wide" in err and "takes 16" in err
    assert calls == []


# -- the wrong kind of folder (issue 17 item 6) ---------------------------------------------------
def test_evaluate_on_the_wrong_kind_of_folder_says_what_it_is(
    run_dir, data_dir, tmp_path, capsys, monkeypatch
):
    from alignkit.evaluation.predictivity import PredictivityConfig, run_predictivity

    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))
    ranking = tmp_path / "ranking"
    code, _, err = _run(
        capsys, "rank-encoders", "--vision", VISION, "--text", TEXT, "--probe", "synthetic",
        "--n", "24", "--permutations", "2", "--subsamples", "0", "--out", str(ranking), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    argv = ["--retrieval", "flickr8k:test", "-n", "12"]
    code, _, err = _run(capsys, "evaluate", "--run", str(ranking), *argv)
    assert code == 1 and err.count("\n") == 1
    assert "a ranking folder" in err and "train --from-ranking" in err

    pred = tmp_path / "pred"
    grid = PredictivityConfig(vision=(VISION,), text=(TEXT, "random:text-6", "random:text-8"),
                              score_n=24, permutations=2, device="cpu")  # fmt: skip
    run_predictivity(grid, pred, stop_after="scores")
    code, _, err = _run(capsys, "evaluate", "--run", str(pred), *argv)
    assert code == 1 and err.count("\n") == 1 and "a predictivity experiment" in err

    parent = tmp_path / "from-ranking"
    for name in ("pair-a", "pair-b"):
        shutil.copytree(run_dir, parent / name)
    code, _, err = _run(capsys, "evaluate", "--run", str(parent), *argv)
    assert code == 1 and err.count("\n") == 1
    assert "a folder of 2 trained runs" in err and "pair-a, pair-b" in err
    assert "expected" in err


def test_load_aligned_tells_a_missing_folder_from_an_unfinished_run(tmp_path):
    from alignkit.aligned import load_aligned

    with pytest.raises(AlignkitError, match="does not exist"):
        load_aligned(tmp_path / "nowhere")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "run.json").write_text(json.dumps({"kind": "train", "status": "running"}))
    with pytest.raises(AlignkitError, match="unfinished training run.*'running'"):
        load_aligned(unfinished)


# -- a CLIP_benchmark folder brings its class names and templates (issue 18) ---------------------
@pytest.mark.real
def test_clip_benchmark_folder_templates_are_the_default_and_an_override_wins(
    run_dir, data_dir, tmp_path, capsys
):
    from test_probes_webdataset import _clip_benchmark

    from alignkit.evaluation.prompts import prompt_probe
    from alignkit.evaluation.zeroshot import ensemble_classifier, zeroshot

    root, _ = _clip_benchmark(data_dir, tmp_path / "wds_tiny")  # 20 real images, 5 classes
    own = ["a photo of a {}.", "a blurry photo of the {}."]  # the folder's file, {c} -> {}
    out = tmp_path / "eval"
    argv = ["evaluate", "--run", str(run_dir), "--zeroshot", str(root), "--out", str(out)]
    code, stdout, err = _run(capsys, *argv, "--quiet")
    assert code == 0, err
    top1 = json.loads((out / "metrics.json").read_text())["metrics"][f"zeroshot/{root}/top1"]
    assert (top1["templates"], top1["n_templates"]) == ("probe", 2)
    assert f"zero-shot templates on {root}: probe (2 templates)" in stdout
    # the number is the one the folder's class names and templates give, computed by hand
    pair, probe = load_pair(run_dir), load_probe(root, progress=False)
    names = ["tench", "goldfish", "white shark", "tiger shark", "hammerhead"]
    img = extract_features(VISION, probe, device="cpu", progress=False).features
    txt = extract_features(TEXT, prompt_probe(names, own), device="cpu", progress=False).features
    with torch.no_grad():
        i = torch.nn.functional.normalize(pair.image_head(img), dim=-1)
        t = torch.nn.functional.normalize(pair.text_head(txt), dim=-1)
    direct = zeroshot(i, ensemble_classifier(t, 5), probe.labels).metrics()["top1"]["value"]
    assert top1["value"] == pytest.approx(direct)
    # --templates wins over the folder's file
    code, stdout, err = _run(capsys, *argv, "--templates", "single", "--quiet")
    assert code == 0, err
    top1 = json.loads((out / "metrics.json").read_text())["metrics"][f"zeroshot/{root}/top1"]
    assert (top1["templates"], top1["n_templates"]) == ("single", 1)
    assert f"zero-shot templates on {root}: single (1 template)" in stdout
    # a probe without templates of its own still gets imagenet7
    labelled = load_probe("imagenet-samples", n=5, progress=False, data_dir=data_dir)
    metrics = evaluate_pair(pair, zeroshot_probes=[labelled], device="cpu")
    assert metrics[f"zeroshot/{labelled.name}/top1"]["n_templates"] == 7
