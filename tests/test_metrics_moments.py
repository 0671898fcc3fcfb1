"""The analytic permutation null of the CKA family against exhaustive enumeration and Monte Carlo.

At n = 7 all 5,040 re-pairings are enumerated: mean, variance and skewness must match exactly.
At larger n a 10,000-permutation Monte Carlo estimate is the reference, within its own error.
The scores of each re-pairing are computed here with dense n x n formulas, independently.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from alignkit.errors import AlignkitError
from alignkit.metrics import METRICS, analytic_null, permutation_null
from alignkit.metrics.moments import pattern_sums, raw_moment, shifted_trace_cube

VARIANTS = [
    ("linear_cka", {}),
    ("linear_cka_unbiased", {}),
    ("rbf_cka", {}),
    ("rbf_cka", {"unbiased": True}),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gram(a: np.ndarray, kind: str) -> np.ndarray:
    if kind == "linear":
        return a @ a.T
    d2 = ((a[:, None, :] - a[None, :, :]) ** 2).sum(-1)
    sigma2 = np.median(d2[np.triu_indices(a.shape[0], 1)])
    return np.exp(-d2 / (2 * sigma2))


def _dense_cka(k: np.ndarray, m: np.ndarray, unbiased: bool) -> float:
    n = k.shape[0]

    def hsic(a, b):
        if not unbiased:
            h = np.eye(n) - 1.0 / n
            return np.trace(a @ h @ b @ h)
        a, b = a - np.diag(np.diag(a)), b - np.diag(np.diag(b))
        one = np.ones(n)
        return (
            np.trace(a @ b)
            + (one @ a @ one) * (one @ b @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * one @ a @ b @ one
        )

    return float(hsic(k, m) / math.sqrt(hsic(k, k) * hsic(m, m)))


def _planted(n: int, seed: int = 0, shuffle: bool = False):
    g = np.random.default_rng(seed)
    z = g.standard_normal((n, 3))
    x = np.maximum(z @ g.standard_normal((3, 12)) + 0.7 * g.standard_normal((n, 12)), 0.0)
    y = np.tanh(z[:, :2] @ g.standard_normal((2, 9))) + 0.8 * g.standard_normal((n, 9))
    return x, (y[g.permutation(n)] if shuffle else y)


@pytest.mark.parametrize("name, options", VARIANTS)
def test_moments_equal_exhaustive_enumeration(name, options):
    n = 7
    x, y = _planted(n, seed=3)
    kind = "rbf" if name.startswith("rbf") else "linear"
    unbiased = name.endswith("unbiased") or options.get("unbiased", False)
    k, m = _gram(x, kind), _gram(y, kind)
    scores = np.array(
        [_dense_cka(k, m[np.ix_(p, p)], unbiased) for p in itertools.permutations(range(n))]
    )
    mean, std = scores.mean(), scores.std()
    skew = ((scores - mean) ** 3).mean() / std**3
    r = analytic_null(name, x, y, **options)
    assert r.method == "analytic-pearson3"
    assert r.mean == pytest.approx(mean, abs=1e-12)
    assert r.std == pytest.approx(std, rel=1e-9)
    assert r.skew == pytest.approx(skew, rel=1e-7, abs=1e-9)
    assert r.observed == pytest.approx(_dense_cka(k, m, unbiased), abs=1e-12)
    # p: the Pearson III tail at the observed score, against the exact enumerated tail
    assert r.p == pytest.approx(np.mean(scores >= r.observed - 1e-12), abs=0.1)


def test_unbiased_null_variance_is_distribution_free():
    # mean 0 and variance 2/(n(n-3)) whatever the features: two very different inputs
    for seed in (0, 1):
        x, y = _planted(50, seed=seed)
        r = analytic_null("linear_cka_unbiased", x ** (1 + 2 * seed), y)
        assert r.mean == 0.0
        assert r.std == pytest.approx(math.sqrt(2 / (50 * 47)), rel=1e-12)


def test_pattern_sums_give_the_first_two_moments_of_the_closed_form():
    # the generic index-pattern route reproduces E T and E T² of the closed form
    x, y = _planted(30, seed=5)
    h = np.eye(30) - 1 / 30
    a, b = h @ x @ x.T @ h, h @ y @ y.T @ h
    scale = math.sqrt(np.sum(a * a) * np.sum(b * b))
    r = analytic_null("linear_cka", x, y)
    first = raw_moment(pattern_sums(a, 1), pattern_sums(b, 1), 30, 1) / scale
    second = raw_moment(pattern_sums(a, 2), pattern_sums(b, 2), 30, 2) / scale**2
    assert first == pytest.approx(r.mean, rel=1e-10)
    assert second - first**2 == pytest.approx(r.std**2, rel=1e-8)


def test_trace_cube_of_a_shifted_kernel_equals_the_dense_product():
    # tr(B³) for B = K + u1ᵀ + 1uᵀ + c11ᵀ - diag(δ) from tr(K³) alone, against B's own n³
    # product: a random shift, the U-centring and the double centring of a ReLU kernel
    g = np.random.default_rng(4)
    n = 40
    x = np.maximum(g.standard_normal((n, 6)) + 0.5, 0.0)
    k = x @ x.T
    tr_k3 = float(np.sum(k * (k @ k)))
    r = k.sum(1) - np.diag(k)
    u_cent = -r / (n - 2)
    c_cent = r.sum() / ((n - 1) * (n - 2))
    shifts = [
        (g.standard_normal(n), float(g.standard_normal()), g.standard_normal(n)),
        (u_cent, c_cent, np.diag(k) + 2 * u_cent + c_cent),  # U-centring: zero diagonal
        (-k.mean(1), float(k.mean()), np.zeros(n)),  # HKH
    ]
    for u, c, delta in shifts:
        b = k + u[:, None] + u[None, :] + c - np.diag(delta)
        dense = float(np.sum(b * (b @ b)))
        assert shifted_trace_cube(k, tr_k3, u, c, delta) == pytest.approx(dense, rel=1e-10)
    # and the pattern sums take a given tr(A³) in place of their own product
    h = np.eye(n) - 1 / n
    a = h @ k @ h
    given = pattern_sums(a, 3, trace_cube=float(np.trace(a @ a @ a)))
    np.testing.assert_allclose(
        given, pattern_sums(a, 3), rtol=1e-9, atol=1e-9 * np.abs(given).max()
    )


def _agree_with_monte_carlo(r, mc, b):
    s = mc.samples
    se_mean = s.std(ddof=1) / math.sqrt(b)
    kurt = ((s - s.mean()) ** 4).mean() / s.var() ** 2
    se_std = s.std(ddof=1) * math.sqrt((kurt - 1) / (4 * b))
    assert abs(r.mean - s.mean()) < 4 * se_mean
    assert abs(r.std - s.std(ddof=1)) < 4 * se_std
    # p where the Monte Carlo p is resolvable (the shuffled pairing sits inside the null): the
    # Pearson III law is an approximation, so allow 0.02 on top of the Monte Carlo error
    assert 20 / b < mc.p < 1 - 20 / b
    assert abs(r.p - mc.p) < 4 * math.sqrt(mc.p * (1 - mc.p) / b) + 0.02


@pytest.mark.slow
@pytest.mark.parametrize("name, options", VARIANTS)
def test_moments_agree_with_10000_permutations_on_planted_features(name, options):
    x, y = _planted(80, seed=1, shuffle=True)
    r = analytic_null(name, x, y, **options)
    mc = permutation_null(name, x, y, n_permutations=10_000, seed=2, **options)
    _agree_with_monte_carlo(r, mc, 10_000)


def test_analytic_p_goes_beyond_one_over_b_plus_one():
    x, y = _planted(120, seed=2)
    r = analytic_null("linear_cka_unbiased", x, y)
    assert r.z > 10 and 0 < r.p < 1e-6  # a permutation null of B=100 could say 1/101 at best


def test_metrics_without_moments_say_so():
    assert {k for k, v in METRICS.items() if v.has_analytic_null} == {
        "linear_cka",
        "linear_cka_unbiased",
        "rbf_cka",
    }
    x, y = _planted(20)
    with pytest.raises(AlignkitError, match="'mutual_knn' has no analytic null .*permutation_null"):
        analytic_null("mutual_knn", x, y)


@pytest.mark.real
@pytest.mark.slow
def test_moments_agree_with_10000_permutations_on_flickr8k_features(data_dir):
    from alignkit.features import extract_features
    from alignkit.probes import load_probe

    probe = load_probe("flickr8k:test", n=200, data_dir=data_dir, progress=False)
    kw = {"batch_size": 50, "num_workers": 0, "device": "cpu", "progress": False}
    image = extract_features("torchvision:mobilenet_v2", probe, **kw).features
    text = extract_features("st:sentence-transformers/all-MiniLM-L6-v2", probe, **kw).features
    shuffled = text[torch.from_numpy(np.random.default_rng(0).permutation(200))]
    for name, options in VARIANTS:
        r = analytic_null(name, image, shuffled, **options)
        mc = permutation_null(name, image, shuffled, n_permutations=10_000, seed=1, **options)
        _agree_with_monte_carlo(r, mc, 10_000)
        true = analytic_null(name, image, text, **options)
        assert true.z > 5 and true.p < 1e-4  # the real pairing is far in the tail


def _mp_log10_upper(z: float, skew: float) -> float:
    """log10 P(X >= z) of the standardised Pearson type III law at 60 digits (mpmath): for
    skew g > 0, X = (G - a) / sqrt(a) with G ~ Gamma(a = 4 / g²); for g < 0 its mirror image;
    the normal law when g is NaN."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    if math.isnan(skew):
        return float(mpmath.log10(mpmath.erfc(mpmath.mpf(z) / mpmath.sqrt(2)) / 2))
    a = mpmath.mpf(4) / mpmath.mpf(skew) ** 2
    if skew > 0:
        upper = mpmath.gammainc(a, a + z * mpmath.sqrt(a), mpmath.inf, regularized=True)
    else:
        end = a - z * mpmath.sqrt(a)  # P(G <= a - z sqrt(a))
        if end <= 0:
            return -math.inf
        upper = mpmath.gammainc(a, 0, end, regularized=True)
    return float(mpmath.log10(upper))


