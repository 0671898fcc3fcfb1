"""alignkit.metrics against naive formulas written here independently, and registry properties.

Naive versions use explicit n x n matrices (H = I - 11ᵀ/n, dense Gram matrices) and Python sets for
neighbours; the library computes in feature space / blockwise and must agree to 1e-6 in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignkit.errors import AlignkitError
from alignkit.metrics import (
    METRICS,
    cknna,
    get_metric,
    linear_cka,
    minibatch_cka,
    mutual_knn,
    mutual_knn_chance,
    permutation_null,
    rbf_cka,
    subsample_interval,
    svcca,
)
from alignkit.metrics.rbf import _median_sq_dist


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small problems: with other jobs on the 2 cores, a second OpenMP thread only adds waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _latent_pair(n: int = 120, d1: int = 24, d2: int = 36, seed: int = 0, noise: float = 1.0):
    """Two float64 views of a shared 6-d latent, with view-specific noise and an offset."""
    g = np.random.default_rng(seed)
    z = g.standard_normal((n, 6))
    x = z @ g.standard_normal((6, d1)) + noise * g.standard_normal((n, d1)) + 3.0
    y = np.tanh(z @ g.standard_normal((6, d2))) + 0.5 * noise * g.standard_normal((n, d2)) - 1.0
    return x, y


# ----------------------------------------------------------------------------------------------
# naive formulas (dense n x n)


def _h(n: int) -> np.ndarray:
    return np.eye(n) - np.ones((n, n)) / n


def _hsic_biased(k: np.ndarray, m: np.ndarray) -> float:
    h = _h(k.shape[0])
    return float(np.trace(k @ h @ m @ h))


def _hsic_unbiased(k: np.ndarray, m: np.ndarray) -> float:
    """Song et al. (2012) eq. 5, literally: tr(K̃L̃) with the matrix product (asymmetric-safe)."""
    n = k.shape[0]
    kt, lt = k.copy(), m.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    value = (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ kt @ lt @ one)
    )
    return float(value / (n * (n - 3)))


def _cka(k: np.ndarray, m: np.ndarray, hsic) -> float:
    return hsic(k, m) / math.sqrt(hsic(k, k) * hsic(m, m))


def _reference_code_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """The reference code's formulation: centre each Gram matrix with an explicit H, then
    sum(centred K * centred L) / sqrt(sum(centred K * centred K) * sum(centred L * centred L))."""

    def centering(k):
        h = _h(k.shape[0])
        return h @ k @ h

    def linear_hsic(a, b):
        return np.sum(centering(a @ a.T) * centering(b @ b.T))

    return float(linear_hsic(x, y) / (np.sqrt(linear_hsic(x, x)) * np.sqrt(linear_hsic(y, y))))


def _rbf_gram(x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    sigma2 = np.median(d2[np.triu_indices(x.shape[0], 1)]) * scale**2
    return np.exp(-d2 / (2 * sigma2))


def _knn_sets(x: np.ndarray, k: int) -> list[set[int]]:
    """Cosine neighbours by sorting (−similarity, index) in Python; self excluded."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xn @ xn.T
    out = []
    for i in range(x.shape[0]):
        order = sorted((j for j in range(x.shape[0]) if j != i), key=lambda j: (-s[i, j], j))
        out.append(set(order[:k]))
    return out


def _naive_mutual_knn(x, y, k):
    a, b = _knn_sets(x, k), _knn_sets(y, k)
    return float(np.mean([len(a[i] & b[i]) / k for i in range(len(a))]))


def _naive_cknna(x, y, k):
    """Huh et al. CKNNA as platonic-rep computes it, from dense masks (written independently)."""
    n = x.shape[0]
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    kx, ly = xn @ xn.T, yn @ yn.T
    a, b = _knn_sets(x, k), _knn_sets(y, k)
    mx = np.zeros((n, n))
    my = np.zeros((n, n))
    for i in range(n):
        mx[i, list(a[i])] = 1
        my[i, list(b[i])] = 1
    m = mx * my
    return _hsic_unbiased(m * kx, m * ly) / math.sqrt(
        _hsic_unbiased(mx * kx, mx * kx) * _hsic_unbiased(my * ly, my * ly)
    )


