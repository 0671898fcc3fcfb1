"""Caption-level features (caption_policy="all") and token-level features (float16, mem-mapped)."""

from __future__ import annotations

import json

import pytest
import torch
from test_features_support import HashTextEncoder, TinyImageEncoder, make_probe

from alignkit.errors import AlignkitError
from alignkit.features import FeatureCache, extract_features
from alignkit.features.tokens import TokenFeatureSet, extract_tokens, read_tokens
from alignkit.probes.base import ProbeRow, ProbeSet


class TinyTokenImage(TinyImageEncoder):
    """The tiny conv net's 32x32 feature map as 1024 tokens of width 8."""

    def _forward_tokens(self, batch):
        maps = torch.relu(self.conv(batch))  # (B, 8, 32, 32)
        tokens = maps.flatten(2).transpose(1, 2)  # (B, 1024, 8)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool)


class TinyTokenText(HashTextEncoder):
    """One hashed embedding per word: variable-length token sequences, padded in a batch."""

    def _forward_tokens(self, batch):
        ids = [self.token_ids(t) for t in batch]
        t = max(len(i) for i in ids)
        tokens = torch.zeros(len(batch), t, self.dim)
        mask = torch.zeros(len(batch), t, dtype=torch.bool)
        for r, row in enumerate(ids):
            tokens[r, : len(row)] = self.table[torch.tensor(row)]
            mask[r, : len(row)] = True
        return tokens, mask


@pytest.fixture
def probe(tmp_path):
    return make_probe(tmp_path / "img", 7)


def test_all_captions_one_row_per_caption_with_its_image(tmp_path):
    base = make_probe(tmp_path / "img", 5)
    rows = tuple(ProbeRow(r.id, r.image, r.captions[: 1 + i % 3]) for i, r in enumerate(base.rows))
    probe = ProbeSet("uneven", rows)  # 1, 2, 3, 1, 2 captions
    enc = HashTextEncoder()
    fs = extract_features(
        enc, probe, batch_size=2, caption_policy="all", cache=tmp_path / "c", progress=False
    )
    assert fs.n == 9 and fs.per_caption and fs.row_ids == probe.ids
    assert fs.caption_image.tolist() == [0, 1, 1, 2, 2, 2, 3, 4, 4]
    assert fs.caption_image.dtype == torch.long
    # each row is that caption encoded on its own (naive loop)
    naive = [enc.encode([c])[0] for row in rows for c in row.captions]
    torch.testing.assert_close(fs.features, torch.stack(naive), rtol=1e-5, atol=1e-6)
    # cached: a second call does no model work and gives the same rows and mapping
    calls = enc.calls
    again = extract_features(
        enc, probe, batch_size=4, caption_policy="all", cache=tmp_path / "c", progress=False
    )
    assert enc.calls == calls and torch.equal(again.features, fs.features)
    assert again.caption_image.tolist() == fs.caption_image.tolist()
    # "all" has its own cache key: "first" is not served from it
    first = extract_features(
        enc, probe, caption_policy="first", cache=tmp_path / "c", progress=False
    )
    assert first.n == 5 and not first.per_caption
    assert torch.equal(first.caption_image, torch.arange(5))


def test_unknown_caption_policy_lists_all():
    enc = HashTextEncoder()
    probe = ProbeSet("p", (ProbeRow("a", lambda: None, ("x",)),))
    with pytest.raises(AlignkitError, match="all"):
        extract_features(enc, probe, caption_policy="every", cache=False, progress=False)


def test_image_tokens_are_float16_memory_mapped_and_match_naive(probe, tmp_path):
    enc = TinyTokenImage()
    store = FeatureCache(tmp_path / "c", shard_batches=1)
    fs = extract_tokens(enc, probe, batch_size=3, num_workers=0, cache=store, progress=False)
    assert isinstance(fs, TokenFeatureSet)
    assert fs.tokens.shape == (7, 1024, 8) and fs.tokens.dtype == torch.float16
    assert fs.mask.all() and fs.ids == probe.ids
    assert fs.path is not None and fs.path.parent.parent == store.root
    # the tokens are the feature map of each image alone, rounded to float16
    for i, row in enumerate(probe.rows):
        x = enc.preprocess(row.load_image())[None]
        want = torch.relu(enc.conv(x)).flatten(2).transpose(1, 2)[0].detach()
        torch.testing.assert_close(fs.tokens[i].float(), want, rtol=1e-3, atol=1e-3)  # fp16
    # a plain safetensors file any tool can read; the sidecar is listed by the cache
    from safetensors.torch import load_file

    plain = load_file(str(fs.path))
    assert torch.equal(plain["tokens"], fs.tokens.clone()) and torch.equal(plain["mask"], fs.mask)
    side = json.loads(fs.path.with_suffix(".json").read_text())
    assert side["kind"] == "tokens" and side["shape"] == [7, 1024, 8]
    assert any(e.key == side["key"] for e in store.list())
    # memory-mapped: the tensor's storage is the file itself, not a copy of it
    import struct

    with open(fs.path, "r+b") as f:
        (head,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + head)  # tokens[0, 0, 0] is the first float16 of the data
        f.write(torch.tensor([123.0], dtype=torch.float16).numpy().tobytes())
    assert float(fs.tokens[0, 0, 0]) == 123.0
    fs = read_tokens(fs.path.with_suffix(".safetensors"))
    # cached: no model work the second time (the size check passes: same bytes count)
    calls = enc.calls
    again = extract_tokens(enc, probe, batch_size=3, num_workers=0, cache=store, progress=False)
    assert enc.calls == calls and float(again.tokens[0, 0, 0]) == 123.0


