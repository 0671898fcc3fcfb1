"""extract_features under torchrun: 2 CPU ranks (gloo) give exactly the single-process features;
with a cache no features travel through the process group (rank 0 commits the entry from every
rank's shards on disk and every rank maps it)."""

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
            "no_gather": True,  # gather_rows raises: the features must not travel
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
        for got in ranks:  # each rank holds a map of the entry file, not a copy in its memory
            assert got["mapped_file"] == str(store.path(entry.key))
            assert got["provenance"]["created"] == ranks[0]["provenance"]["created"]
        assert reference["mapped_file"] is None  # (no cache: the same check sees memory)


@pytest.mark.distributed
def test_torchrun_rows_skipped_on_rank_1_are_listed_on_rank_0(tmp_path):
    n, bs = 16, 4  # blocks [0, 8) and [8, 16): row 11 is rank 1's
    base = {"probe_dir": str(tmp_path / "img"), "n": n, "batch_size": bs, "skip_bad": True}
    probe = make_probe(base["probe_dir"], n)
    bad = probe.rows[11]
    Path(bad.image).write_bytes(b"not an image")
    root = tmp_path / "cache"
    multi = _run({**base, "root": str(root), "no_gather": True, "out": str(tmp_path / "multi")},
                 torchrun=True)  # fmt: skip
    assert multi.returncode == 0, multi.stderr[-3000:]
    ranks = [torch.load(tmp_path / "multi" / f"rank{r}.pt") for r in range(2)]
    for got in ranks:
        assert bad.id not in got["ids"] and len(got["ids"]) == n - 1
        [listed] = got["provenance"]["skipped_rows"]
        assert listed["id"] == bad.id
        assert listed["where"] == str(bad.image)  # the reason rank 1 found, not "earlier run"
        assert "earlier" not in listed["reason"]
    [entry] = FeatureCache(root).list()
    stored = FeatureCache(root).get(entry.key)
    assert [d["id"] for d in stored.provenance["skipped_rows"]] == [bad.id]
    assert torch.isnan(stored.features[11]).all() and not torch.isnan(stored.features[:11]).any()


