"""Metrics on real features: Flickr8k images and captions through registry-shipped encoders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignkit.metrics import score_pairs


@pytest.fixture(scope="module")
def flickr_features(data_dir):
    from alignkit.features import extract_features
    from alignkit.probes import load_probe

    probe = load_probe("flickr8k:test", n=128, data_dir=data_dir, progress=False)
    kw = {"batch_size": 32, "num_workers": 0, "cache": False, "device": "cpu", "progress": False}
    image = extract_features("torchvision:mobilenet_v2", probe, **kw)
    text = extract_features("st:sentence-transformers/all-MiniLM-L6-v2", probe, **kw)
    control = extract_features("random:text-384", probe, **kw)
    return image, text, control


@pytest.mark.real
@pytest.mark.slow
def test_real_pairs_beat_their_null_and_a_random_control_does_not(flickr_features):
    image, text, control = flickr_features
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small problem: a second thread only waits on a shared machine
    try:
        df = score_pairs(
            [image],
            [text, control],
            ("linear_cka_unbiased", "linear_cka", "mutual_knn"),
            n_permutations=99,
            seed=0,
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    scores = df.set_index(["text", "metric"])
    real = scores.loc[text.encoder]
    rand = scores.loc[control.encoder]
    # paired images and captions share structure: every metric is far above its own null
    assert (real.p <= 0.02).all() and (real.z > 4).all()
    # random features of the captions share none: the null explains them
    assert (rand.p > 0.01).all() and (rand.z.abs() < 4).all()
    # the raw biased CKA of the random control is well above 0: the floor the null removes
    assert rand.loc["linear_cka", "score"] > 0.1
    assert abs(rand.loc["linear_cka_unbiased", "score"]) < 0.05
    assert rand.loc["mutual_knn", "chance"] == pytest.approx(10 / 127)
    assert np.isfinite(df.score).all()