def _naive_svcca(x, y, threshold=0.99, dims=None):
    def reduce(a):
        a = a - a.mean(0)
        u, s, _ = np.linalg.svd(a, full_matrices=False)
        r = dims or int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), threshold) + 1)
        return u[:, :r] * s[:r]

    a, b = reduce(x), reduce(y)

    # classic CCA: singular values of Σaa^{-1/2} Σab Σbb^{-1/2}
    def inv_sqrt(c):
        w, v = np.linalg.eigh(c)
        return v @ np.diag(w**-0.5) @ v.T

    caa, cbb, cab = a.T @ a, b.T @ b, a.T @ b
    rho = np.linalg.svd(inv_sqrt(caa) @ cab @ inv_sqrt(cbb), compute_uv=False)
    return float(rho.mean())


# ----------------------------------------------------------------------------------------------
# each metric against its naive formula, float64, 1e-6


@pytest.fixture(params=["one block", "many blocks"])
def blocks(request, monkeypatch):
    """Run blockwise kernels with the default block size and with blocks of a few rows."""
    if request.param == "many blocks":
        monkeypatch.setattr("alignkit.metrics._engine.BLOCK_ELEMENTS", 7 * 90)
    return request.param


def test_linear_cka_matches_dense_formulas():
    x, y = _latent_pair()
    kx, ly = x @ x.T, y @ y.T
    biased = linear_cka(x, y)
    assert biased == pytest.approx(_cka(kx, ly, _hsic_biased), abs=1e-6)
    assert biased == pytest.approx(_reference_code_linear_cka(x, y), abs=1e-6)
    # the unbiased estimator on the raw (uncentred) Gram matrices: its translation invariance is
    # what lets the library centre columns first
    assert linear_cka(x, y, unbiased=True) == pytest.approx(_cka(kx, ly, _hsic_unbiased), abs=1e-6)
    assert 0.3 < linear_cka(x, y, unbiased=True) < biased < 1  # data share structure; sanity


def test_rbf_cka_matches_dense_formula(blocks):
    x, y = _latent_pair(n=100)
    for scale in (1.0, 0.5):
        kx, ly = _rbf_gram(x, scale), _rbf_gram(y, scale)
        assert rbf_cka(x, y, sigma_scale=scale) == pytest.approx(
            _cka(kx, ly, _hsic_biased), abs=1e-6
        )
        assert rbf_cka(x, y, sigma_scale=scale, unbiased=True) == pytest.approx(
            _cka(kx, ly, _hsic_unbiased), abs=1e-6
        )


@pytest.mark.parametrize("duplicates", [False, True])
def test_exact_median_in_bounded_memory_matches_numpy(duplicates, blocks):
    g = np.random.default_rng(3)
    x = g.standard_normal((300, 7))
    if duplicates:  # many zero distances and repeated values stress the interval refinement
        x = x[g.integers(0, 40, 300)]
    xt = torch.from_numpy(x - x.mean(0))
    sq = xt.square().sum(1)
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)[np.triu_indices(300, 1)]
    expected = np.median(d2)
    for max_values in (1 << 24, 5000, 64):  # in-memory select, then histogram passes
        assert _median_sq_dist(xt, sq, max_values=max_values, bins=256) == pytest.approx(
            expected, rel=1e-9, abs=1e-12
        )


@pytest.mark.parametrize("k", [1, 5, 10])
def test_mutual_knn_matches_python_sets(k, blocks):
    x, y = _latent_pair(n=90)
    assert mutual_knn(x, y, k=k) == pytest.approx(_naive_mutual_knn(x, y, k), abs=1e-12)


def test_mutual_knn_breaks_ties_by_index(blocks):
    # rows with four ones out of 12: every cosine is an exact multiple of 1/4, so ties are exact
    # in any summation order; the smaller index must win at the k-th place
    g = np.random.default_rng(5)
    x = np.zeros((80, 12))
    y = np.zeros((80, 12))
    for i in range(80):
        x[i, g.choice(12, 4, replace=False)] = 1
        y[i, g.choice(12, 4, replace=False)] = 1
    for k in (3, 7):
        assert mutual_knn(x, y, k=k) == pytest.approx(_naive_mutual_knn(x, y, k), abs=1e-12)
        assert cknna(x, y, k=k) == pytest.approx(_naive_cknna(x, y, k), abs=1e-6)