@pytest.mark.parametrize(
    ("z", "skew"),
    [(3.0, 0.4), (40.0, 0.3), (140.0, 0.05), (1000.0, 0.2), (25.0, -0.05), (60.0, math.nan)],
)
def test_log10_p_is_finite_where_p_underflows_and_matches_the_law(z: float, skew: float):
    from alignkit.metrics.moments import log10_upper_p, upper_p

    p = upper_p(z, 0.0, 1.0, skew)
    got = float(log10_upper_p(p, z, skew))
    want = _mp_log10_upper(z, skew)
    assert got == pytest.approx(want, rel=1e-9)
    if p >= 1e-290:
        assert got == math.log10(p)  # the log of the very p the table shows
    else:
        assert p < 1e-290 and math.isfinite(got)  # p itself is (nearly) 0.0


def test_log10_p_is_minus_infinity_beyond_the_end_of_a_negatively_skewed_law():
    from alignkit.metrics.moments import log10_upper_p, upper_p

    z, skew = 50.0, -0.1  # the law ends at z = 2 / 0.1 = 20
    assert upper_p(z, 0.0, 1.0, skew) == 0.0
    assert log10_upper_p(0.0, z, skew) == -math.inf


def test_score_table_log10_p_resolves_pairs_whose_analytic_p_is_zero():
    from alignkit.metrics import score_pairs

    g = np.random.default_rng(0)
    x = g.standard_normal((200, 100))
    texts = {
        "planted": _planted(200, seed=3)[1],  # unrelated to x: an ordinary p
        "strong": x @ g.standard_normal((100, 100)) + 0.3 * g.standard_normal((200, 100)),
    }
    scores = score_pairs({"x": x}, texts, metrics=["linear_cka_unbiased"], progress=False)
    for row in scores.itertuples():
        r = analytic_null("linear_cka_unbiased", x, texts[row.text])
        assert row.p == r.p and row.null_method == "analytic-pearson3"
        assert row.log10_p == pytest.approx(_mp_log10_upper(r.z, r.skew), rel=1e-9)
    strong = scores.set_index("text").loc["strong"]
    assert strong["p"] == 0.0 and strong["log10_p"] < -800  # told apart from 0 (z 98: -872)
