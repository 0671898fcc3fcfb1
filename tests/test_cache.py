"""FeatureCache: hits without model work, the key, atomic and concurrent writes, damaged entries,
resume after a killed process, list/clear (tiny encoders, real subprocesses)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_features_support import HashTextEncoder, TinyImageEncoder, make_probe

from alignkit.errors import AlignkitError
from alignkit.features import FeatureCache, FeatureSet, _verified, extract_features, feature_key
from alignkit.features import keys as keys_module
from alignkit.probes.base import ProbeRow, ProbeSet

SUPPORT = Path(__file__).with_name("test_features_support.py")


@pytest.fixture
def probe(tmp_path):
    return make_probe(tmp_path / "img", 10)


@pytest.fixture
def store(tmp_path):
    return FeatureCache(tmp_path / "cache", shard_batches=1)


def _extract(enc, probe, store, **kw):
    return extract_features(
        enc, probe, **{"batch_size": 4, "num_workers": 0, "cache": store, "progress": False, **kw}
    )


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _run_support(args: dict, env_extra: dict | None = None, **popen) -> subprocess.Popen:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, str(SUPPORT), json.dumps(args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


# -- hits ----------------------------------------------------------------------------------------
def test_second_run_is_a_cache_hit_with_no_model_work(probe, store):
    first = _extract(TinyImageEncoder(), probe, store)
    again = TinyImageEncoder(fail_on_call=1)  # any forward call raises
    second = _extract(again, probe, store)
    assert again.calls == 0
    assert torch.equal(first.features, second.features) and second.ids == probe.ids
    assert second.provenance == first.provenance
    # and a different batch size / worker count is still the same entry
    third = _extract(TinyImageEncoder(fail_on_call=1), probe, store, batch_size=7, num_workers=2)
    assert torch.equal(first.features, third.features)
    assert len(store.list()) == 1
    assert not list(store.root.rglob("*.partial"))  # shards are consolidated and removed


def test_default_cache_lives_under_alignkit_cache_dir(probe, tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE_DIR", str(tmp_path / "home-cache"))
    extract_features(HashTextEncoder(), probe, progress=False)
    assert FeatureCache().root == tmp_path / "home-cache" / "features"
    [entry] = FeatureCache().list()
    assert entry.encoder == "tiny-text:hashbag" and entry.n == 10 and entry.dim == 12
    assert entry.probe == "tiny-probe" and entry.size > 10 * 12 * 4 and entry.created


# -- the key -------------------------------------------------------------------------------------
def test_key_changes_with_every_number_changing_input(probe, tmp_path, monkeypatch):
    text = HashTextEncoder()
    base = feature_key(text, probe, "first", 0)
    assert len(base) == 32 and base == feature_key(HashTextEncoder(), probe, "first", 0)
    other_probe = ProbeSet(probe.name, probe.rows[:-1])
    recaptioned = ProbeSet(
        probe.name, (ProbeRow(probe.rows[0].id, probe.rows[0].image, ("x",)), *probe.rows[1:])
    )
    changed = {
        "spec": feature_key(HashTextEncoder(name="tiny-text:other"), probe),
        "weights": feature_key(HashTextEncoder(seed=1), probe),
        "probe rows": feature_key(text, other_probe),
        "probe captions": feature_key(text, recaptioned),
        "caption policy": feature_key(text, probe, "mean"),
        "random": feature_key(text, probe, "random", 0),
        "random seed": feature_key(text, probe, "random", 1),
    }
    monkeypatch.setattr(text, "pooling", "cls")
    changed["config"] = feature_key(text, probe)
    monkeypatch.undo()
    monkeypatch.setattr(keys_module, "FORMAT_VERSION", keys_module.FORMAT_VERSION + 1)
    changed["format version"] = feature_key(text, probe)
    monkeypatch.undo()
    assert len(set(changed.values()) | {base}) == len(changed) + 1, changed
    # the seed only matters for the random policy; captions do not matter to image encoders
    assert feature_key(text, probe, "first", 5) == base
    image = TinyImageEncoder()
    assert feature_key(image, probe, "first") == feature_key(image, probe, "mean", 3)
    assert feature_key(image, probe) != feature_key(TinyImageEncoder(layer="all"), probe)


def test_key_ignores_batch_size_workers_and_progress(probe, store):
    a = _extract(TinyImageEncoder(), probe, store, batch_size=3, num_workers=0)
    b = _extract(TinyImageEncoder(), probe, store, batch_size=5, num_workers=2, progress=True)
    assert a.provenance["cache_key"] == b.provenance["cache_key"]
    assert len(store.list()) == 1


def test_unserialisable_config_is_a_clear_error(probe, monkeypatch):
    enc = HashTextEncoder()
    monkeypatch.setattr(enc, "config", lambda: {"tokenizer": object()})
    with pytest.raises(AlignkitError, match="must be JSON-serialisable to form a cache key"):
        feature_key(enc, probe)


# -- atomic writes -------------------------------------------------------------------------------
def test_failed_write_leaves_no_entry_and_no_temporary_file(probe, store, monkeypatch):
    fs = _extract(HashTextEncoder(), probe, False)
    key = fs.provenance["cache_key"]

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.put(key, fs)
    monkeypatch.undo()
    assert store.get(key) is None and key not in store
    assert [f for f in _files(store.root) if not f.endswith(".lock")] == []
    store.put(key, fs)
    assert torch.equal(store.get(key).features, fs.features)


def test_two_processes_extracting_the_same_key_leave_one_valid_entry(tmp_path):
    root, gate, calls = tmp_path / "cache", tmp_path / "go", tmp_path / "calls.txt"
    args = {
        "probe_dir": str(tmp_path / "img"),
        "n": 12,
        "root": str(root),
        "shard_batches": 1,
        "gate": str(gate),
    }
    make_probe(args["probe_dir"], 12)  # write the images once, before both start
    env = {"ALIGNKIT_TEST_SLEEP": "0.1", "ALIGNKIT_TEST_CALLS": str(calls)}
    procs = [_run_support({**args, "out": str(tmp_path / f"out{i}")}, env) for i in range(2)]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("go.*.ready"))) < 2:  # both imported and waiting: release them
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline
        time.sleep(0.02)
    gate.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    # both really extracted, at the same time
    spans: dict[str, list[float]] = {}
    for line in calls.read_text().splitlines():
        pid, _, stamp = line.split()
        spans.setdefault(pid, []).append(float(stamp))
    (a0, a1), (b0, b1) = [(min(v), max(v)) for v in spans.values()]
    assert len(spans) == 2 and a0 < b1 and b0 < a1
    outs = [torch.load(tmp_path / f"out{i}" / "rank0.pt") for i in range(2)]
    assert torch.equal(outs[0]["features"], outs[1]["features"])
    [entry] = FeatureCache(root).list()
    files = [f for f in _files(root) if not f.endswith(".lock")]
    index = [f for f in files if f.startswith("_images/")]  # the image index names the entry
    assert [Path(f).name for f in index] == [f"{entry.key}.json"]
    assert [f for f in files if f not in index] == [
        f"{entry.key[:2]}/{entry.key}.json",
        f"{entry.key[:2]}/{entry.key}.safetensors",
    ]
    got = FeatureCache(root).get(entry.key)
    assert torch.equal(got.features, outs[0]["features"])


# -- damaged entries -----------------------------------------------------------------------------
def test_truncated_entry_is_detected_and_rebuilt(probe, store, caplog):
    fs = _extract(TinyImageEncoder(), probe, store)
    want = fs.features.clone()  # fs maps the file that is cut in place next
    path = store.path(fs.provenance["cache_key"])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    enc = TinyImageEncoder()
    with caplog.at_level(logging.WARNING, logger="alignkit.features.cache"):
        rebuilt = _extract(enc, probe, store)
    assert enc.calls == 3  # the model ran again
    assert "unusable, rebuilding" in caplog.text and "truncated" in caplog.text
    assert torch.equal(rebuilt.features, want)
    assert store.get(fs.provenance["cache_key"]) is not None


def test_flipped_byte_is_detected(probe, store, caplog):
    fs = _extract(TinyImageEncoder(), probe, store)
    path = store.path(fs.provenance["cache_key"])
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # inside the float data: still loads, but the sha256 differs
    path.write_bytes(bytes(data))
    assert store.get(fs.provenance["cache_key"]) is None
    assert "sha256 differs" in caplog.text


def _counting_hashes(monkeypatch) -> list[Path]:
    """The files ``_verified`` hashes from now on, in order (its memory of this process wiped)."""
    hashed: list[Path] = []
    real = _verified.file_hash
    monkeypatch.setattr(
        _verified, "file_hash", lambda path, algo: hashed.append(Path(path)) or real(path, algo)
    )
    _verified.forget()
    return hashed


def test_an_entry_is_hashed_once_per_process_until_it_changes(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(_verified, "SETTLE_NS", 50_000_000)  # 50 ms, not 2 s, for the test
    hashed = _counting_hashes(monkeypatch)
    store, key = FeatureCache(tmp_path), "0a1b" * 8
    store.put(key, FeatureSet(torch.randn(6, 4), tuple("abcdef"), {"encoder": "x"}))
    path = store.path(key)
    time.sleep(0.2)  # older than SETTLE_NS: its stamp can be remembered
    assert store.get(key) is not None and key in store and store.get(key) is not None
    assert hashed == [path]  # three opens, one hash
    # a byte flipped in place, size and mtime put back: os.utime moved ctime, so it is caught
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert store.get(key) is None and "sha256 differs" in caplog.text
    assert hashed == [path, path]
    # put back as it was, through another file renamed over it (a new inode): hashed, sound
    data[-3] ^= 0xFF
    path.with_suffix(".tmp").write_bytes(bytes(data))
    os.replace(path.with_suffix(".tmp"), path)
    assert store.get(key) is not None and len(hashed) == 3


def test_an_entry_changed_moments_before_its_check_is_hashed_again(tmp_path, monkeypatch):
    """File times come from a coarse clock: a write just after a check could keep the stamp
    the check saw, so a fresh file's stamp is not remembered (git's racily clean files)."""
    hashed = _counting_hashes(monkeypatch)  # SETTLE_NS as shipped: 2 s
    store, key = FeatureCache(tmp_path), "0c1d" * 8
    store.put(key, FeatureSet(torch.randn(3, 2), ("a", "b", "c"), {"encoder": "x"}))
    assert store.get(key) is not None and store.get(key) is not None
    assert len(hashed) == 2


_CHILD_OPEN = r"""
import sys
from pathlib import Path
from alignkit.features import FeatureCache, _verified
hashed = []
real = _verified.file_hash
_verified.file_hash = lambda path, algo: hashed.append(str(path)) or real(path, algo)
fs = FeatureCache(Path(sys.argv[1])).get(sys.argv[2])
print(fs is not None, len(hashed))
"""


def _open_in_a_new_process(root: Path, key: str) -> tuple[bool, int]:
    """Open ``key`` in a fresh Python process: (found, how many files it hashed)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD_OPEN, str(root), key],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    found, count = out.stdout.split()
    return found == "True", int(count)


