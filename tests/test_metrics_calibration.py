"""Calibration helpers: the NaN-aware max-over-layers correction (issue #8 item 7c)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignkit.compare import LayerScores
from alignkit.errors import AlignkitError
from alignkit.metrics import max_over_cells


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
