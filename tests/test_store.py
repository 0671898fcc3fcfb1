"""The feature store: cache entries read memory-mapped, written streamed from shards, float16 by
choice; training batches gathered from the map equal those of the in-RAM path."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from alignkit.errors import AlignkitError
from alignkit.features import FeatureCache, FeatureSet, paired_features
from alignkit.features.store import map_tensor, write_streamed
from alignkit.training.data import PairedFeatures, make_batch


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process that map ``path`` or a file under it (/proc/self/maps)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path)) or f" {path}/" in line:
            lo, hi = line.split()[0].split("-")
            ranges.append((int(lo, 16), int(hi, 16)))
    return ranges


def _set(n: int, d: int, seed: int, modality: str, caption_policy: str | None = None):
    g = torch.Generator().manual_seed(seed)
    ids = tuple(f"r{i}" for i in range(n))
    prov = {"encoder": f"toy:{modality}", "modality": modality, "caption_policy": caption_policy}
    return FeatureSet(torch.randn(n, d, generator=g), ids, prov)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc (Linux)")
def test_a_cache_entry_is_read_as_a_map_of_its_file_not_a_copy(tmp_path):
    store = FeatureCache(tmp_path)
    fs = _set(300, 16, 0, "image")
    store.put("ab" * 16, fs)
    got = store.get("ab" * 16)
    assert torch.equal(got.features, fs.features)
    ptr = got.features.data_ptr()
    assert any(lo <= ptr < hi for lo, hi in _mapped_ranges(store.path("ab" * 16)))
    got.features[0, 0] = 123.0  # copy-on-write: the caller's change never reaches the file
    assert torch.equal(store.get("ab" * 16).features, fs.features)


def test_map_tensor_reads_what_safetensors_wrote_and_refuses_a_truncated_file(tmp_path):
    from safetensors.torch import save_file

    x = torch.randn(7, 5, dtype=torch.float16)
    save_file({"features": x}, str(tmp_path / "a.safetensors"), metadata={"k": "v"})
    got, meta = map_tensor(tmp_path / "a.safetensors")
    assert got.dtype == torch.float16 and torch.equal(got, x) and meta == {"k": "v"}
    raw = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "b.safetensors").write_bytes(raw[:-4])
    with pytest.raises(ValueError, match="truncated"):
        map_tensor(tmp_path / "b.safetensors")
    (tmp_path / "c.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + raw[8:])
    with pytest.raises(ValueError, match="header length"):
        map_tensor(tmp_path / "c.safetensors")


def test_streamed_write_equals_the_concatenation_of_its_pieces(tmp_path):
    from safetensors.torch import load_file  # the file is plain safetensors

    g = torch.Generator().manual_seed(1)
    flat = [torch.randn(r, 6, generator=g) for r in (3, 1, 4)]
    layered = [torch.randn(2, r, 6, generator=g) for r in (3, 1, 4)]
    for name, pieces in (("flat", flat), ("layered", layered)):
        write_streamed(tmp_path / f"{name}.safetensors", pieces, {"m": "1"}, "float32")
        got, _ = map_tensor(tmp_path / f"{name}.safetensors")
        want = torch.cat(pieces, dim=-2)
        assert got.shape == want.shape and torch.equal(got, want), name
        assert torch.equal(load_file(str(tmp_path / f"{name}.safetensors"))["features"], want)
    with pytest.raises(AlignkitError, match="same L and d"):
        write_streamed(tmp_path / "bad.safetensors", [flat[0], layered[0]], {})


def test_commit_from_shards_equals_a_whole_put_and_refuses_a_gap(tmp_path):
    store = FeatureCache(tmp_path)
    fs = _set(10, 4, 2, "image")
    key = "cd" * 16
    for a, b in ((0, 4), (4, 10)):
        store.put_shard(key, a, b, fs.features[a:b])
    store.commit_shards(key, fs.ids, fs.provenance)
    got = store.get(key)
    assert got.ids == fs.ids and torch.equal(got.features, fs.features)
    assert not store._partial_dir(key).exists()
    side = json.loads(store.path(key).with_suffix(".json").read_text())
    assert side["n"] == 10 and side["dtype"] == "float32"
    other = "ef" * 16
    store.put_shard(other, 0, 4, fs.features[:4])
    store.put_shard(other, 6, 10, fs.features[6:])
    with pytest.raises(AlignkitError, match="first row missing is 4"):
        store.commit_shards(other, fs.ids, fs.provenance)
    assert len(store.load_shards(other)) == 2  # nothing lost


def test_batches_from_the_mapped_store_equal_the_in_ram_batches(tmp_path):
    """Captions stored interleaved (caption j of image i at row j * n + i), so a batch's caption
    rows are not ascending: the read is sorted, the batch keeps its order."""
    n, per = 40, 3
    image = _set(n, 8, 3, "image")
    g = torch.Generator().manual_seed(4)
    t2i = torch.arange(n).repeat(per)  # interleaved
    text_ids = tuple(f"r{int(i)}#{j}" for j in range(per) for i in range(n))
    text = FeatureSet(
        torch.randn(n * per, 5, generator=g),
        text_ids,
        {"encoder": "toy:text", "modality": "text", "caption_policy": "all"},
    )
    store = FeatureCache(tmp_path)
    store.put("12" * 16, image)
    store.put("34" * 16, text)
    mapped_image, mapped_text = store.get("12" * 16), store.get("34" * 16)
    in_ram = PairedFeatures(image.features.clone(), text.features.clone(), t2i, list(image.ids))
    mapped = PairedFeatures(mapped_image.features, mapped_text.features, t2i, list(image.ids))
    for captions in ("one", "all"):
        for rows in (torch.tensor([31, 2, 17, 5, 39]), torch.arange(0, 40, 3)):
            a = make_batch(in_ram, rows, captions, torch.Generator().manual_seed(7))
            b = make_batch(mapped, rows, captions, torch.Generator().manual_seed(7))
            assert torch.equal(a.text_rows, b.text_rows)
            assert torch.equal(a.image, b.image) and torch.equal(a.text, b.text)
            # naive: row by row, in the batch's order
            assert torch.equal(b.text, torch.stack([text.features[int(r)] for r in b.text_rows]))
            assert torch.equal(b.image, torch.stack([image.features[int(r)] for r in rows]))
    assert paired_features(mapped_image, mapped_text).image.data_ptr() == (
        mapped_image.features.data_ptr()
    )  # pairing keeps the map (no copy of the whole set)


# -- float16 storage by choice --------------------------------------------------------------------
def _extract(enc, probe, store, **kw):
    from alignkit.features import extract_features

    options = {"batch_size": 4, "num_workers": 0, "cache": store, "progress": False}
    return extract_features(enc, probe, **{**options, **kw})


@pytest.mark.parametrize("modality", ["image", "text"])
def test_a_float16_entry_is_the_float32_features_rounded_and_never_mixes_with_them(
    tmp_path, modality
):
    from test_features_support import HashTextEncoder, TinyImageEncoder, make_probe

    probe = make_probe(tmp_path / "img", 10)
    store = FeatureCache(tmp_path / "cache", shard_batches=1)
    enc = TinyImageEncoder() if modality == "image" else HashTextEncoder()
    full = _extract(enc, probe, store)
    half = _extract(enc, probe, store, store_dtype="float16")
    assert full.features.dtype == torch.float32 and half.features.dtype == torch.float16
    assert enc.calls == 2 * 3  # the float16 run did not reuse the float32 entry (3 batches)
    assert half.provenance["cache_key"] != full.provenance["cache_key"]
    want = torch.tensor(full.features.numpy().astype("float16"))  # rounded by numpy, not torch
    assert torch.equal(half.features, want)
    again = _extract(enc, probe, store, store_dtype="float16")  # a hit, read from the file
    assert enc.calls == 6 and torch.equal(again.features, want)
    assert _extract(enc, probe, store).features.dtype == torch.float32 and enc.calls == 6
    side = json.loads(store.path(half.provenance["cache_key"]).with_suffix(".json").read_text())
    assert side["dtype"] == "float16"
    copy = FeatureSet.load(half.save(tmp_path / "half.safetensors"))  # `extract --out`
    assert copy.features.dtype == torch.float16 and torch.equal(copy.features, want)
    assert store.path(half.provenance["cache_key"]).stat().st_size < (
        store.path(full.provenance["cache_key"]).stat().st_size
    )


def test_a_float16_subsample_is_not_gathered_from_a_float32_entry(tmp_path):
    from test_features_support import TinyImageEncoder, make_probe

    probe = make_probe(tmp_path / "img", 10)
    store = FeatureCache(tmp_path / "cache", shard_batches=1)
    enc = TinyImageEncoder()
    _extract(enc, probe, store)  # float32, every row
    calls = enc.calls
    part = _extract(enc, probe.subsample(5), store, store_dtype="float16")
    assert part.features.dtype == torch.float16 and enc.calls > calls
    whole = _extract(enc, probe, store, store_dtype="float16")
    calls = enc.calls
    sub = probe.subsample(4)
    again = _extract(enc, sub, store, store_dtype="float16")  # rows of the float16 entry
    assert enc.calls == calls and again.features.dtype == torch.float16
    rows = [probe.ids.index(i) for i in sub.ids]
    assert torch.equal(again.features, whole.features[rows])


def test_store_dtype_is_checked_and_named_in_the_error(tmp_path):
    from test_features_support import make_probe

    from alignkit.features.config import ExtractConfig

    with pytest.raises(AlignkitError, match="float16, float32"):
        ExtractConfig(encoders=("x:y",), store_dtype="bfloat16")
    with pytest.raises(AlignkitError, match="store dtype"):
        _extract("tiny:x", make_probe(tmp_path / "img", 2), False, store_dtype="int8")


def test_pairing_a_float16_entry_keeps_the_map_and_batches_upcast_on_the_device(tmp_path):
    store = FeatureCache(tmp_path)
    image, text = _set(20, 6, 5, "image"), _set(20, 4, 6, "text", "first")
    store.put("56" * 16, image, dtype="float16")
    store.put("78" * 16, text, dtype="float16")
    mapped_image, mapped_text = store.get("56" * 16), store.get("78" * 16)
    data = paired_features(mapped_image, mapped_text)
    assert data.image.data_ptr() == mapped_image.features.data_ptr()  # not a float32 copy
    batch = make_batch(data, torch.tensor([3, 1, 19]), "one", torch.Generator().manual_seed(0))
    from alignkit.training.data import to_device

    got = to_device(batch.image, torch.device("cpu"), torch.float32)
    assert got.dtype == torch.float32
    assert torch.equal(got, image.features[[3, 1, 19]].half().float())


# -- training from the mapped store ---------------------------------------------------------------
def _stored_pairs(store: FeatureCache, data: PairedFeatures, dtype: str) -> PairedFeatures:
    """``data`` written shard by shard into ``store`` as ``dtype``, read back mapped."""
    sides = []
    for name, x in (("image", data.image), ("text", data.text)):
        key = ("a1" if name == "image" else "b2") * 16
        for a in range(0, x.shape[0], 50):  # shards of 50 rows, as an extraction writes them
            store.put_shard(key, a, min(a + 50, x.shape[0]), x[a : a + 50], dtype)
        ids = tuple(data.image_ids) if name == "image" else tuple(f"t{i}" for i in range(len(x)))
        store.commit_shards(key, ids, {"modality": name}, dtype=dtype)
        sides.append(store.get(key).features)
    return PairedFeatures(sides[0], sides[1], data.text_to_image, list(data.image_ids))


def test_a_run_on_a_mapped_float16_store_resumes_mid_epoch_bitwise(tmp_path):
    from _training_support import synthetic_pairs

    from alignkit.training import TrainConfig, train_projector
    from alignkit.training.trainer import _SimulatedStop

    config = TrainConfig(width=16, batch_size=16, epochs=3, lr=3e-3, eval_every=4, captions="one")
    data = synthetic_pairs(96)
    mapped = _stored_pairs(FeatureCache(tmp_path / "cache"), data, "float16")
    assert mapped.image.dtype == torch.float16
    assert _mapped_ranges(tmp_path / "cache")  # the store's files are mapped, not read in
    rounded = PairedFeatures(  # the in-RAM path on the same numbers
        data.image.half().float(), data.text.half().float(), data.text_to_image, data.image_ids
    )
    whole = train_projector(config, rounded, out_dir=tmp_path / "ram", progress=False)
    # 6 steps per epoch: stop at step 9, mid-epoch 2 (last checkpoint: step 8)
    with pytest.raises(_SimulatedStop):
        train_projector(config, mapped, out_dir=tmp_path / "cut", progress=False, _stop_at_step=9)
    resumed = train_projector(config, mapped, out_dir=tmp_path / "cut", progress=False)
    assert resumed.steps == whole.steps == 18
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


# -- benchmarks/scale.py --------------------------------------------------------------------------
@pytest.mark.slow
def test_the_scale_benchmark_trains_a_mapped_store_with_memory_below_its_size(tmp_path, data_dir):
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py"
    args = ["--quick", "--rows", "12000", "--dim", "2048", "--batch", "128", "--work", tmp_path]
    env = {**os.environ, "ALIGNKIT_DATA_DIR": str(data_dir)}
    out = subprocess.run(
        [sys.executable, str(script), *map(str, args)], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("rows", "dim", "probe_load_s", "store_write_rows_per_s", "train_rows_per_s"):
        assert result[key] > 0, key
    assert (result["rows"], result["dim"], result["steps"]) == (12000, 2048, 12000 // 128)
    assert 0 < result["train_floor_ratio"] <= 1.5
    assert result["store_mb"] > 90  # 2 x 12,000 x 2,048 float16
    assert result["train_rss_growth_mb"] < result["store_mb"]  # not read into the heap
    assert not list(tmp_path.glob("store-*"))  # the store is removed afterwards


def test_extract_store_dtype_on_the_command_line(tmp_path, capsys):
    from _cli import run_cli

    base = ["extract", "-e", "random:text-64", "--probe", "synthetic", "-n", "12", "--quiet"]
    base += ["--cache", str(tmp_path)]
    assert run_cli([*base, "--store-dtype", "float16"], capsys)[0] == 0
    assert run_cli(base, capsys)[0] == 0  # float32: another entry
    sides = [json.loads(p.read_text()) for p in (tmp_path / "features").glob("*/*.json")]
    assert sorted(side["dtype"] for side in sides if "shape" in side) == ["float16", "float32"]
    code, _, err = run_cli([*base, "--store-dtype", "half"], capsys)
    assert code != 0 and "--store-dtype" in err and "float16, float32" in err
    assert "Traceback" not in err


def test_a_large_subsample_of_an_entry_is_its_own_mapped_entry_not_a_copy(tmp_path, monkeypatch):
    from test_features_support import TinyImageEncoder, make_probe

    from alignkit.features import _shards, cache

    monkeypatch.setattr(cache, "GATHER_IN_MEMORY_ROWS", 2)  # "large" = more than 2 rows
    monkeypatch.setattr(_shards, "GATHER_IN_MEMORY_ROWS", 2)  # written 2 rows a block
    probe = make_probe(tmp_path / "img", 10)
    store = FeatureCache(tmp_path / "cache", shard_batches=1)
    enc = TinyImageEncoder()
    whole = _extract(enc, probe, store, store_dtype="float16")
    calls = enc.calls
    sub = probe.subsample(7)
    part = _extract(enc, sub, store, store_dtype="float16")
    assert enc.calls == calls  # read from the whole entry, no model work
    rows = [probe.ids.index(i) for i in sub.ids]
    assert part.features.dtype == torch.float16 and torch.equal(part.features, whole.features[rows])
    key = part.provenance["cache_key"]
    assert part.provenance["cached_from"] == whole.provenance["cache_key"] != key
    ptr = part.features.data_ptr()  # a map of its own entry's file
    assert any(lo <= ptr < hi for lo, hi in _mapped_ranges(store.path(key)))
    assert not store._partial_dir(key).exists()
    again = _extract(enc, sub, store, store_dtype="float16")  # now a hit of that entry
    assert enc.calls == calls and torch.equal(again.features, part.features)
