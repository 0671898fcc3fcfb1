"""extract_features under torchrun: 2 CPU ranks (gloo) give exactly the single-process features."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from _launch import launch
from test_features_support import make_probe

from alignkit.features import FeatureCache
from alignkit.features._distributed import row_blocks

SUPPORT = Path(__file__).with_name("test_features_support.py")


def test_row_blocks_are_whole_batches_covering_every_row():
    assert row_blocks(30, 4, 2) == [(0, 16), (16, 30)]  # 8 batches: 4 + 4 (the last short)
    assert row_blocks(9, 4, 3) == [(0, 4), (4, 8), (8, 9)]
    assert row_blocks(3, 4, 2) == [(0, 0), (0, 3)]  # more ranks than batches: one rank idles
    for n, bs, world in [(1, 1, 1), (100, 7, 3), (64, 64, 4), (65, 8, 5)]:
        blocks = row_blocks(n, bs, world)
        assert blocks[0][0] == 0 and blocks[-1][1] == n
        assert all(a == b_prev for (_, b_prev), (a, _) in zip(blocks, blocks[1:], strict=False))
        assert all(a % bs == 0 for a, _ in blocks)


def _run(args: dict, *, torchrun: bool) -> subprocess.CompletedProcess:
    return launch([str(SUPPORT), json.dumps(args)], torchrun=torchrun)


@pytest.mark.distributed
def test_torchrun_two_ranks_equal_a_single_process(tmp_path):
    n, bs = 30, 4  # 8 batches, the last one short: blocks of 16 and 14 rows
    base = {
        "probe_dir": str(tmp_path / "img"),
        "n": n,
        "batch_size": bs,
        "modalities": ["image", "text"],
        "caption_policy": "mean",
    }
    make_probe(base["probe_dir"], n)
    root = tmp_path / "cache"
    multi = _run(
        {
            **base,
            "root": str(root),
            "shard_batches": 2,
            "repeat": True,
            "out": str(tmp_path / "multi"),
        },
        torchrun=True,
    )
    assert multi.returncode == 0, multi.stderr[-3000:]
    single = _run({**base, "root": "", "out": str(tmp_path / "single")}, torchrun=False)
    assert single.returncode == 0, single.stderr[-3000:]

    store = FeatureCache(root)
    assert sorted(e.encoder for e in store.list()) == ["tiny-image:conv", "tiny-text:hashbag"]
    assert not list(root.rglob("rows-*"))  # rank 0 committed; shards consolidated
    for prefix in ("", "text-"):
        reference = torch.load(tmp_path / "single" / f"{prefix}rank0.pt")
        ranks = [torch.load(tmp_path / "multi" / f"{prefix}rank{r}.pt") for r in range(2)]
        for got in ranks:  # every rank returns the whole, identical set
            assert got["ids"] == reference["ids"]
            assert torch.equal(got["features"], reference["features"])
            assert got["repeat_calls"] == 0 and got["repeat_equal"]  # second run: a cache hit
        # the work was split, in the batches a single process uses
        assert ranks[0]["calls"] == 4 and ranks[1]["calls"] == 4
        assert sorted(ranks[0]["batch_sizes"] + ranks[1]["batch_sizes"]) == sorted(
            reference["batch_sizes"]
        )
        [entry] = store.list("tiny-text:*" if prefix else "tiny-image:*")
        assert torch.equal(store.get(entry.key).features, reference["features"])
