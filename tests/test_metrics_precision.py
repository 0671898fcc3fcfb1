"""Float32 inputs: every registered metric scores a representation against itself at its maximum.

Issue #8 item 4: RBF CKA of float32 ReLU features with themselves came out 1.00035 (and 0.99983 on
the features below) because its kernel sums, a small centred difference of n² entries near the
same value, were accumulated in float32.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignkit.metrics import METRICS


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def relu_features() -> torch.Tensor:
    """(500, 1280) float32 ReLU features of a 16-d latent: values up to ~7, every pairwise
    distance near the median, the case where float32 sums of the RBF kernel lose the centred part.
    The latent is low-dimensional so that SVCCA keeps few enough directions to be defined."""
    g = np.random.default_rng(0)
    z = g.standard_normal((500, 16)).astype(np.float32)
    w = g.standard_normal((16, 1280)).astype(np.float32)
    noise = 0.01 * g.standard_normal((500, 1280)).astype(np.float32)
    return torch.from_numpy(np.maximum(0.3 * z @ w + noise, 0.0))


MAXIMUM = 1.0  # every registered metric is 1 for identical inputs (test_metrics checks float64)


@pytest.mark.parametrize(
    "name, options",
    [(name, {}) for name in sorted(METRICS)] + [("rbf_cka", {"unbiased": True})],
)
def test_self_score_at_maximum_in_float32(name, options, relu_features):
    assert relu_features.dtype == torch.float32
    score = METRICS[name](relu_features, relu_features, **options)
    assert abs(score - MAXIMUM) <= 1e-6, score


def test_rbf_cka_float32_matches_float64_on_wide_relu_features(relu_features):
    # not only x with itself: a float32 pair scores what its float64 copy scores, to float32
    # precision of the distances (the sums are float64 either way)
    g = np.random.default_rng(1)
    y = relu_features + torch.from_numpy(0.5 * g.standard_normal(relu_features.shape)).float()
    s32 = METRICS["rbf_cka"](relu_features, y)
    s64 = METRICS["rbf_cka"](relu_features.double(), y.double())
    assert s32 == pytest.approx(s64, abs=1e-5)
