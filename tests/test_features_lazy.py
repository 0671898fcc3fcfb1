"""A cache hit without building the encoder (issue 10, item 11): the cache remembers which entry a
cheap identity of the spec, its options and its weight files led to, and the encoder is built only
on a miss. Different weights must still give different entries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from _cli import run_cli

from alignkit.encoders.identity import encoder_identity
from alignkit.features import FeatureCache, cached_features, extract_features
from alignkit.probes import load_probe


@pytest.fixture
def no_build(monkeypatch):
    """Make building any encoder fail loudly: what runs after this must not build one."""

    def boom(spec, **options):
        raise AssertionError(f"create_encoder({spec!r}) was called on a cached run")

    def arm():
        monkeypatch.setattr("alignkit.encoders.create_encoder", boom)

    return arm


def test_cli_extract_rerun_does_not_build_the_encoder(tmp_path, capsys, no_build):
    argv = ["extract", "-e", "random:text-384", "--probe", "synthetic", "--n", "8", "--quiet"]
    argv += ["--cache", str(tmp_path)]
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and "extracted" in out, err
    no_build()
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "from the cache (encoder not built)" in out


def test_rank_encoders_rerun_does_not_build_any_encoder(tmp_path, capsys, no_build):
    argv = ["rank-encoders", "-v", "random:image-512", "-t", "random:text-384"]
    argv += ["--probe", "synthetic", "--n", "40", "--cache", str(tmp_path / "c"), "--quiet"]
    argv += ["--permutations", "0", "--subsamples", "0"]
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    no_build()
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err


def _weights(path: Path, seed: int) -> Path:
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.mobilenet_v3_small(weights=None)
    torch.save(model.state_dict(), path)
    return path


def test_different_weight_files_never_share_an_entry(tmp_path, monkeypatch):
    probe = load_probe("synthetic", n=6, progress=False)
    store = FeatureCache(tmp_path / "features")
    a, b = _weights(tmp_path / "a.pt", 1), _weights(tmp_path / "b.pt", 2)
    spec = "torchvision:mobilenet_v3_small"

    def run(weights: Path):
        return extract_features(
            spec,
            probe,
            options={"weights": str(weights)},
            cache=store,
            batch_size=3,
            num_workers=0,
            progress=False,
        )

    fa, fb = run(a), run(b)
    assert encoder_identity(spec, weights=str(a)) != encoder_identity(spec, weights=str(b))
    assert fa.provenance["cache_key"] != fb.provenance["cache_key"]
    assert not torch.equal(fa.features, fb.features)
    assert len(store.list()) == 2

    # both are now hits that build nothing
    built = []
    import alignkit.encoders as encoders

    real = encoders.create_encoder
    monkeypatch.setattr(
        "alignkit.encoders.create_encoder", lambda *a_, **k: built.append(a_) or real(*a_, **k)
    )
    assert torch.equal(run(a).features, fa.features) and torch.equal(run(b).features, fb.features)
    assert built == []

    # new content at the same path (a fine-tuned checkpoint saved over the old one) is a miss:
    # the encoder is built and the features are those of the new weights
    _weights(a, 3)
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 1_000_000_000))
    fc = run(a)
    assert built == [(spec,)]
    assert fc.provenance["cache_key"] not in (
        fa.provenance["cache_key"],
        fb.provenance["cache_key"],
    )
    assert not torch.equal(fc.features, fa.features)


def test_a_stale_memo_costs_a_build_not_a_wrong_answer(tmp_path):
    probe = load_probe("synthetic", n=6, progress=False)
    store = FeatureCache(tmp_path / "features")
    first = extract_features("random:text-384", probe, cache=store, progress=False)
    assert cached_features("random:text-384", probe, cache=store) is not None
    store.clear(first.provenance["cache_key"])  # the entry goes, the memo stays behind
    assert cached_features("random:text-384", probe, cache=store) is None
    again = extract_features("random:text-384", probe, cache=store, progress=False)
    assert torch.equal(again.features, first.features)
    # another seed is another lookup: never the first seed's entry
    other = cached_features("random:text-384", probe, options={"seed": 1}, cache=store)
    assert other is None


def test_hub_models_have_no_cheap_identity_while_the_hub_is_reachable(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert encoder_identity("hf:facebook/dinov2-base") is None  # the hub may hold a newer one
    assert encoder_identity("random:image-512") is not None


@pytest.mark.real
def test_real_registry_encoder_rerun_builds_nothing(tmp_path, capsys, no_build, data_dir):
    argv = ["extract", "-e", "torchvision:mobilenet_v2", "--probe", "flickr8k:test", "--n", "8"]
    argv += ["--cache", str(tmp_path), "--quiet", "--batch-size", "8"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and "extracted" in out, err
    no_build()
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and "from the cache (encoder not built)" in out, err