def test_text_tokens_all_captions_padded_with_mask(probe, tmp_path):
    enc = TinyTokenText()
    fs = extract_tokens(
        enc, probe, batch_size=4, caption_policy="all", cache=tmp_path / "c", progress=False
    )
    captions = [c for row in probe.rows for c in row.captions]
    assert fs.n == len(captions) == 21 and fs.per_caption
    assert fs.caption_image.tolist() == [i for i in range(7) for _ in range(3)]
    lengths = [len(HashTextEncoder.token_ids(c)) for c in captions]
    assert fs.n_tokens == max(lengths)  # padded to the longest caption of the probe
    assert fs.mask.sum(1).tolist() == lengths
    # the masked mean of the tokens is the pooled (embedding-bag mean) feature
    pooled = torch.stack([enc.encode([c])[0] for c in captions])
    torch.testing.assert_close(fs.pooled(), pooled, atol=2e-3, rtol=2e-3)
    assert (fs.tokens[~fs.mask] == 0).all()


def test_interrupted_token_extraction_resumes_from_shards(probe, tmp_path):
    store = FeatureCache(tmp_path / "c", shard_batches=1)
    failing = TinyTokenImage()
    failing.fail_on_call = 10**9

    def boom_after_two(batch, _calls=[0]):  # noqa: B006 - a counter across calls
        _calls[0] += 1
        if _calls[0] > 2:
            raise RuntimeError("killed")
        return TinyTokenImage._forward_tokens(failing, batch)

    failing._forward_tokens = boom_after_two
    with pytest.raises(RuntimeError, match="killed"):
        extract_tokens(failing, probe, batch_size=2, num_workers=0, cache=store, progress=False)
    shards = list(store.root.glob("*/*.partial/*.safetensors"))
    assert len(shards) == 2  # rows [0, 2) and [2, 4) kept
    counted = TinyTokenImage()
    seen = []
    orig = counted._forward_tokens

    def count(batch):
        seen.append(len(batch))
        return orig(batch)

    counted._forward_tokens = count
    fs = extract_tokens(counted, probe, batch_size=2, num_workers=0, cache=store, progress=False)
    assert seen == [2, 1]  # only rows [4, 7) were computed again
    fresh = extract_tokens(
        TinyTokenImage(), probe, batch_size=2, num_workers=0, cache=False, progress=False
    )
    assert torch.equal(fs.tokens.clone(), fresh.tokens) and torch.equal(fs.mask, fresh.mask)


def test_a_damaged_token_shard_is_dropped_and_its_rows_computed_again(probe, tmp_path, caplog):
    store = FeatureCache(tmp_path / "c", shard_batches=1)
    whole = extract_tokens(
        TinyTokenImage(), probe, batch_size=2, num_workers=0, cache=store, progress=False
    )
    partial = next(store.root.glob("*/*.safetensors")).with_suffix(".partial")
    partial.mkdir()
    (partial / "rows-000000000-000000002.safetensors").write_bytes(b"half a shard")
    for f in store.root.glob("*/*"):  # drop the committed entry: the next run reads the shards
        if f.is_file():
            f.unlink()
    seen = []
    counted = TinyTokenImage()
    orig = counted._forward_tokens
    counted._forward_tokens = lambda batch: seen.append(len(batch)) or orig(batch)
    fs = extract_tokens(counted, probe, batch_size=2, num_workers=0, cache=store, progress=False)
    assert "dropping a damaged shard of a token entry" in caplog.text
    assert sum(seen) == len(probe)  # rows [0, 2) were computed again, not read from the bytes
    assert torch.equal(fs.tokens.clone(), whole.tokens.clone())


def test_token_bad_input(probe, tmp_path):
    with pytest.raises(AlignkitError, match="no token-level features"):
        extract_tokens(TinyImageEncoder(), probe, cache=False, progress=False)
    with pytest.raises(AlignkitError, match="mean"):
        extract_tokens(TinyTokenText(), probe, caption_policy="mean", cache=False, progress=False)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(AlignkitError, match="token-feature safetensors"):
        read_tokens(bad)


def test_bounded_memory_reading_a_large_token_file(tmp_path):
    """Reading touches pages on demand: peak RSS grows far less than the file size."""
    import resource
    import subprocess
    import sys
    import textwrap

    n, t, d = 2048, 64, 512  # 128 MiB of float16 tokens
    path = tmp_path / "big.safetensors"
    from alignkit.features._token_shards import _header

    meta = {"ids": json.dumps([str(i) for i in range(n)]), "provenance": "{}"}
    with open(path, "wb") as f:
        f.write(_header(n, t, d, meta))
        block = torch.ones(64, t, d, dtype=torch.float16).numpy().tobytes()
        for _ in range(n // 64):
            f.write(block)
        f.write(b"\x01" * (n * t))
    code = textwrap.dedent(f"""
        import resource, torch
        from alignkit.features.tokens import read_tokens
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fs = read_tokens({str(path)!r})
        total = 0.0
        for a in range(0, fs.n, 64):  # a pass over every row, 64 at a time
            total += float(fs.tokens[a:a + 64, 0, 0].float().sum())
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(total, (after - before) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    total, grown_mib = out.stdout.split()
    assert float(total) == n
    assert int(grown_mib) < 64, f"RSS grew {grown_mib} MiB reading a 128 MiB file"
    del resource