@pytest.mark.parametrize("k", [3, 10])
def test_cknna_matches_dense_masks(k, blocks):
    x, y = _latent_pair(n=90)
    assert cknna(x, y, k=k) == pytest.approx(_naive_cknna(x, y, k), abs=1e-6)


def test_svcca_matches_classic_cca():
    x, y = _latent_pair(n=200, d1=10, d2=12)
    assert svcca(x, y) == pytest.approx(_naive_svcca(x, y), abs=1e-6)
    assert svcca(x, y, threshold=0.5) == pytest.approx(_naive_svcca(x, y, threshold=0.5), abs=1e-6)
    assert svcca(x, y, dims=3) == pytest.approx(_naive_svcca(x, y, dims=3), abs=1e-6)
    assert svcca(x, y, dims=3) != pytest.approx(svcca(x, y), abs=1e-3)


def test_minibatch_cka_matches_batch_average_and_full_set():
    x, y = _latent_pair(n=200)
    batches = [slice(i, i + 50) for i in range(0, 200, 50)]
    kl = np.mean([_hsic_unbiased(x[b] @ x[b].T, y[b] @ y[b].T) for b in batches])
    kk = np.mean([_hsic_unbiased(x[b] @ x[b].T, x[b] @ x[b].T) for b in batches])
    ll = np.mean([_hsic_unbiased(y[b] @ y[b].T, y[b] @ y[b].T) for b in batches])
    assert minibatch_cka(x, y, batch_size=50) == pytest.approx(kl / math.sqrt(kk * ll), abs=1e-6)
    # one batch of all rows is the unbiased CKA of the whole set
    assert minibatch_cka(x, y, batch_size=200) == pytest.approx(
        linear_cka(x, y, unbiased=True), abs=1e-10
    )


# ----------------------------------------------------------------------------------------------
# properties over the whole registry


@pytest.fixture(scope="module")
def pair():
    return _latent_pair(n=150, d1=20, d2=24, seed=1)


def _reordering(metric, n: int, g: np.random.Generator) -> np.ndarray:
    """A reordering of the rows the metric must ignore: any one, or (held-out metrics, whose
    folds are row positions) one that keeps every position in its fold."""
    if metric.row_groups is None:
        return g.permutation(n)
    labels, rows = metric.row_groups(n, metric.defaults), np.arange(n)
    for label in np.unique(labels):
        where = np.nonzero(labels == label)[0]
        rows[where] = g.permutation(where)
    return rows


@pytest.mark.parametrize("name", sorted(METRICS))
def test_registry_properties(name, pair):
    metric = METRICS[name]
    x, y = pair
    g = np.random.default_rng(2)
    score = metric(x, y)
    assert metric(x, x) == pytest.approx(1.0, abs=1e-9)
    if metric.symmetric:
        assert metric(y, x) == pytest.approx(score, abs=1e-9)
    rows = _reordering(metric, x.shape[0], g)
    assert metric(x[rows], y[rows]) == pytest.approx(score, abs=1e-9)
    q, _ = np.linalg.qr(g.standard_normal((x.shape[1], x.shape[1])))
    transformed = {
        "rotation": x @ q,
        "scaling": 3.7 * x,
        "translation": x + g.standard_normal(x.shape[1]) * 5,
    }
    for kind, x2 in transformed.items():
        if kind in metric.invariances:
            assert metric(x2, y) == pytest.approx(score, abs=1e-8), kind
    # a shuffled pairing is not significant, and sits at the analytic chance level where one exists
    shuffled = y[g.permutation(y.shape[0])]
    null = permutation_null(metric, x, shuffled, n_permutations=30, seed=4)
    assert null.p == pytest.approx((1 + np.sum(null.samples >= null.observed)) / 31)
    # (p >= 1/31 for any input: the shuffled pairing must sit inside its null, not at the floor)
    assert abs(null.z) < 3 and null.p >= 3 / 31, (null.z, null.p)
    assert score > null.mean + 5 * null.std  # the true pairing is significant
    true = permutation_null(metric, x, y, n_permutations=30, seed=4)
    assert true.p == pytest.approx(1 / 31)  # ... and beats every one of the 30 permutations
    if metric.chance is not None:
        chance = metric.chance(x.shape[0], metric.defaults)
        assert abs(null.observed - chance) < 5 * null.std