@pytest.mark.distributed
def test_torchrun_resumes_the_shards_of_a_single_process_run(tmp_path):
    n, bs = 30, 4  # 8 batches; 2 ranks: rows [0, 16) and [16, 30)
    base = {"probe_dir": str(tmp_path / "img"), "n": n, "batch_size": bs}
    make_probe(base["probe_dir"], n)
    root = tmp_path / "cache"
    # one process, shards of 3 batches (12 rows), stopped in its 7th forward: rows [0, 24) kept,
    # and the shard [12, 24) straddles the ranks' boundary at row 16
    first = {**base, "root": str(root), "shard_batches": 3, "fail_on_call": 7}
    stopped = _run({**first, "out": str(tmp_path / "stopped")}, torchrun=False)
    assert stopped.returncode != 0 and "fails on purpose" in stopped.stderr
    kept = sorted(p.name for p in root.rglob("rows-*"))
    assert kept == ["rows-000000000-000000012.safetensors", "rows-000000012-000000024.safetensors"]
    resumed = _run(
        {**first, "fail_on_call": None, "no_gather": True, "out": str(tmp_path / "multi")},
        torchrun=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    single = _run({**base, "root": "", "out": str(tmp_path / "single")}, torchrun=False)
    assert single.returncode == 0, single.stderr[-3000:]
    reference = torch.load(tmp_path / "single" / "rank0.pt")
    ranks = [torch.load(tmp_path / "multi" / f"rank{r}.pt") for r in range(2)]
    # rank 0 reads [0, 12) and computes the batch [12, 16); rank 1 cannot use [12, 24) (it is
    # not inside its rows) and computes its 4 batches
    assert [got["calls"] for got in ranks] == [1, 4]
    for got in ranks:
        assert got["ids"] == reference["ids"]
        assert torch.equal(got["features"], reference["features"])
    assert not list(root.rglob("rows-*"))


@pytest.mark.distributed
def test_torchrun_gathers_when_a_rank_could_not_write_its_shards(tmp_path):
    """Rank 1 cannot write its shards (a full disk, or a cache folder rank 0 does not see):
    rank 0 finds rows missing on disk, and the features are gathered instead, still exact."""
    n, bs = 30, 4
    base = {"probe_dir": str(tmp_path / "img"), "n": n, "batch_size": bs}
    make_probe(base["probe_dir"], n)
    root = tmp_path / "cache"
    multi = _run({**base, "root": str(root), "no_shards_on_rank": 1, "out": str(tmp_path / "m")},
                 torchrun=True)  # fmt: skip
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert "rank 0 does not see every rank's resume shards" in multi.stderr
    single = _run({**base, "root": "", "out": str(tmp_path / "single")}, torchrun=False)
    assert single.returncode == 0, single.stderr[-3000:]
    reference = torch.load(tmp_path / "single" / "rank0.pt")
    [entry] = FeatureCache(root).list()
    assert torch.equal(FeatureCache(root).get(entry.key).features, reference["features"])
    for r in range(2):
        got = torch.load(tmp_path / "m" / f"rank{r}.pt")
        assert torch.equal(got["features"], reference["features"])
        assert got["mapped_file"] is None  # gathered: in memory
    assert not list(root.rglob("rows-*"))


def test_commit_finds_the_gapless_shards_among_overlapping_ones(tmp_path):
    """Ranks of a resumed run write shards beside an earlier run's that straddle their blocks
    (here [12, 20), saved by time); taking the longest shard at each row would pick it and
    leave rows [20, 24) out: the commit must find [12, 16) + [16, 24) instead."""
    store = FeatureCache(tmp_path)
    data = torch.arange(30 * 3, dtype=torch.float32).reshape(30, 3)  # (rows, d)
    key = "ab" * 16
    for a, b in [(0, 12), (12, 20), (12, 16), (16, 24), (24, 30)]:
        store.put_shard(key, a, b, data[a:b])
    ids = tuple(f"r{i}" for i in range(30))
    path = store.commit_shards(key, ids, {"encoder": "x"})
    assert torch.equal(store.get(key).features, data) and path.exists()


PEAK_SCRIPT = """
import json, os, sys, threading, time
sys.path.insert(0, {tests!r})
import numpy as np
import torch
from test_features_support import WORDS, HashTextEncoder, mapped_file
from alignkit.features import FeatureCache, extract_features
from alignkit.probes.base import ProbeRow, ProbeSet

def anon_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) / 1024 for l in f if l.startswith("RssAnon"))

torch.set_num_threads(1)
rng = np.random.default_rng(0)
rows = tuple(ProbeRow(id=f"r{{i}}", image={image!r}, captions=(" ".join(rng.choice(WORDS, 5)),))
             for i in range({n}))
probe, enc = ProbeSet("peak", rows), HashTextEncoder(dim={dim})
peak, done = [anon_mb()], threading.Event()
def watch():  # sample this process's anonymous memory (the heap) while it extracts
    while not done.is_set():
        peak[0] = max(peak[0], anon_mb())
        time.sleep(0.002)
start = peak[0]
threading.Thread(target=watch, daemon=True).start()
fs = extract_features(enc, probe, batch_size=256, num_workers=0, progress=False,
                      cache=FeatureCache({root!r}, shard_batches=8), distributed=True)
done.set()
time.sleep(0.05)
report = {{"peak_growth_mb": peak[0] - start, "after_growth_mb": anon_mb() - start,
           "mapped_file": mapped_file(fs.features), "n": fs.n}}
with open(os.path.join({out!r}, "peak" + os.environ["RANK"] + ".json"), "w") as fh:
    json.dump(report, fh)
"""


@pytest.mark.distributed
@pytest.mark.slow  # two ranks extract 40,000 rows of 2,048 floats (312 MB): ~15 s loaded
def test_torchrun_ranks_hold_a_shard_not_the_set(tmp_path):
    """Each rank's heap grows by about a shard while it extracts and commits, not by the set
    (gathered, every rank held it ~3.5 times over), and it returns a map of the entry."""
    n, dim = 40_000, 2048
    set_mb = n * dim * 4 / 2**20
    image = tmp_path / "one.png"
    make_probe(tmp_path / "img", 1)  # any image file: a text extraction never reads it
    image.write_bytes(next((tmp_path / "img").iterdir()).read_bytes())
    script = tmp_path / "peak.py"
    root = tmp_path / "cache"
    script.write_text(
        PEAK_SCRIPT.format(tests=str(SUPPORT.parent), image=str(image), n=n, dim=dim,
                           root=str(root), out=str(tmp_path))
    )  # fmt: skip
    done = launch([str(script)], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [entry] = FeatureCache(root).list()
    for rank in range(2):
        report = json.loads((tmp_path / f"peak{rank}.json").read_text())
        assert report["n"] == n and report["mapped_file"] == str(entry.path)
        assert report["peak_growth_mb"] < set_mb / 4, (rank, report, set_mb)
        assert report["after_growth_mb"] < set_mb / 8, (rank, report, set_mb)


TOKENS_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
import torch
from test_features_support import make_probe, mapped_file
from test_features_tokens import TinyTokenImage, TinyTokenText
from alignkit.features import FeatureCache, _distributed
from alignkit.features.tokens import extract_tokens

def no_gather(*args, **kwargs):
    raise AssertionError("gather_rows was called")

_distributed.gather_rows = no_gather
torch.set_num_threads(1)
probe = make_probe({probe!r}, {n})
cache = FeatureCache({root!r}, shard_batches=2) if {root!r} else False
report = {{}}
for name, enc, policy in [("image", TinyTokenImage(), "first"), ("text", TinyTokenText(), "all")]:
    def counted(batch, forward=enc._forward_tokens, enc=enc):
        enc.calls += 1
        return forward(batch)
    enc._forward_tokens = counted
    fs = extract_tokens(enc, probe, batch_size=4, num_workers=0, caption_policy=policy,
                        cache=cache, progress=False, distributed=True)
    report[name] = {{"tokens": fs.tokens.clone(), "mask": fs.mask.clone(), "ids": fs.ids,
                     "calls": enc.calls, "mapped_file": mapped_file(fs.tokens)}}
torch.save(report, os.path.join({out!r}, "tokens" + os.environ.get("RANK", "single") + ".pt"))
"""


@pytest.mark.distributed
def test_torchrun_ranks_split_token_extraction(tmp_path):
    """Token features (alignkit train with a token-level projector): each rank extracts its
    block of rows into shards, rank 0 commits the entry, every rank maps it; the tokens and masks
    are those of one process (text tokens padded per shard, then to the longest of the probe)."""
    n = 13  # 4 batches of 4 (the last of 1): rows [0, 8) and [8, 13); "all": 39 captions
    make_probe(tmp_path / "img", n)
    root = tmp_path / "cache"

    def run(cache_root: str, torchrun: bool) -> None:
        script = tmp_path / f"tokens{int(torchrun)}.py"
        script.write_text(
            TOKENS_SCRIPT.format(tests=str(SUPPORT.parent), probe=str(tmp_path / "img"), n=n,
                                 root=cache_root, out=str(tmp_path))
        )  # fmt: skip
        done = launch([str(script)], torchrun=torchrun)
        assert done.returncode == 0, done.stderr[-3000:]

    run(str(root), torchrun=True)
    run("", torchrun=False)
    reference = torch.load(tmp_path / "tokenssingle.pt")
    ranks = [torch.load(tmp_path / f"tokens{r}.pt") for r in range(2)]
    store = FeatureCache(root)
    assert not list(root.rglob("rows-*"))  # committed, shards removed
    for name, batches in (("image", 4), ("text", 10)):  # 39 captions: 10 batches
        want = reference[name]
        for got in ranks:
            assert got[name]["ids"] == want["ids"]
            assert torch.equal(got[name]["tokens"], want["tokens"])
            assert torch.equal(got[name]["mask"], want["mask"])
            assert got[name]["mapped_file"] is not None
            assert got[name]["mapped_file"].startswith(str(store.root))
        assert ranks[0][name]["mapped_file"] == ranks[1][name]["mapped_file"]
        assert ranks[0][name]["calls"] + ranks[1][name]["calls"] == batches  # split, not repeated
        assert min(ranks[0][name]["calls"], ranks[1][name]["calls"]) >= 1


def test_token_extraction_resumes_the_shards_of_another_world_size(tmp_path):
    """Rank 1 of 2 wrote its block [8, 13) of token shards before the job stopped; one process
    then computes only rows [0, 8) and gives the tokens of an uninterrupted run."""
    from test_features_tokens import TinyTokenText

    from alignkit.features import _token_shards
    from alignkit.features.tokens import _TokenJob, extract_tokens, token_key

    probe = make_probe(tmp_path / "img", 13)
    store = FeatureCache(tmp_path / "cache", shard_batches=3)  # shards of 12 rows
    rank1 = TinyTokenText()
    key = token_key(rank1, probe, "first", 0)
    _token_shards.write_rows(_TokenJob(rank1, probe, 4, 0, "first", 0, False), store, key, 8, 13)
    assert sorted(p.name for p in store.root.rglob("rows-*")) == [
        "rows-000000008-000000012.safetensors",
        "rows-000000012-000000013.safetensors",
    ]  # cut at the rank's block and at a multiple of 12 rows
    resumed, seen = TinyTokenText(), []
    forward = resumed._forward_tokens
    resumed._forward_tokens = lambda batch: seen.append(len(batch)) or forward(batch)
    kw = {"batch_size": 4, "num_workers": 0, "progress": False}
    fs = extract_tokens(resumed, probe, cache=store, distributed=False, **kw)
    assert seen == [4, 4]  # rows [0, 8) only
    fresh = extract_tokens(TinyTokenText(), probe, cache=False, **kw)
    assert torch.equal(fs.tokens.clone(), fresh.tokens) and torch.equal(fs.mask, fresh.mask)
    assert not list(store.root.rglob("rows-*"))