def test_a_verified_entry_is_not_hashed_again_by_later_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(_verified, "SETTLE_NS", 50_000_000)
    store, key = FeatureCache(tmp_path), "0e1f" * 8
    store.put(key, FeatureSet(torch.randn(6, 4), tuple("abcdef"), {"encoder": "x"}))
    path = store.path(key)
    time.sleep(2.1)  # settled for the child too (it keeps the shipped 2 s)
    assert _open_in_a_new_process(tmp_path, key) == (True, 1)  # hashed, and noted beside it
    assert path.with_suffix(".verified").is_file()
    assert _open_in_a_new_process(tmp_path, key) == (True, 0)  # the note spares the hash
    # a byte flipped in place with size and mtime put back: ctime moved, so the note is stale
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _open_in_a_new_process(tmp_path, key) == (False, 1)
    assert not path.with_suffix(".verified").exists()  # a refused file keeps no note


def test_a_stamp_file_for_another_file_or_digest_is_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setattr(_verified, "SETTLE_NS", 50_000_000)
    hashed = _counting_hashes(monkeypatch)
    store, key = FeatureCache(tmp_path), "1a2b" * 8
    store.put(key, FeatureSet(torch.randn(4, 3), tuple("abcd"), {"encoder": "x"}))
    note = store.path(key).with_suffix(".verified")
    time.sleep(0.2)
    assert store.get(key) is not None and len(hashed) == 1 and note.is_file()
    good = json.loads(note.read_text())
    for field, value in (("sha256", "0" * 64), ("inode", good["inode"] + 1)):
        note.write_text(json.dumps({**good, field: value}))
        _verified.forget()  # as a new process: only the note is left
        assert store.get(key) is not None
    note.write_text("{not json")
    _verified.forget()
    assert store.get(key) is not None
    assert len(hashed) == 4  # each untrusted note meant a full hash
    assert store.clear() == 1 and not note.exists()


