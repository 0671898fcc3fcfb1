"""Held-out closed-form alignability (issue 19 item 1) against naive float64 loops over folds.

The naive versions are written here from the definitions: a PCA by numpy's SVD, the folds from
the documented rule, ridge by ``numpy.linalg.lstsq`` on the penalty-augmented system with an
explicit hat matrix for GCV, Procrustes by ``scipy.linalg.orthogonal_procrustes``, CCA from the
whitened cross-covariance, and ranks by counting. The library works in eigenbases of downdated
scatter matrices; both must give the same ranks, so the scores agree to 1e-9.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from alignkit.errors import AlignkitError
from alignkit.metrics import METRICS, permutation_null, score_pairs
from alignkit.metrics.alignability import (
    PENALTIES,
    alignability_chance,
    cca_alignability,
    procrustes_alignability,
    ridge_alignability,
)

NAMES = ("ridge_alignability", "procrustes_alignability", "cca_alignability")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pair(n=120, d1=40, d2=30, latent=5, noise=1.0, seed=0):
    g = np.random.default_rng(seed)
    z = g.standard_normal((n, latent))
    x = z @ g.standard_normal((latent, d1)) + noise * g.standard_normal((n, d1)) + 2.0
    y = np.tanh(z @ g.standard_normal((latent, d2))) + noise * g.standard_normal((n, d2)) - 1.0
    return x, y


# ----------------------------------------------------------------------------------------------
# naive float64 loops


def _pca(a, dims):
    a = a - a.mean(0)
    if dims is None or a.shape[1] <= dims:
        return a
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    return u[:, :dims] * s[:dims]


def _folds(n, k, seed):
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(order[f::k]) for f in range(k)]


def _rr_rows(sim):
    """Σ over rows of 1/rank of the diagonal entry, ties against the query, by counting."""
    total = 0.0
    for i in range(sim.shape[0]):
        total += 1.0 / sum(1 for j in range(sim.shape[1]) if sim[i, j] >= sim[i, i])
    return total


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def _ridge_gcv(a, b):
    """(W, λ) of ridge b ~ a (both centred), λ minimising GCV over the grid."""
    n_t, r = a.shape
    best = None
    for alpha in PENALTIES:
        lam = alpha * np.sum(a**2) / r
        aug_a = np.vstack([a, math.sqrt(lam) * np.eye(r)])
        aug_b = np.vstack([b, np.zeros((r, b.shape[1]))])
        w = np.linalg.lstsq(aug_a, aug_b, rcond=None)[0]
        hat = a @ np.linalg.solve(a.T @ a + lam * np.eye(r), a.T)
        room = n_t - 1 - np.trace(hat)
        gcv = np.sum((b - a @ w) ** 2) / room**2 if room > 0 else math.inf
        if best is None or gcv < best[0]:
            best = (gcv, w, lam)
    return best[1], best[2]


def _naive(fit, x, y, folds=5, dims=256, seed=0):
    za, zb = _pca(x, dims), _pca(y, dims)
    n = x.shape[0]
    total = 0.0
    for held in _folds(n, folds, seed):
        train = np.setdiff1d(np.arange(n), held)
        ma, mb = za[train].mean(0), zb[train].mean(0)
        a, b = za[train] - ma, zb[train] - mb
        ta, tb = za[held] - ma, zb[held] - mb
        if fit == "ridge":
            wab, _ = _ridge_gcv(a, b)
            wba, _ = _ridge_gcv(b, a)
            total += _rr_rows(_cos(ta @ wab, tb)) + _rr_rows(_cos(tb @ wba, ta))
        elif fit == "procrustes":
            w = min(a.shape[1], b.shape[1], len(train) - 1)
            va = np.linalg.svd(a, full_matrices=False)[2][:w].T  # top-w training PCA
            vb = np.linalg.svd(b, full_matrices=False)[2][:w].T
            rot, _ = scipy.linalg.orthogonal_procrustes(a @ va, b @ vb)
            sim = _cos(ta @ va @ rot, tb @ vb)
            total += _rr_rows(sim) + _rr_rows(sim.T)
        else:
            _, lx = _ridge_gcv(a, b)
            _, ly = _ridge_gcv(b, a)

            def inv_sqrt(c):
                e, v = np.linalg.eigh(c)
                return v @ np.diag(e**-0.5) @ v.T

            sa = inv_sqrt(a.T @ a + lx * np.eye(a.shape[1]))
            sb = inv_sqrt(b.T @ b + ly * np.eye(b.shape[1]))
            u, rho, vt = np.linalg.svd(sa @ a.T @ b @ sb, full_matrices=False)
            sim = _cos(ta @ sa @ u * np.sqrt(rho), tb @ sb @ vt.T * np.sqrt(rho))
            total += _rr_rows(sim) + _rr_rows(sim.T)
    return total / (2 * n)


# ----------------------------------------------------------------------------------------------
# the library against the loops


FUNCTIONS = {
    "ridge": ridge_alignability,
    "procrustes": procrustes_alignability,
    "cca": cca_alignability,
}


@pytest.mark.parametrize("fit", sorted(FUNCTIONS))
@pytest.mark.parametrize(
    "shape, dims, folds",
    [
        ((120, 40, 30), 256, 5),  # no reduction
        ((120, 40, 30), 12, 5),  # PCA from the (d, d) scatter
        ((60, 80, 20), 15, 3),  # d > n: PCA from the (n, n) Gram
        ((101, 9, 14), None, 4),  # unequal fold sizes
    ],
)
def test_matches_naive_loop_over_folds(fit, shape, dims, folds):
    n, d1, d2 = shape
    x, y = _pair(n, d1, d2, seed=n + d1)
    got = FUNCTIONS[fit](x, y, folds=folds, dims=dims, fold_seed=3)
    want = _naive(fit, x, y, folds=folds, dims=dims, seed=3)
    assert got == pytest.approx(want, abs=1e-9)
    assert got != pytest.approx(FUNCTIONS[fit](x, y, folds=folds, dims=dims, fold_seed=4), abs=1e-6)


def test_gcv_picks_a_penalty_inside_the_grid_for_noisy_data():
    # a regression with noise has an interior GCV optimum; a grid edge would mean the grid is
    # too narrow (and the naive loop's lstsq-with-hat-matrix path would not be exercised)
    x, y = _pair(200, 30, 20, noise=3.0)
    a, b = x[:160] - x[:160].mean(0), y[:160] - y[:160].mean(0)
    _, lam = _ridge_gcv(a, b)
    alphas = lam / (np.sum(a**2) / a.shape[1])
    assert PENALTIES[0] < alphas < PENALTIES[-1]


# ----------------------------------------------------------------------------------------------
# signal, chance and the null


def test_chance_is_the_mean_reciprocal_rank_of_a_random_ranking():
    # H_m / m per fold: 103 rows in 5 folds of 21, 21, 21, 20, 20
    harmonic = {m: sum(1 / r for r in range(1, m + 1)) for m in (20, 21)}
    want = (3 * harmonic[21] + 2 * harmonic[20]) / 103
    assert alignability_chance(103, 5) == pytest.approx(want, abs=1e-15)
    assert METRICS["ridge_alignability"].chance_level(103) == pytest.approx(want, abs=1e-15)


def _rr_sd(m: int) -> float:
    """Standard deviation of 1/R for R uniform on 1..m."""
    r = np.arange(1, m + 1)
    return float(np.sqrt(np.mean(1.0 / r**2) - np.mean(1.0 / r) ** 2))


@pytest.mark.parametrize("name", NAMES)
def test_planted_linear_signal_far_above_chance_and_shuffled_at_chance(name):
    g = np.random.default_rng(8)
    n = 400
    x = g.standard_normal((n, 50))
    y = x @ g.standard_normal((50, 30)) + 2.0 * g.standard_normal((n, 30))
    metric = METRICS[name]
    chance = metric.chance_level(n)
    # standard error of a mean of n reciprocal ranks, each uniform over m = 80 held-out rows:
    # averaging the two directions of one row cannot raise it (Var((a+b)/2) <= Var a)
    se = _rr_sd(n // 5) / math.sqrt(n)
    assert metric(x, y) > chance + 20 * se
    assert metric(x, y) > 0.5
    for seed in range(3):
        shuffled = y[np.random.default_rng(seed).permutation(n)]
        assert abs(metric(x, shuffled) - chance) < 4 * se, seed


@pytest.mark.parametrize("name", NAMES)
def test_null_samples_are_the_metric_on_the_permuted_pairing(name):
    # the cross term reuses x's per-fold moments and recomputes y's; each sample must equal the
    # metric recomputed from scratch on y[perm]
    x, y = _pair(90, 12, 16)
    r = permutation_null(name, x, y, n_permutations=4, seed=5, dims=8)
    rng = np.random.default_rng(5)
    for b in range(4):
        yp = y[rng.permutation(90)]
        assert r.samples[b] == pytest.approx(METRICS[name](x, yp, dims=8), abs=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_p_values_of_a_true_null_are_uniform(name):
    # independent x and y: with B = 9 permutations p is uniform on {0.1, 0.2, ..., 1}; 150
    # independent probes, a chi-square test of the 10 cells at the 0.001 level
    import scipy.stats

    g = np.random.default_rng(11)
    counts = np.zeros(10)
    for _ in range(150):
        x, y = g.standard_normal((40, 6)), g.standard_normal((40, 5))
        p = permutation_null(name, x, y, n_permutations=9, seed=int(g.integers(1 << 30))).p
        counts[int(round(p * 10)) - 1] += 1
    assert scipy.stats.chisquare(counts).pvalue > 1e-3, counts


# ----------------------------------------------------------------------------------------------
# all-pairs scoring and the registry


def test_score_pairs_reuses_states_and_matches_single_calls():
    x, y = _pair(80, 20, 16)
    x2 = x + np.random.default_rng(1).standard_normal(x.shape)
    table = score_pairs(
        {"a": x, "b": x2}, {"t": y}, metrics=list(NAMES), n_permutations=5, progress=False
    )
    assert set(table.metric) == set(NAMES)
    for row in table.itertuples():
        feats = {"a": x, "b": x2}[row.vision]
        assert row.score == pytest.approx(METRICS[row.metric](feats, y), abs=1e-12)
        assert row.null_method == "permutation"
        assert row.chance == pytest.approx(alignability_chance(80, 5))
        null = permutation_null(row.metric, feats, y, n_permutations=5, seed=0)
        assert row.null_mean == pytest.approx(null.mean, abs=1e-12)


def test_row_order_matters_only_through_the_folds():
    x, y = _pair(100, 10, 12)
    metric = METRICS["ridge_alignability"]
    labels = metric.row_groups(100, metric.defaults)
    g = np.random.default_rng(0)
    within = np.arange(100)
    for f in range(5):  # shuffle positions inside each fold: the same split, the same score
        where = np.nonzero(labels == f)[0]
        within[where] = g.permutation(where)
    assert metric(x[within], y[within]) == pytest.approx(metric(x, y), abs=1e-12)
    anywhere = g.permutation(100)  # another split of the same rows: a different held-out score
    assert metric(x[anywhere], y[anywhere]) != pytest.approx(metric(x, y), abs=1e-6)


def test_bad_options_and_small_probes_are_one_line_errors():
    x, y = _pair(30, 5, 6)
    for kwargs, match in (
        ({"folds": 1}, "folds must be an integer >= 2"),
        ({"dims": 0}, "dims must be a positive integer or None"),
        ({"fold_seed": -1}, "fold_seed must be a non-negative integer"),
        ({"folds": 16}, "needs at least 32 rows: got n=30"),
    ):
        with pytest.raises(AlignkitError, match=match) as info:
            ridge_alignability(x, y, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(AlignkitError, match="y is a constant representation"):
        cca_alignability(x, np.ones_like(y))


@pytest.mark.parametrize("name", NAMES)
def test_ties_count_against_the_query(name):
    # two identical rows in one held-out fold: each is retrieved as often as its twin, so each
    # of the 4 queries they make (2 rows x 2 directions) has rank 2; every other query rank 1
    metric = METRICS[name]
    x, _ = _pair(60, 8, 8)
    labels = metric.row_groups(60, metric.defaults)
    i, j = np.nonzero(labels == 0)[0][:2]
    x[j] = x[i]
    assert metric(x, x) == pytest.approx(1 - 1 / 60, abs=1e-12)
    k = np.nonzero(labels == 1)[0][0]  # twins in different folds never compete
    x2 = x.copy()
    x2[j] = x2[j] + 1.0
    x2[k] = x2[i]
    assert metric(x2, x2) == pytest.approx(1.0, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# real features


@pytest.mark.real
@pytest.mark.slow
def test_real_pretrained_pair_beats_a_random_init_control(data_dir):
    # 500 flickr8k:dev rows (the features are in the shared cache): EfficientNet-Lite0 and
    # MiniLM captions against the same captions with a random-weight MobileNetV2
    from alignkit.features import extract_features
    from alignkit.probes import load_probe

    probe = load_probe("flickr8k:dev", n=500, data_dir=data_dir, progress=False)
    kw = {"batch_size": 32, "num_workers": 0, "cache": True, "device": "cpu", "progress": False}
    text = extract_features("st:sentence-transformers/all-MiniLM-L6-v2", probe, **kw)
    real = extract_features("efficientnet-lite:efficientnet_lite0", probe, **kw)
    control = extract_features("random-init:torchvision:mobilenet_v2", probe, **kw)
    table = score_pairs(
        [real, control], [text], metrics=list(NAMES), n_permutations=19, progress=False
    ).set_index(["vision", "metric"])
    for name in NAMES:
        pretrained = table.loc[(real.encoder, name)]
        random_init = table.loc[(control.encoder, name)]
        assert pretrained.score > random_init.score, name
        assert pretrained.p == pytest.approx(1 / 20), name  # above all 19 re-pairings
        assert pretrained.score > 3 * pretrained.chance, name  # chance: H_100 / 100 = 0.052


def test_a_side_constant_outside_one_fold_is_a_one_line_error():
    x, y = _pair(40, 5, 6)
    labels = METRICS["ridge_alignability"].row_groups(40, METRICS["ridge_alignability"].defaults)
    y[:] = 1.0
    y[labels == 2] = np.random.default_rng(0).standard_normal((int(np.sum(labels == 2)), 6))
    with pytest.raises(AlignkitError, match="y is constant on the training rows of a fold") as e:
        ridge_alignability(x, y)
    assert "\n" not in str(e.value)
