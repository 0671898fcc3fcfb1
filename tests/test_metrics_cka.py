"""Linear CKA when the features are wider than the probe (issue #8 item 3).

The feature-space form builds d x d matrices (n = 64, d = 16,384 x 4,096: 9.6 s and 3.8 GB); the
Gram form gives the same value from n x n matrices. Values are checked against the dense
n x n formulas written here independently; the choice of form is checked by recording every
matrix product the library computes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from alignkit.metrics import linear_cka, permutation_null, score_pairs


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _LargestProduct(TorchFunctionMode):
    """Records the largest result (in entries) of any matrix product run inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.matmul, torch.Tensor.__matmul__, torch.mm, torch.Tensor.matmul):
            self.largest = max(self.largest, out.numel())
        return out


def _dense_cka(x: np.ndarray, y: np.ndarray, unbiased: bool) -> float:
    n = x.shape[0]
    k, m = x @ x.T, y @ y.T

    def hsic(a, b):
        if not unbiased:
            h = np.eye(n) - 1.0 / n
            return np.trace(a @ h @ b @ h)
        a, b = a - np.diag(np.diag(a)), b - np.diag(np.diag(b))
        one = np.ones(n)
        return (
            np.trace(a @ b)
            + one @ a @ one * (one @ b @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * one @ a @ b @ one
        ) / (n * (n - 3))

    return float(hsic(k, m) / np.sqrt(hsic(k, k) * hsic(m, m)))


@pytest.fixture(scope="module")
def wide():
    g = np.random.default_rng(0)
    n, d1, d2 = 40, 3000, 700
    z = g.standard_normal((n, 5))
    x = z @ g.standard_normal((5, d1)) + g.standard_normal((n, d1)) + 1.0
    y = np.tanh(z @ g.standard_normal((5, d2))) + 0.5 * g.standard_normal((n, d2))
    return x, y


@pytest.mark.parametrize("unbiased", [False, True])
def test_wide_features_score_in_gram_form(wide, unbiased):
    x, y = wide
    n = x.shape[0]
    with _LargestProduct() as mode:
        score = linear_cka(x, y, unbiased=unbiased)
    assert score == pytest.approx(_dense_cka(x, y, unbiased), abs=1e-10)
    # no d x d (or d1 x d2) matrix: the feature-space form would make 3000 x 3000 = 9e6 entries
    assert 0 < mode.largest <= n * n


def test_narrow_features_stay_in_feature_space():
    # n > d: the d x d form is the cheap one, and the value is the same
    g = np.random.default_rng(1)
    x, y = g.standard_normal((300, 20)), g.standard_normal((300, 30))
    with _LargestProduct() as mode:
        score = linear_cka(x, y)
    assert score == pytest.approx(_dense_cka(x, y, False), abs=1e-10)
    assert mode.largest <= 30 * 30


def test_wide_null_and_all_pairs_in_gram_form(wide):
    x, y = wide
    n = x.shape[0]
    with _LargestProduct() as mode:
        null = permutation_null("linear_cka", x, y, n_permutations=4, seed=2)
        table = score_pairs(
            {"x": x}, {"y": y}, ["linear_cka", "linear_cka_unbiased"], progress=False
        )
    assert mode.largest <= n * n
    rng = np.random.default_rng(2)
    for b in range(4):
        assert null.samples[b] == pytest.approx(
            _dense_cka(x, y[rng.permutation(n)], False), abs=1e-10
        )
    by_metric = table.set_index("metric")["score"]
    assert by_metric["linear_cka"] == pytest.approx(_dense_cka(x, y, False), abs=1e-10)
    assert by_metric["linear_cka_unbiased"] == pytest.approx(_dense_cka(x, y, True), abs=1e-10)
