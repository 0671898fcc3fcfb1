"""Extraction with real pretrained weights on real Flickr8k rows (marker ``real``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alignkit.encoders import create_encoder
from alignkit.features import FeatureCache, extract_features
from alignkit.probes import load_probe

pytestmark = pytest.mark.real

MINILM = "st:sentence-transformers/all-MiniLM-L6-v2"
MOBILENET = "torchvision:mobilenet_v2"


@pytest.fixture(scope="module")
def minilm():
    return create_encoder(MINILM, device="cpu")


def test_cli_extract_minilm_flickr8k_then_cache_hit(data_dir: Path, tmp_path, capsys, minilm):
    from alignkit.cli import main

    argv = [
        "extract",
        "--encoder",
        MINILM,
        "--probe",
        "flickr8k:test",
        "--n",
        "200",
        "--data-dir",
        str(data_dir),
        "--cache",
        str(tmp_path),
        "--quiet",
    ]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    first = capsys.readouterr().out
    assert "200 rows x 384 extracted" in first
    [entry] = FeatureCache.at(tmp_path).list()  # --cache names the cache root
    assert (entry.encoder, entry.n, entry.dim) == (MINILM, 200, 384)
    assert entry.probe.startswith("flickr8k:test")

    with pytest.raises(SystemExit):
        main(argv)
    assert "200 rows x 384 from the cache" in capsys.readouterr().out
    # what the command stored is the model's embedding of each row's first caption
    probe = load_probe("flickr8k:test", n=200, data_dir=data_dir, progress=False)
    stored = FeatureCache.at(tmp_path).get(entry.key, ids=probe.ids)
    naive = minilm.encode([row.captions[0] for row in probe.rows[:8]])
    torch.testing.assert_close(stored.features[:8], naive, rtol=1e-4, atol=1e-5)
    assert torch.allclose(stored.features.norm(dim=1), torch.ones(200), atol=1e-4)  # ST normalises


def test_real_cache_hit_does_no_model_work(data_dir: Path, tmp_path, minilm, monkeypatch):
    probe = load_probe("flickr8k:test", n=64, data_dir=data_dir, progress=False)
    store = FeatureCache(tmp_path)
    first = extract_features(minilm, probe, cache=store, progress=False)
    monkeypatch.setattr(minilm, "_forward", lambda batch: pytest.fail("model ran on a cache hit"))
    second = extract_features(minilm, probe, cache=store, progress=False)
    assert torch.equal(first.features, second.features)


def test_real_mean_caption_policy(data_dir: Path, minilm):
    probe = load_probe("flickr8k:test", n=12, data_dir=data_dir, progress=False)
    fs = extract_features(
        minilm, probe, batch_size=5, caption_policy="mean", cache=False, progress=False
    )
    naive = torch.stack([minilm.encode(list(row.captions)).mean(0) for row in probe.rows])
    torch.testing.assert_close(fs.features, naive, rtol=1e-4, atol=1e-5)
    assert fs.features.norm(dim=1).max() < 1.0  # a mean of unit vectors is shorter


def test_real_image_features_with_workers(data_dir: Path):
    probe = load_probe("flickr8k:test", n=24, data_dir=data_dir, progress=False)
    enc = create_encoder(MOBILENET, device="cpu")
    fs = extract_features(enc, probe, batch_size=8, num_workers=2, cache=False, progress=False)
    assert fs.features.shape == (24, 1280) and fs.provenance["weights"] == enc.weights_identity()
    naive = enc.encode([row.load_image() for row in probe.rows[:8]])  # one batch, like the first
    torch.testing.assert_close(fs.features[:8], naive, rtol=1e-4, atol=1e-4)
    # different photos give different features; pooled ReLU features are non-negative
    assert (fs.features >= 0).all() and torch.cdist(fs.features, fs.features).triu(1).max() > 1