def test_sidecar_from_another_format_version_is_rebuilt(probe, store, caplog):
    fs = _extract(HashTextEncoder(), probe, store)
    key = fs.provenance["cache_key"]
    sidecar = store.path(key).with_suffix(".json")
    side = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**side, "format": 0}))
    enc = HashTextEncoder()
    with caplog.at_level(logging.WARNING):
        _extract(enc, probe, store)
    assert enc.calls == 3 and "format version 0, expected 1" in caplog.text
    assert json.loads(sidecar.read_text())["format"] == keys_module.FORMAT_VERSION
    sidecar.write_text("{not json")
    assert store.get(key) is None and "unreadable sidecar" in caplog.text


def test_entry_for_other_row_ids_is_not_used(probe, store):
    fs = _extract(HashTextEncoder(), probe, store)
    key = fs.provenance["cache_key"]
    assert store.get(key, ids=probe.ids) is not None
    assert store.get(key, ids=tuple(reversed(probe.ids))) is None


def test_damaged_shard_is_dropped_and_recomputed(probe, store, caplog):
    enc = TinyImageEncoder(fail_on_call=3)
    with pytest.raises(RuntimeError, match="fails on purpose"):
        _extract(enc, probe, store)
    key = feature_key(enc, probe)
    shards = sorted(store.path(key).with_suffix(".partial").glob("rows-*"))
    assert [s.name for s in shards] == [
        "rows-000000000-000000004.safetensors",
        "rows-000000004-000000008.safetensors",
    ]
    shards[1].write_bytes(b"garbage")
    resumed = TinyImageEncoder()
    with caplog.at_level(logging.WARNING):
        fs = _extract(resumed, probe, store)
    assert "damaged shard" in caplog.text
    assert resumed.batch_sizes == [4, 2]  # rows 4..9 again, in the batches a full run uses
    full = _extract(TinyImageEncoder(), probe, False)
    assert torch.equal(fs.features, full.features)