def test_translation_changes_cosine_metrics(pair):
    # the invariance lists are honest: cosine neighbourhoods are about the origin
    x, y = pair
    shifted = x + 50.0
    assert mutual_knn(shifted, y) != pytest.approx(mutual_knn(x, y), abs=1e-3)


def test_unknown_metric_lists_choices():
    with pytest.raises(
        AlignkitError,
        match="unknown metric 'cka'; expected one of: cca_alignability, cknna, linear_cka",
    ):
        get_metric("cka")


# ----------------------------------------------------------------------------------------------
# the floor, chance levels, calibration


def test_biased_cka_floor_and_unbiased_zero_for_independent_gaussians():
    g = np.random.default_rng(0)
    x = g.standard_normal((1024, 768)).astype(np.float32)
    y = g.standard_normal((1024, 768)).astype(np.float32)
    assert 0.40 < linear_cka(x, y) < 0.46
    assert abs(linear_cka(x, y, unbiased=True)) < 0.01


def test_mutual_knn_chance_level_by_simulation():
    # the exact expectation under a random pairing is k/(n-1); 400 permutations, 4 standard errors
    x, y = _latent_pair(n=200, seed=7)
    null = permutation_null("mutual_knn", x, y, n_permutations=400, seed=1, k=10)
    assert null.chance == pytest.approx(10 / 199)
    assert abs(null.mean - mutual_knn_chance(200, 10)) < 4 * null.std / math.sqrt(400)


def test_permutation_null_p_value_and_z():
    x, y = _latent_pair(n=100)
    r = permutation_null("linear_cka_unbiased", x, y, n_permutations=49, seed=0)
    assert r.samples.shape == (49,)
    assert r.p == pytest.approx((1 + np.sum(r.samples >= r.observed)) / 50)
    assert r.p == pytest.approx(1 / 50)
    assert r.z == pytest.approx((r.observed - r.samples.mean()) / r.samples.std(ddof=1))
    assert abs(r.mean) < 0.05  # unbiased CKA null is centred near 0
    # the null uses the seed's permutations: recompute a few samples from scratch
    rng = np.random.default_rng(0)
    for b in range(3):
        assert r.samples[b] == pytest.approx(
            linear_cka(x, y[rng.permutation(100)], unbiased=True), abs=1e-12
        )


@pytest.mark.parametrize("d1, d2", [(24, 36), (150, 120)])
@pytest.mark.parametrize("name", ["linear_cka", "linear_cka_unbiased", "rbf_cka"])
def test_null_samples_match_dense_formulas_in_feature_and_gram_space(name, d1, d2):
    # (150, 120) at n=100 sends linear CKA's permuted cross terms through the cached (n, n)
    # Gram matrices (128·n < d1·d2); (24, 36) keeps them in feature space. RBF CKA always
    # caches its kernels at this n. Each sample must equal the dense formula on y[perm].
    from alignkit.metrics.cka import _gram_is_cheaper

    assert _gram_is_cheaper(100, d1 * d2) == (d1 * d2 > 128 * 100)
    x, y = _latent_pair(n=100, d1=d1, d2=d2)
    r = permutation_null(name, x, y, n_permutations=5, seed=3)
    hsic = _hsic_unbiased if name == "linear_cka_unbiased" else _hsic_biased
    gram = _rbf_gram if name == "rbf_cka" else (lambda a: a @ a.T)
    rng = np.random.default_rng(3)
    for b in range(5):
        yp = y[rng.permutation(100)]
        assert r.samples[b] == pytest.approx(_cka(gram(x), gram(yp), hsic), abs=1e-9)


