"""The shared file helpers (alignkit._files) and run folders (alignkit.runs)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from alignkit._files import atomic_path, atomic_write_text, file_hash, file_lock
from alignkit.errors import AlignkitError
from alignkit.runs import (
    OutputExistsError,
    RunFolder,
    default_run_dir,
    jsonable,
    read_run_json,
    write_run_json,
)


def test_file_hash_matches_hashlib_on_a_multi_chunk_file(tmp_path: Path) -> None:
    data = os.urandom((1 << 22) + 12345)  # more than one 4 MiB chunk
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_hash(path) == hashlib.sha256(data).hexdigest()
    assert file_hash(path, "sha1") == hashlib.sha1(data).hexdigest()


def test_atomic_path_keeps_the_old_file_when_the_write_fails(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]  # no temporary left
    with atomic_path(path, durable=True) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new"


def test_file_lock_serialises_two_threads(tmp_path: Path) -> None:
    lock = tmp_path / "locks" / "x.lock"
    inside: list[int] = []
    overlap = []

    def work(i: int) -> None:
        with file_lock(lock):
            inside.append(i)
            overlap.append(len(inside))
            time.sleep(0.05)
            inside.remove(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlap == [1, 1, 1]


def test_run_folder_swaps_in_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "a"
    with RunFolder(out) as tmp:
        assert tmp.parent == out.parent and tmp != out and not out.exists()
        (tmp / "x.csv").write_text("1")
        write_run_json(tmp, {"command": ["alignkit", "x"], "score": np.float32(0.5)})
    meta = read_run_json(out)
    assert meta["command"] == ["alignkit", "x"] and meta["score"] == 0.5
    assert meta["versions"]["alignkit"] and meta["created"]
    # a failing second run leaves the first untouched and no temporary folder behind
    with pytest.raises(ValueError), RunFolder(out, overwrite=True) as tmp:
        (tmp / "x.csv").write_text("2")
        raise ValueError("boom")
    assert (out / "x.csv").read_text() == "1"
    assert sorted(p.name for p in out.parent.iterdir()) == ["a"]
    with RunFolder(out, overwrite=True) as tmp:
        (tmp / "y.csv").write_text("3")
        write_run_json(tmp, {})
    assert sorted(p.name for p in out.iterdir()) == ["run.json", "y.csv"]


def test_run_folder_refuses_before_the_work(tmp_path: Path) -> None:
    out = tmp_path / "a"
    with RunFolder(out) as tmp:
        write_run_json(tmp, {})
    with pytest.raises(OutputExistsError, match="pass overwrite=True"):
        RunFolder(out)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("precious")
    with pytest.raises(AlignkitError, match="not an alignkit run folder"):
        RunFolder(notes, overwrite=True)
    with pytest.raises(AlignkitError, match="is a file"):
        RunFolder(notes / "thesis.tex")
    RunFolder(tmp_path / "empty")  # new folders are fine, and nothing is created yet
    assert not (tmp_path / "empty").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_run_folder_refuses_an_unwritable_parent(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(AlignkitError, match="not writable"):
            RunFolder(locked / "deep" / "run")
    finally:
        locked.chmod(0o700)


def test_jsonable_and_default_run_dir() -> None:
    value = {"a": (1, np.int64(2)), "b": float("nan"), "c": np.float64(1.5), "d": Path("x")}
    assert json.loads(json.dumps(jsonable(value))) == {"a": [1, 2], "b": None, "c": 1.5, "d": "x"}
    when = time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1))
    assert default_run_dir("flickr8k:test", when) == Path("runs/flickr8k-test-20260102-030405")


def test_package_version_is_written_once_in_each_place_and_agrees():
    """run.json and feature provenance record ``alignkit.__version__``; pyproject.toml is what
    pip installs. The two are written by hand, so a release must bump both."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the backport alignkit depends on there
        import tomli as tomllib

    import alignkit

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["version"]
    assert alignkit.__version__ == declared


def test_metrics_json_merges_and_reads_the_older_predictivity_pair_files(tmp_path: Path) -> None:
    from alignkit.evaluation.predictivity import PredictivityConfig
    from alignkit.evaluation.predictivity.pair_run import EVAL_FIELDS, pair_folder
    from alignkit.evaluation.predictivity.stages import finished_pairs
    from alignkit.runs.metrics import read_metrics, write_metrics

    cfg = PredictivityConfig(vision=("a",), text=("b", "c", "d"))
    key = cfg.stage_key(*EVAL_FIELDS)
    folder = pair_folder(tmp_path, "a", "b")
    folder.mkdir(parents=True)
    old = {"retrieval/p/image_to_text_R@1": {"value": 0.25, "n": 8, "chance": 0.125}}
    legacy = {"stage_key": key, "vision": "a", "text": "b", "train_steps": 3, "metrics": old}
    (folder / "metrics.json").write_text(json.dumps(legacy))
    assert finished_pairs(tmp_path, cfg) == [("a", "b")]  # an earlier version's run resumes
    new = {"zeroshot/q/top1": {"value": 0.5, "n": 4, "chance": 0.25}}
    write_metrics(folder, new, about={"command": "evaluate"})
    merged = read_metrics(folder)
    assert merged["zeroshot/q/top1"] == new["zeroshot/q/top1"]
    assert merged["retrieval/p/image_to_text_R@1"]["value"] == 0.25
    assert finished_pairs(tmp_path, cfg) == [("a", "b")]  # still finished after the merge
    again = {"zeroshot/q/top1": {"value": 0.75, "n": 4, "chance": 0.25}}
    write_metrics(folder, again)
    assert read_metrics(folder)["zeroshot/q/top1"]["value"] == 0.75
    assert read_metrics(folder)["retrieval/p/image_to_text_R@1"]["value"] == 0.25
    data = json.loads((folder / "metrics.json").read_text())
    assert data["evaluations"][0]["stage_key"] == key and len(data["evaluations"]) == 3
    (folder / "metrics.json").write_text("{not json")
    with pytest.raises(AlignkitError, match="cannot merge into"):
        write_metrics(folder, new)
    assert (folder / "metrics.json").read_text() == "{not json"  # a damaged file is not replaced