def test_failure_mid_extraction_keeps_earlier_entries(probe, store):
    good = _extract(HashTextEncoder(), probe, store)
    with pytest.raises(RuntimeError, match="fails on purpose"):
        _extract(TinyImageEncoder(fail_on_call=2), probe, store)
    assert torch.equal(store.get(good.provenance["cache_key"]).features, good.features)
    assert [e.encoder for e in store.list()] == ["tiny-text:hashbag"]


# -- resume after a killed process ---------------------------------------------------------------
def test_resume_after_sigkill_is_bitwise_identical(tmp_path):
    n, bs = 24, 2  # 12 batches, a shard after each
    args = {"probe_dir": str(tmp_path / "img"), "n": n, "batch_size": bs, "shard_batches": 1}
    make_probe(args["probe_dir"], n)
    root = tmp_path / "cache"
    slow = _run_support(
        {**args, "root": str(root), "out": str(tmp_path / "killed")}, {"ALIGNKIT_TEST_SLEEP": "0.4"}
    )
    whole = _run_support({**args, "root": "", "out": str(tmp_path / "whole")})
    deadline = time.monotonic() + 60
    shards: list[Path] = []
    while len(shards) < 3:  # wait until some (not all) shards are on disk, then kill hard
        assert slow.poll() is None, slow.communicate()[1]
        assert time.monotonic() < deadline, "no shards appeared"
        time.sleep(0.05)
        shards = list(root.rglob("rows-*.safetensors"))
    slow.send_signal(signal.SIGKILL)
    slow.wait(timeout=30)
    assert slow.returncode == -signal.SIGKILL
    assert FeatureCache(root).list() == []  # nothing committed
    done = len(list(root.rglob("rows-*.safetensors")))
    assert 3 <= done < n // bs

    calls = tmp_path / "calls.txt"
    resumed = _run_support(
        {**args, "root": str(root), "out": str(tmp_path / "resumed")},
        {"ALIGNKIT_TEST_CALLS": str(calls)},
    )
    for p in (resumed, whole):
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    a = torch.load(tmp_path / "resumed" / "rank0.pt")
    b = torch.load(tmp_path / "whole" / "rank0.pt")
    assert a["calls"] == n // bs - done  # only the missing batches ran
    assert torch.equal(a["features"], b["features"]) and a["ids"] == b["ids"]
    [entry] = FeatureCache(root).list()
    assert entry.n == n and not list(root.rglob("rows-*"))


