"""The same 40 real Flickr8k pairs as a manifest, as img2dataset's webdataset shards and as HF
parquet files, through ``alignkit rank-encoders``, ``train`` and ``evaluate --retrieval`` as a
user runs them; and zero-shot on a CLIP_benchmark folder against the same rows as a labelled
manifest. Every number must equal the manifest form's: scores.csv, the trained projector's tensors,
metrics.json values (issue 18, "Done when").

Each form extracts its own features into its own cache, so the shard and parquet numbers come
from their own image bytes, not from the manifest's cache entries. Torch uses one thread, so the
sums run in one order whatever the machine's load.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from test_probes_hfdata import _table  # the builders of the probe tests, reused
from test_probes_webdataset import _clip_benchmark, _flickr_rows, _write_manifest, _write_shards

from alignkit.cli import main
from alignkit.probes import load_probe

pytestmark = [pytest.mark.real, pytest.mark.slow]

VISION, TEXT = "onnx:sscd_distilled", "onnx:paraphrase-MiniLM-L3-v2"  # fast real encoders
FORMS = ("manifest", "shards", "parquet")
RECIPE = ["-v", VISION, "-t", TEXT, "--epochs", "3", "--batch-size", "8", "--width", "32"]


def _alignkit(*argv: str) -> None:
    """``alignkit ARGV`` in this process; a non-zero exit fails the test (stderr shows why)."""
    try:
        main(list(argv))
    except SystemExit as exc:
        assert not exc.code, f"alignkit {' '.join(argv)} exited with {exc.code}"


def _write_forms(root: Path, data_dir: Path) -> dict[str, tuple[str, str]]:
    """(training probe, test probe) spec of each form: 28 training and 12 test pairs."""
    rows = _flickr_rows(data_dir, 40)
    train, test = rows[:28], rows[28:]
    root.mkdir(parents=True)
    _write_manifest(root / "train.jsonl", train)
    _write_manifest(root / "test.jsonl", test)
    _write_shards(root / "shards" / "train", train, per_shard=10)  # 10 + 10 + 8
    _write_shards(root / "shards" / "test", test, per_shard=5)  # 5 + 5 + 2
    hub = root / "hf" / "data"  # the hub's layout: <split>-0000k-of-0000n.parquet
    hub.mkdir(parents=True)
    pq.write_table(_table(train[:14]), hub / "train-00000-of-00002.parquet", row_group_size=5)
    pq.write_table(_table(train[14:]), hub / "train-00001-of-00002.parquet", row_group_size=5)
    pq.write_table(_table(test), root / "hf" / "test.parquet")
    return {
        "manifest": (str(root / "train.jsonl"), str(root / "test.jsonl")),
        "shards": (f"{root}/shards/train/{{00000..00002}}.tar", str(root / "shards" / "test")),
        "parquet": (str(hub), str(root / "hf" / "test.parquet")),
    }


def _projector(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A projector file's tensors and metadata. Its bytes are not compared: safetensors writes
    the metadata keys in a hash map's order, which changes from one file to the next."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    return load_file(str(path)), metadata


def _metric_values(metrics_json: Path) -> dict[tuple[str, str], float]:
    """metrics.json values keyed by (kind, metric): the probe's name, between them, differs by
    form (``retrieval/<name>/image_to_text_R@5``)."""
    metrics = json.loads(metrics_json.read_text())["metrics"]
    return {(k.split("/")[0], k.rsplit("/", 1)[1]): v["value"] for k, v in metrics.items()}


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, tuple[str, str]]:
    return _write_forms(tmp_path_factory.mktemp("formats") / "data", data_dir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, specs) -> dict[str, Path]:
    """Per form: rank-encoders, train (3 epochs) and evaluate --retrieval, each form with its
    own feature cache; returns the folder holding each form's ``rank/``, ``train/``."""
    root = tmp_path_factory.mktemp("runs")
    common = ["--device", "cpu", "--quiet"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALIGNKIT_THREADS", "1")
        for form in FORMS:
            train, test = specs[form]
            out, cache = root / form, str(root / form / "cache")
            _alignkit(
                "rank-encoders", "-v", VISION, "-t", TEXT, "--probe", train,
                "--out", str(out / "rank"), "--cache", cache, *common,
            )  # fmt: skip
            _alignkit("train", *RECIPE, "--probe", train, "--out", str(out / "train"),
                      "--cache", cache, *common)  # fmt: skip
            _alignkit(
                "evaluate", "--run", str(out / "train"), "--retrieval", test, "--cache", cache,
                *common,
            )  # fmt: skip
    return {form: root / form for form in FORMS}


@pytest.mark.parametrize("form", ["shards", "parquet"])
def test_rank_encoders_scores_equal_the_manifest(runs, form: str) -> None:
    rows = (runs[form] / "rank" / "scores.csv").read_text().splitlines()
    assert len(rows) > 3  # a header and one row per metric
    assert rows == (runs["manifest"] / "rank" / "scores.csv").read_text().splitlines()


@pytest.mark.parametrize("form", ["shards", "parquet"])
def test_trained_projector_equals_the_manifest(runs, form: str) -> None:
    got, want = (
        _projector(runs[f] / "train" / "projector.safetensors") for f in (form, "manifest")
    )
    assert got[1] == want[1]  # the metadata: recipe, widths
    assert got[0].keys() == want[0].keys() and len(want[0]) == 5
    for name, tensor in want[0].items():
        assert torch.equal(got[0][name], tensor), name  # bitwise
    done = json.loads((runs[form] / "train" / "run.json").read_text())
    assert done["status"] == "done" and done["steps"] == 3 * (28 // 8)


@pytest.mark.parametrize("form", ["shards", "parquet"])
def test_retrieval_metrics_equal_the_manifest(runs, form: str) -> None:
    got = _metric_values(runs[form] / "train" / "metrics.json")
    want = _metric_values(runs["manifest"] / "train" / "metrics.json")
    assert ("retrieval", "image_to_text_R@5") in want and len(want) == 10
    assert got == want


def test_zeroshot_on_a_clip_benchmark_folder_equals_the_manifest(
    runs, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder's class names and templates (``{c}``) are used as the manifest form's
    ``--class-names`` / ``--templates`` files are."""
    folder, rows = _clip_benchmark(data_dir, tmp_path / "wds_tiny")
    labels = _write_manifest(tmp_path / "labels.jsonl", rows)
    monkeypatch.setenv("ALIGNKIT_THREADS", "1")
    run, out = str(runs["manifest"] / "train"), tmp_path / "out"
    common = ["--device", "cpu", "--quiet", "--cache", str(tmp_path / "cache")]
    monkeypatch.chdir(tmp_path)  # the folder as a user types it
    _alignkit("evaluate", "--run", run, "--zeroshot", "wds_tiny/", "-o", str(out / "wds"), *common)
    _alignkit(
        "evaluate", "--run", run, "--zeroshot", str(labels), "-o", str(out / "manifest"),
        "--class-names", str(folder / "classnames.txt"),
        "--templates", str(folder / "zeroshot_classification_templates.txt"),
        "--cache", str(tmp_path / "cache-manifest"), "--device", "cpu", "--quiet",
    )  # fmt: skip
    keys = json.loads((out / "wds" / "metrics.json").read_text())["metrics"]
    assert "zeroshot/wds_tiny/top1" in keys  # named as given, not by its absolute path
    assert load_probe("wds_tiny/:test", progress=False).name == "wds_tiny:test"  # one split
    got = _metric_values(out / "wds" / "metrics.json")
    want = _metric_values(out / "manifest" / "metrics.json")
    assert set(want) == {("zeroshot", m) for m in ("top1", "top5", "mean_per_class_recall")}
    assert got == want


@pytest.mark.distributed
def test_train_under_torchrun_on_shards(runs, specs, tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2 -m alignkit train`` on the shards: the ranks split the
    feature extraction (no rank extracts every row), rank 0 alone prints the result, and the
    weights are the one-process run's (to float32 rounding: the gradients are summed across
    ranks in another order)."""
    from _launch import launch

    out = tmp_path / "ddp"
    argv = ["-m", "alignkit", "train", *RECIPE, "--probe", specs["shards"][0], "--out", str(out)]
    argv += ["--cache", str(tmp_path / "cache"), "--device", "cpu", "--quiet"]
    done = launch(argv, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "every rank extracts every row" not in done.stderr
    assert done.stdout.count("next: alignkit evaluate") == 1, done.stdout
    assert "| None |" not in done.stdout  # no --val: no best step, shown as "-"
    got, _ = _projector(out / "projector.safetensors")
    want, _ = _projector(runs["shards"] / "train" / "projector.safetensors")
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-4)
    assert json.loads((out / "run.json").read_text())["status"] == "done"
