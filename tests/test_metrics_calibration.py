"""Calibration helpers: the NaN-aware max-over-layers correction (issue #8 item 7c)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignkit.errors import AlignkitError
from alignkit.metrics import METRICS, LayerScores, max_over_cells, subsample_interval


def _naive_max_p(scores: np.ndarray, null: np.ndarray) -> tuple[float, int]:
    """Loop form: each permutation's maximum over its finite cells; all-NaN permutations out."""
    top = max(v for v in scores.ravel() if not math.isnan(v))
    maxima = []
    for grid in null:
        finite = [v for v in grid.ravel() if not math.isnan(v)]
        if finite:
            maxima.append(max(finite))
    if not maxima:
        return math.nan, 0
    return (1 + sum(m >= top for m in maxima)) / (len(maxima) + 1), len(maxima)


def test_max_over_cells_without_nans_is_the_max_t_p():
    g = np.random.default_rng(0)
    scores = g.uniform(size=(3, 4))
    null = g.uniform(size=(200, 3, 4)) * 1.1
    r = max_over_cells(scores, null)
    assert r.best == np.unravel_index(np.argmax(scores), scores.shape)
    assert r.best_score == scores.max()
    assert r.p_max == pytest.approx(_naive_max_p(scores, null)[0])
    assert r.p_cell == pytest.approx(
        (1 + (null[:, r.best[0], r.best[1]] >= scores.max()).sum()) / 201
    )
    assert r.p_max >= r.p_cell  # the corrected p can only be larger
    assert r.null_max_mean == pytest.approx(null.reshape(200, -1).max(axis=1).mean())


def test_a_nan_cell_does_not_drop_the_permutation():
    # one layer pair undefined in every permutation: each permutation's max is over the rest
    g = np.random.default_rng(1)
    scores = np.array([[0.5, np.nan], [0.2, 0.3]])
    null = g.uniform(0.0, 0.7, size=(99, 2, 2))
    null[:, 0, 1] = np.nan
    r = max_over_cells(scores, null)
    expected, b = _naive_max_p(scores, null)
    assert b == 99 and r.n_permutations == 99
    assert r.best == (0, 0)
    assert r.p_max == pytest.approx(expected)
    assert r.p_max > 0.2  # ~0.5 of the maxima reach 0.5; dropping them would give 1/100
    # the layer-scores view of one pair uses the same implementation
    ls = LayerScores("v", "t", "m", scores, null, (0, 1), (0, 1), 10, {})
    assert ls.max_p == pytest.approx(expected)
    assert ls.best == (0, 0)


def test_all_nan_null_gives_nan_p_not_the_smallest_p():
    scores = np.array([[0.4, 0.1]])
    null = np.full((50, 1, 2), np.nan)
    r = max_over_cells(scores, null)
    assert math.isnan(r.p_max) and math.isnan(r.p_cell) and r.n_permutations == 0
    ls = LayerScores("v", "t", "m", scores, null, (0,), (0, 1), 10, {})
    assert math.isnan(ls.max_p)


def test_no_null_and_nan_scores():
    r = max_over_cells(np.array([[np.nan, 0.2]]), None)
    assert r.best == (0, 1) and math.isnan(r.p_max) and r.n_permutations == 0
    r = max_over_cells(np.full((2, 2), np.nan), np.zeros((5, 2, 2)))
    assert r.best is None and math.isnan(r.best_score) and math.isnan(r.p_max)


def test_mismatched_null_shape_is_a_one_line_error():
    with pytest.raises(AlignkitError, match=r"null must have shape \(B, 2, 2\).*got \(5, 2, 3\)"):
        max_over_cells(np.zeros((2, 2)), np.zeros((5, 2, 3)))


# ----------------------------------------------------------------------------------------------
# subsampling intervals (issue #8 item 5)


def _latent_model(seed: int = 0, k: int = 3, d1: int = 8, d2: int = 6, noise: float = 1.0):
    """x = zA + e, y = zB + e' with z ~ N(0, I_k): population linear CKA in closed form,
    ‖Σ_xy‖²_F / (‖Σ_xx‖_F ‖Σ_yy‖_F) with Σ_xx = AᵀA + noise²I, Σ_yy = BᵀB + noise²I, Σ_xy = AᵀB."""
    g = np.random.default_rng(seed)
    a, b = g.standard_normal((k, d1)), g.standard_normal((k, d2))
    sxx, syy, sxy = a.T @ a + noise**2 * np.eye(d1), b.T @ b + noise**2 * np.eye(d2), a.T @ b
    population = np.sum(sxy**2) / math.sqrt(np.sum(sxx**2) * np.sum(syy**2))

    def draw(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        z = rng.standard_normal((n, k))
        return z @ a + noise * rng.standard_normal((n, d1)), z @ b + noise * rng.standard_normal(
            (n, d2)
        )

    return population, draw


@pytest.mark.slow
@pytest.mark.parametrize("name", ["linear_cka_unbiased", "linear_cka"])
def test_subsample_interval_coverage_by_simulation(name):
    # 200 independent probes of n = 120 rows from a model whose value is known: the population
    # CKA for the unbiased estimator (its bias is O(1/n²)), the expected score at n = 120 (a
    # 600-draw Monte Carlo mean, whose error is ~1/25 of the score's spread) for the biased one,
    # which keeps its O(1/n) floor. Coverage must sit within 3 binomial standard errors of the
    # nominal 0.9; the old percentile interval of the 80% subsets covered ~0.6 here.
    population, draw = _latent_model()
    rng = np.random.default_rng(1)
    n, reps, level = 120, 200, 0.9
    metric = METRICS[name]
    if name == "linear_cka":
        target = float(np.mean([metric(*draw(n, rng)) for _ in range(600)]))
    else:
        target = population
    hits = 0
    for r in range(reps):
        x, y = draw(n, rng)
        low, high = subsample_interval(name, x, y, n_subsamples=20, level=level, seed=r)
        hits += low <= target <= high
    tolerance = 3 * math.sqrt(level * (1 - level) / reps)
    assert abs(hits / reps - level) <= tolerance, hits / reps


# ----------------------------------------------------------------------------------------------
# registry answers: labels and chance levels (issue #9 item 3)


def test_every_metric_has_a_label_and_says_its_chance_level():
    labels = {name: m.label for name, m in METRICS.items()}
    assert labels["linear_cka_unbiased"] == "linear CKA (unbiased)"
    assert labels["mutual_knn"] == "mutual kNN"
    assert len(set(labels.values())) == len(labels)  # distinct, so legends can tell them apart
    assert METRICS["mutual_knn"].chance_level(201, k=20) == pytest.approx(20 / 200)
    assert METRICS["mutual_knn"].chance_level(101) == pytest.approx(10 / 100)  # default k
    assert math.isnan(METRICS["linear_cka"].chance_level(100))