def test_subsample_interval_is_the_delete_d_jackknife_t_interval():
    # recomputed here from its definition: subset scores on the seed's subsets, their variance
    # scaled by m/(n-m), a t quantile on S-1 degrees of freedom, around the full-n score
    from scipy.stats import t

    x, y = _latent_pair(n=120)
    low, high = subsample_interval(
        "linear_cka", x, y, n_subsamples=40, fraction=0.7, level=0.9, seed=3
    )
    rng = np.random.default_rng([3, 1])
    scores = [
        linear_cka(x[r], y[r])
        for r in (np.sort(rng.choice(120, 84, replace=False)) for _ in range(40))
    ]
    half = t.ppf(0.95, 39) * math.sqrt(84 / 36 * np.var(scores, ddof=1))
    full = linear_cka(x, y)
    assert (low, high) == pytest.approx((full - half, full + half), abs=1e-12)


# ----------------------------------------------------------------------------------------------
# dtypes and devices of the inputs


@pytest.mark.parametrize("name", sorted(METRICS))
def test_float32_close_to_float64(name):
    x, y = _latent_pair(n=200, seed=11)
    metric = METRICS[name]
    # a float32 rounding can swap a borderline neighbour; RBF kernels are float32 entries summed
    # with centring cancellations (block sums stay in the input dtype for speed)
    tol = {"mutual_knn": 2e-3, "cknna": 2e-3, "rbf_cka": 1e-4}.get(name, 1e-5)
    s64 = metric(torch.from_numpy(x), torch.from_numpy(y))
    s32 = metric(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    assert s32 == pytest.approx(s64, abs=tol)
    assert metric(x.astype(np.float16), y.astype(np.float16)) == pytest.approx(s64, abs=0.05)


# ----------------------------------------------------------------------------------------------
# bad input: one-line errors that say what was expected and what was got


def _one_line_error(fn, *args, match, **kwargs):
    with pytest.raises(AlignkitError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_bad_inputs_are_one_line_errors():
    x, y = _latent_pair(n=50)
    _one_line_error(linear_cka, x, y[:49], match="same probe rows: got 50 rows and 49 rows")
    bad = x.copy()
    bad[[3, 7], 0] = np.nan
    bad[9, 2] = np.inf
    _one_line_error(
        linear_cka, bad, y, match=r"x must be finite: 3 of 50 rows hold NaN or Inf \(first: row 3\)"
    )
    _one_line_error(mutual_knn, x, bad, match="y must be finite: 3 of 50 rows")
    const = np.ones_like(x)
    _one_line_error(linear_cka, const, y, match="x is a constant representation")
    _one_line_error(linear_cka, x, const, unbiased=True, match="y is a constant representation")
    _one_line_error(rbf_cka, const, y, match="median squared distance")
    _one_line_error(svcca, x, const, match="y is a constant representation")
    _one_line_error(linear_cka, x[:3], y[:3], unbiased=True, match="at least 4 rows: got n=3")
    _one_line_error(cknna, x[:3], y[:3], k=1, match="at least 4 rows: got n=3")
    _one_line_error(
        mutual_knn, x, y, k=50, match="k must be smaller than the number of rows .*got k=50, n=50"
    )
    _one_line_error(mutual_knn, x, y, k=0, match="k must be a positive integer")
    _one_line_error(
        linear_cka,
        x[:, :, None],
        y,
        match=r"x must be a 2-D \(n, d\) feature matrix: got shape \(50, 24, 1\)",
    )
    _one_line_error(linear_cka, [[1.0]], y, match="x must be a torch tensor or numpy array")
    zero = x.copy()
    zero[4] = 0
    _one_line_error(mutual_knn, zero, y, match="x has 1 of 50 rows that are all zeros")
    _one_line_error(rbf_cka, x, y, sigma_scale=-1, match="sigma_scale must be a positive number")
    _one_line_error(
        permutation_null,
        "linear_cka",
        x,
        y,
        n_permutations=0,
        match="n_permutations must be an integer >= 1",
    )
    _one_line_error(
        permutation_null,
        "mutual_knn",
        x,
        y,
        sigma_scale=2,
        match="metric 'mutual_knn' takes options",
    )


def test_mutual_knn_at_the_largest_k_is_one():
    x, y = _latent_pair(n=30)
    assert mutual_knn(x, y, k=29) == 1.0
