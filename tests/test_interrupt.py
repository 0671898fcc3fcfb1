"""Ctrl-C during `alignkit extract` (issue 10, item 12): shards are saved by time as well as by
rows, the user is told what was kept and how to resume, and the resumed run gives bitwise the
features of an uninterrupted one. Real subprocesses, interrupted with SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alignkit.features import FeatureCache, FeatureSet, extract_features
from alignkit.probes import load_probe

REPO = Path(__file__).resolve().parents[1]
ENCODER = "random-init:torchvision:mobilenet_v2"  # real model work, nothing to download
ARGS = ["--probe", "synthetic", "--n", "48", "--batch-size", "2", "--workers", "0", "--quiet"]


def _cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "alignkit", "extract", "-e", ENCODER, *ARGS, *argv]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "ALIGNKIT_THREADS": "1"}


def _shards(root: Path) -> list[Path]:
    return sorted(root.glob("features/*/*.partial/*.safetensors"))


@pytest.mark.slow
def test_sigint_keeps_time_shards_says_how_to_resume_and_resumes_bitwise(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    # shard every 8 batches = 16 rows by count; by time after 0.2 s, i.e. at almost every batch
    proc = subprocess.Popen(
        _cli("--cache", str(root), "--checkpoint-every", "0.2"),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a runner started in the background ignores SIGINT and its children inherit that;
        # give the command the disposition it has in a terminal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    while not _shards(root) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, (
        "the extraction ended before a shard was saved: " + proc.stderr.read()
    )
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    shards = _shards(root)
    kept = sum(int(p.stem.split("-")[2]) - int(p.stem.split("-")[1]) for p in shards)
    assert 0 < kept < 48
    # the first shard by row count would end at row 16: a shard ending before it is a time shard
    assert any(int(p.stem.split("-")[2]) % 16 for p in shards)
    assert f"{kept} of 48 rows are kept in" in err, err
    assert "run the same command again to resume" in err
    assert "0 of 1 encoders finished" in err

    # resume: the rows already kept are not computed again
    done = subprocess.run(
        _cli("--cache", str(root), "--out", str(tmp_path / "resumed.safetensors")),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    resumed = FeatureSet.load(tmp_path / "resumed.safetensors")

    # an uninterrupted run in this process, with no cache, on one thread like the subprocesses:
    # a convolution's bits depend on its thread count
    monkeypatch.setenv("ALIGNKIT_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        probe = load_probe("synthetic", n=48, progress=False)
        whole = extract_features(
            ENCODER, probe, batch_size=2, num_workers=0, cache=False, progress=False
        )
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(resumed.features, whole.features)
    assert not _shards(root)  # the entry is committed, its shards are gone


def test_time_shards_end_on_batch_boundaries_and_resume_bitwise(tmp_path, monkeypatch):
    """In process: shard_seconds=0 saves after every batch; a resume from any of them gives the
    features of one uninterrupted run."""
    probe = load_probe("synthetic", n=10, progress=False)
    store = FeatureCache(tmp_path / "f", shard_batches=100, shard_seconds=0)
    whole = extract_features("random:text-384", probe, batch_size=3, cache=False, progress=False)
    saved: list[tuple[int, int]] = []
    real = FeatureCache.put_shard

    def put_shard(self, key, start, stop, features, *rest):
        saved.append((start, stop))
        return real(self, key, start, stop, features, *rest)

    monkeypatch.setattr(FeatureCache, "put_shard", put_shard)
    fs = extract_features("random:text-384", probe, batch_size=3, cache=store, progress=False)
    assert saved == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert torch.equal(fs.features, whole.features)
