"""Image features are cached by the images they show, not by the probe that holds them: the same
images under other ids or captions, a subsample of an extracted probe, and entries written
before the image key (by probe fingerprint) are read back without any model work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_features_support import TinyImageEncoder, make_probe

from alignkit.features import FeatureCache, extract_features, feature_key
from alignkit.features import keys as keys_module
from alignkit.probes import ProbeRow, ProbeSet, load_probe


def _extract(enc, probe, store, **kw):
    options = {"batch_size": 4, "num_workers": 0, "cache": store, "progress": False, **kw}
    return extract_features(enc, probe, **options)


def _recaptioned(probe: ProbeSet, name: str = "one-caption") -> ProbeSet:
    """The same images under other ids, one other caption each (a one-caption manifest)."""
    rows = tuple(
        ProbeRow(id=f"img-{i}", image=row.image, captions=(f"caption {i}",))
        for i, row in enumerate(probe.rows)
    )
    return ProbeSet(name, rows)


@pytest.fixture
def probe(tmp_path: Path) -> ProbeSet:
    return make_probe(tmp_path / "img", 12)


@pytest.fixture
def store(tmp_path: Path) -> FeatureCache:
    return FeatureCache(tmp_path / "cache")


def test_same_images_with_other_ids_and_captions_are_not_extracted_again(probe, store):
    first = _extract(TinyImageEncoder(), probe, store)
    other = _recaptioned(probe)
    assert other.fingerprint != probe.fingerprint
    again = TinyImageEncoder(fail_on_call=1)  # any forward call raises
    second = _extract(again, other, store)
    assert again.calls == 0
    assert torch.equal(second.features, first.features)
    assert second.ids == other.ids  # the rows are this probe's
    assert second.provenance["probe_fingerprint"] == other.fingerprint
    assert len(store.list()) == 1


def test_a_subsample_of_extracted_images_is_read_from_the_full_entry(probe, store):
    full = _extract(TinyImageEncoder(), probe, store)
    part = probe.subsample(5, seed=3)
    again = TinyImageEncoder(fail_on_call=1)
    sub = _extract(again, part, store)
    assert again.calls == 0
    rows = [probe.ids.index(i) for i in part.ids]
    assert torch.equal(sub.features, full.features[rows])
    assert sub.ids == part.ids
    assert sub.provenance["probe_fingerprint"] == part.fingerprint
    assert sub.provenance["cached_from"] == full.provenance["cache_key"]
    # layered features: rows gathered along the row axis of (L, n, d)
    _extract(TinyImageEncoder(layer="all"), probe, store)
    layered = _extract(TinyImageEncoder(layer="all", fail_on_call=1), part, store)
    assert layered.features.shape[-2] == 5


def test_other_images_or_another_encoder_are_extracted(probe, store, tmp_path):
    _extract(TinyImageEncoder(), probe.subsample(6, seed=0), store)
    enc = TinyImageEncoder()
    _extract(enc, probe, store)  # 6 of its images are not in the cache
    assert enc.calls > 0
    changed = make_probe(tmp_path / "other", 12, seed=1)  # other pixels, the same ids
    enc = TinyImageEncoder()
    _extract(enc, changed, store)
    assert enc.calls > 0
    enc = TinyImageEncoder(layer="all")  # another config: its own entries
    _extract(enc, probe.subsample(3), store)
    assert enc.calls > 0


def test_image_key_ignores_captions_ids_and_holder_but_not_images(probe, tmp_path):
    enc = TinyImageEncoder()
    assert feature_key(enc, probe) == feature_key(enc, _recaptioned(probe))
    assert feature_key(enc, probe) != feature_key(enc, probe.subsample(5))
    changed = make_probe(tmp_path / "other", 12, seed=1)
    assert feature_key(enc, probe) != feature_key(enc, changed)


def test_entries_keyed_by_probe_fingerprint_are_still_read(probe, store, monkeypatch):
    """An image entry written before the image key (under the probe-fingerprint key) is read,
    and a subsample then reuses it too."""

    def old_fields(encoder, probe, caption_policy="first", seed=0):
        return keys_module.probe_key_fields(encoder, probe, caption_policy, seed)

    with monkeypatch.context() as m:
        m.setattr(keys_module, "key_fields", old_fields)
        first = _extract(TinyImageEncoder(), probe, store)
    [entry] = store.list()
    assert entry.key == first.provenance["cache_key"] != feature_key(TinyImageEncoder(), probe)
    again = TinyImageEncoder(fail_on_call=1)
    assert torch.equal(_extract(again, probe, store).features, first.features)
    sub = _extract(TinyImageEncoder(fail_on_call=1), probe.subsample(4), store)
    assert sub.n == 4 and len(store.list()) == 1


def test_an_entry_found_without_its_encoder_names_the_same_encoder_key(probe, store):
    enc = TinyImageEncoder()
    fs = _extract(enc, probe, store)
    by_entry = keys_module.entry_rows(fs.provenance, probe)
    assert by_entry.encoder_key == keys_module.image_rows(enc, probe).encoder_key
    other = TinyImageEncoder(layer="all")
    assert by_entry.encoder_key != keys_module.image_rows(other, probe).encoder_key


def test_text_keys_are_unchanged(probe):
    from test_features_support import HashTextEncoder

    text = HashTextEncoder()
    fields = keys_module.probe_key_fields(text, probe, "first", 0)
    assert keys_module.key_fields(text, probe) == fields
    assert fields["probe"] == probe.fingerprint


# -- real images, real weights ------------------------------------------------------------------
@pytest.mark.real
@pytest.mark.slow
def test_real_one_caption_manifest_and_subsample_reuse_the_image_features(data_dir, tmp_path):
    from alignkit.encoders import create_encoder

    store = FeatureCache(tmp_path / "cache")
    enc = create_encoder("torchvision:mobilenet_v2", device="cpu")
    calls = []
    forward = enc.forward
    enc.forward = lambda batch: calls.append(len(batch)) or forward(batch)  # rows per call

    full = load_probe("flickr8k:dev", n=24, data_dir=data_dir, progress=False)
    first = _extract(enc, full, store, batch_size=8)
    assert sum(calls) == 24
    # (a) a one-caption manifest of the same images, written as a user would
    manifest = tmp_path / "mine" / "manifest.jsonl"
    manifest.parent.mkdir()
    lines = [json.dumps({"image": str(r.image), "caption": r.captions[0]}) for r in full.rows]
    manifest.write_text("\n".join(lines) + "\n")
    mine = load_probe(str(manifest), progress=False)
    assert mine.ids != full.ids and mine.fingerprint != full.fingerprint
    calls.clear()
    again = _extract(enc, mine, store, batch_size=8)
    assert calls == [] and torch.equal(again.features, first.features)
    # (b) --n 10 of the same split after the 24 rows (a prefix of the same seeded order)
    part = load_probe("flickr8k:dev", n=10, data_dir=data_dir, progress=False)
    assert set(part.ids) <= set(full.ids)
    sub = _extract(enc, part, store, batch_size=8)
    assert calls == []
    rows = [full.ids.index(i) for i in part.ids]
    assert torch.equal(sub.features, first.features[rows])
    assert len(store.list()) == 1


@pytest.mark.real
@pytest.mark.slow
def test_real_entry_from_before_image_keys_serves_a_subsample_after_a_cache_hit(
    data_dir, tmp_path, monkeypatch
):
    """A spec's entry written before image keys (by probe fingerprint, with no image index) is
    indexed when a rerun reads it without building the encoder; --n 10 then reads its rows."""
    from alignkit.features import _work

    spec, root = "torchvision:mobilenet_v2", tmp_path / "cache"
    full = load_probe("flickr8k:dev", n=24, data_dir=data_dir, progress=False)
    kw = {"batch_size": 8, "num_workers": 0, "cache": root, "progress": False, "device": "cpu"}

    def old_fields(encoder, probe, caption_policy="first", seed=0):
        return keys_module.probe_key_fields(encoder, probe, caption_policy, seed)

    with monkeypatch.context() as m:  # the cache as the code before image keys left it
        m.setattr(keys_module, "key_fields", old_fields)
        m.setattr(FeatureCache, "index_rows", lambda *a: None)
        first = extract_features(spec, full, **kw)
    assert not (root / "features" / "_images").exists()
    runs = []
    run = _work._Job.run_pieces  # what extraction calls (not _Job.run)

    def counted(job, a, b):
        runs.append(b - a)
        return run(job, a, b)

    monkeypatch.setattr(_work._Job, "run_pieces", counted)
    again = extract_features(spec, full, **kw)  # the memo: not even built
    assert runs == [] and torch.equal(again.features, first.features)
    part = load_probe("flickr8k:dev", n=10, data_dir=data_dir, progress=False)
    sub = extract_features(spec, part, **kw)
    assert runs == []
    rows = [full.ids.index(i) for i in part.ids]
    assert torch.equal(sub.features, first.features[rows])
    # and `train --cache-only` counts them as cached, but not other images
    from alignkit.errors import AlignkitError
    from alignkit.training.inputs import require_cached

    smaller = load_probe("flickr8k:dev", n=6, data_dir=data_dir, progress=False)
    require_cached([spec], smaller, cache=root)
    other = load_probe("flickr8k:test", n=6, data_dir=data_dir, progress=False)
    with pytest.raises(AlignkitError, match="cache_only=True: the features of"):
        require_cached([spec], other, cache=root)