# -- list and clear ------------------------------------------------------------------------------
def test_list_and_clear_with_a_filter(probe, store):
    img = _extract(TinyImageEncoder(), probe, store)
    txt = _extract(HashTextEncoder(), probe, store)
    entries = {e.encoder: e for e in store.list()}
    assert set(entries) == {"tiny-image:conv", "tiny-text:hashbag"}
    assert entries["tiny-image:conv"].shape == (10, 16) and entries["tiny-text:hashbag"].dim == 12
    assert [e.key for e in store.list("tiny-text:*")] == [txt.provenance["cache_key"]]
    assert [e.key for e in store.list(img.provenance["cache_key"][:6])] == [
        img.provenance["cache_key"]
    ]
    assert store.list("nothing*") == []
    assert store.clear("tiny-image:*") == 1
    assert [e.encoder for e in store.list()] == ["tiny-text:hashbag"]
    assert store.get(img.provenance["cache_key"]) is None
    assert store.clear() == 1 and _files(store.root) == []


def test_put_get_roundtrip_keeps_ids_and_provenance(tmp_path):
    store = FeatureCache(tmp_path)
    fs = FeatureSet(
        torch.randn(2, 3, 4), ("a", "b", "c"), {"encoder": "x", "probe": "p", "k": [1, 2]}
    )
    store.put("00ff" * 8, fs)
    got = store.get("00ff" * 8)
    assert torch.equal(got.features, fs.features) and got.ids == fs.ids
    assert got.provenance == fs.provenance
    with pytest.raises(AlignkitError, match="a cache key is a lower-case hex string: got '../x'"):
        store.get("../x")
    with pytest.raises(AlignkitError, match="shard_batches must be a positive integer: got 0"):
        FeatureCache(tmp_path, shard_batches=0)


# -- the command line ----------------------------------------------------------------------------
def test_cli_cache_list_and_clear(probe, tmp_path, capsys):
    from alignkit.cli import main

    store = FeatureCache(tmp_path / "cli-cache")
    img = _extract(TinyImageEncoder(layer="all"), probe, store)
    _extract(HashTextEncoder(), probe, store)
    with pytest.raises(SystemExit) as info:
        main(["cache", "list", "--cache-dir", str(store.root)])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "tiny-image:conv" in out and "tiny-text:hashbag" in out and "2 entries" in out
    assert "16 x2L" in out and img.provenance["cache_key"][:12] in out
    with pytest.raises(SystemExit):
        main(["cache", "clear", "tiny-text:*", "--yes", "--cache-dir", str(store.root)])
    assert "removed 1 entries" in capsys.readouterr().out
    assert [e.encoder for e in store.list()] == ["tiny-image:conv"]
    with pytest.raises(SystemExit):
        main(["cache", "list", "nothing*", "--cache-dir", str(store.root)])
    assert "no cache entries match 'nothing*'" in capsys.readouterr().out


def test_cli_help_explains_the_commands(capsys):
    from alignkit.cli import main

    for argv, expected in [
        (["extract", "--help"], "resumes from its last saved shard"),
        (["cache", "--help"], "Inspect and prune the feature cache"),
        (["cache", "clear", "--help"], "glob on encoder spec"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0
        assert expected in " ".join(capsys.readouterr().out.split())


def test_featureset_save_load_roundtrip(tmp_path):
    fs = FeatureSet(torch.randn(4, 3), ("a", "b", "c", "d"), {"encoder": "x", "probe": "p"})
    path = fs.save(tmp_path / "f.safetensors")
    got = FeatureSet.load(path)
    assert (
        torch.equal(got.features, fs.features)
        and got.ids == fs.ids
        and got.provenance == fs.provenance
    )
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    with pytest.raises(AlignkitError, match="expected a FeatureSet .safetensors file"):
        FeatureSet.load(tmp_path / "bad.safetensors")


def test_a_shard_whose_folder_vanished_is_skipped_not_fatal(tmp_path, monkeypatch):
    # Two processes extracting one key: the first to finish commits and removes the shard folder
    # while the other may be writing a shard into it. That write must fail as an OSError, which
    # extraction treats as "no resume checkpoint", instead of killing the run.
    from safetensors.torch import save_file as real_save

    from alignkit.features import _io

    def vanish_then_save(tensors, filename, metadata=None):
        shutil.rmtree(Path(filename).parent)  # the other process's drop_shards, mid-write
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr("safetensors.torch.save_file", vanish_then_save)
    with pytest.raises(OSError, match="could not write"):
        _io.save_tensor(tmp_path / "k.partial" / "rows.safetensors", torch.ones(2, 3), {})
