"""How far above chance is a score: permutation nulls and subsampling intervals, for any metric.

* Permutation null: shuffle the pairing of rows (row i of x with row π(i) of y), B times; the
  p-value is (1 + #{null >= observed}) / (B + 1) (Phipson & Smyth 2010, "Permutation P-values
  Should Never Be Zero"), the z-score (observed - null mean) / null std. Per-representation work
  (centring, self terms, neighbour lists, kernel medians, SVD bases) is done once; each
  permutation only recomputes the pairing-dependent cross term.
* Subsampling interval: a confidence interval for the full-n score from the metric on S subsets
  of m rows drawn without replacement (a bootstrap with replacement would put duplicate rows into
  each other's neighbourhoods): the delete-d jackknife variance, m/(n-m) times the variance of
  the subset scores, and a Student-t interval around the full-n score (:func:`subsample_bounds`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats
import torch

from alignkit.errors import AlignkitError
from alignkit.metrics import moments as _moments
from alignkit.metrics._checks import ArrayLike, as_pair, check_min_rows
from alignkit.metrics._engine import permutations, subsets
from alignkit.metrics.registry import METRICS, Metric, get_metric

P_FLOOR = 1e-4
"""The smallest p that tables print as a number; below it they print ``< 1e-4`` (the CSVs keep
``p`` and the exact ``log10_p``). The analytic nulls' Pearson type III tail agrees with 10^6
permutations within 4% at p = 4.6e-3 and 6.1e-4 and within 2% (Monte Carlo error 13%) at
p = 5.9e-5 (docs/calibration.md, ``benchmarks/p_floor.py``); further out it is an extrapolation
no one has checked, and a default run's strongest pairs (z = 140) reach p = 1e-384, below
float64's range."""


@dataclass(frozen=True)
class NullResult:
    """A score with its permutation null.

    Attributes:
        observed: the metric on the true pairing.
        mean, std: mean and standard deviation (ddof=1) of the null samples.
        z: (observed - mean) / std.
        p: (1 + #{samples >= observed}) / (B + 1), in (0, 1].
        samples: ``(B,)`` the metric on each permuted pairing, in the seed's order.
        chance: the metric's analytic chance level (mutual-kNN: k/(n-1)), else NaN.
        method: how mean, std and p were obtained: ``"permutation"`` (Monte Carlo over B
            permutations, the attributes above), ``"analytic-pearson3"`` (exact moments over all
            n! re-pairings; p from a Pearson type III law with the exact skewness; ``samples``
            empty) or ``"analytic-normal"`` (exact mean and variance, normal p: n above
            :data:`alignkit.metrics.moments.SKEW_MAX_ROWS`).
        skew: skewness of the null (analytic methods), else NaN.
    """

    observed: float
    mean: float
    std: float
    z: float
    p: float
    samples: np.ndarray
    chance: float = math.nan
    method: str = "permutation"
    skew: float = math.nan


NULL_METHODS = ("analytic", "permutation", "none")
"""``null`` choices of :func:`alignkit.metrics.pairs.score_pairs` (``analytic``: exact moments
for the metrics that have them, permutations for the rest)."""


def analytic_summary(
    moments: tuple[float, float, float], observed: float
) -> tuple[float, float, float, float, str, float]:
    """(mean, std, z, p, method, skew) of a score from its exact null moments."""
    mean, var, skew = moments
    std = math.sqrt(var) if var > 0 else math.nan
    z = (observed - mean) / std if std > 0 else math.nan
    p = _moments.upper_p(observed, mean, std, skew)
    method = "analytic-normal" if math.isnan(skew) else "analytic-pearson3"
    return mean, std, z, p, method, skew


def analytic_null(metric: str | Metric, x: ArrayLike, y: ArrayLike, **options: Any) -> NullResult:
    """The metric with its exact permutation null: mean, std and skewness over all n! pairings.

    For the CKA family (``metric.has_analytic_null``); see :mod:`alignkit.metrics.moments` for
    the formulas and their sources (Kazi-Aoual et al. 1995; Josse, Pagès & Husson 2008). The
    p-value is P(null >= observed) under a Pearson type III law with those moments (normal for
    n > SKEW_MAX_ROWS); unlike a B-permutation p it is not floored at 1/(B+1). Costs about as
    much as the score itself (plus, per input, one n x n kernel and a min(n, d)³ product for
    linear CKA, n³ for RBF CKA, when the skewness is computed: n <= SKEW_MAX_ROWS).

    Args:
        metric: a METRICS name or Metric with an analytic null. x: ``(n, d1)``; y: ``(n, d2)``,
            the same rows, n >= 4. options: metric options.

    Raises:
        AlignkitError: the metric has no analytic null (use :func:`permutation_null`), or n < 4.
    """
    m = get_metric(metric)
    if m.engine.moments is None:
        with_null = sorted(k for k, v in METRICS.items() if v.has_analytic_null)
        raise AlignkitError(
            f"metric {m.name!r} has no analytic null (metrics with one: {', '.join(with_null)}): "
            "use permutation_null"
        )
    opts = m.options(**options)
    xt, yt = as_pair(x, y)
    n = xt.shape[0]
    check_min_rows(n, 4, "the analytic permutation null")
    m.engine.check(n, opts)
    sx, sy = m.engine.prepare(xt, opts, "x"), m.engine.prepare(yt, opts, "y")
    observed = m.engine.finish(sx, sy, m.engine.cross(sx, sy, None, opts), opts)
    mean, std, z, p, method, skew = analytic_summary(m.engine.moments(sx, sy, opts), observed)
    chance = m.chance(n, opts) if m.chance is not None else math.nan
    return NullResult(observed, mean, std, z, p, np.empty(0), chance, method, skew)


def null_summary(observed: float, samples: np.ndarray) -> tuple[float, float, float, float]:
    """(mean, std, z, p) of null samples; NaNs when there are none."""
    b = samples.size
    if b == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = float(samples.mean())
    std = float(samples.std(ddof=1)) if b > 1 else math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        z = float(np.float64(observed - mean) / np.float64(std))
    p = (1.0 + float((samples >= observed).sum())) / (b + 1.0)
    return mean, std, z, p


@dataclass(frozen=True)
class MaxOverCells:
    """The best cell of a grid of scores, tested against the null of the maximum over the grid.

    Picking the best of L cells (layer pairs) and testing it against its own null overstates
    significance; the max-null (Westfall & Young 1993, "Resampling-Based Multiple Testing",
    max-T) compares it with the maximum over the grid under each permutation instead. The same
    B permutations must have been used for every cell, so the maxima keep the cells' dependence.

    Attributes:
        best: index of the highest finite score (``(i, j)`` for a 2-D grid); None if none is finite.
        best_score: its score (NaN if none).
        p_max: ``(1 + #{b: max_cells null[b] >= best_score}) / (B' + 1)``, the maximum over each
            permutation's finite cells; B' counts the permutations with at least one finite cell.
            NaN when B' = 0 (no null, or every null cell NaN) or no score is finite.
        p_cell: the best cell against its own finite null samples alone (what a raw maximum, as
            in platonic-rep's layer search, would claim), NaN likewise.
        null_max_mean: mean of the B' maxima (NaN if B' = 0).
        n_permutations: B'.
    """

    best: tuple[int, ...] | None
    best_score: float
    p_max: float
    p_cell: float
    null_max_mean: float
    n_permutations: int


def max_over_cells(scores: ArrayLike, null: ArrayLike | None) -> MaxOverCells:
    """Max-over-cells (e.g. layer pairs) permutation correction, NaN-aware.

    Args:
        scores: ``(...)`` grid of scores on the true pairing, e.g. ``(Lv, Lt)`` layer pairs;
            NaN cells (a metric undefined at that layer) are skipped.
        null: ``(B, ...)`` the same grid under B permutations of the pairing, the same
            permutations for every cell; None or B = 0 for no null. A permutation takes the
            maximum over its finite cells; one whose cells are all NaN is left out of B.

    Returns:
        :class:`MaxOverCells`. Raises AlignkitError if ``null``'s trailing shape is not
        ``scores``' shape.
    """
    grid = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(grid)
    if not finite.any():
        best, top = None, math.nan
    else:
        flat = int(np.argmax(np.where(finite, grid, -np.inf)))
        best = tuple(int(i) for i in np.unravel_index(flat, grid.shape))
        top = float(grid[best])
    if null is None or np.asarray(null).size == 0:
        return MaxOverCells(best, top, math.nan, math.nan, math.nan, 0)
    samples = np.asarray(null, dtype=np.float64)
    if samples.shape[1:] != grid.shape:
        raise AlignkitError(
            f"null must have shape (B, {', '.join(map(str, grid.shape))}) to match scores: "
            f"got {samples.shape}"
        )
    flat_null = samples.reshape(samples.shape[0], -1)  # (B, cells)
    ok = np.isfinite(flat_null)
    has_any = ok.any(axis=1)  # (B,)
    maxima = np.where(ok, flat_null, -np.inf).max(axis=1)[has_any]  # (B',)
    b = int(maxima.size)
    if b == 0 or best is None:
        mean = float(maxima.mean()) if b else math.nan
        return MaxOverCells(best, top, math.nan, math.nan, mean, b)
    p_max = (1.0 + float((maxima >= top).sum())) / (b + 1.0)
    cell = samples[(slice(None), *best)]
    cell = cell[np.isfinite(cell)]
    p_cell = (1.0 + float((cell >= top).sum())) / (cell.size + 1.0) if cell.size else math.nan
    return MaxOverCells(best, top, p_max, p_cell, float(maxima.mean()), b)


def check_count(value: Any, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise AlignkitError(f"{name} must be an integer >= {minimum}: got {value!r}")
    return int(value)


def permutation_null(
    metric: str | Metric,
    x: ArrayLike,
    y: ArrayLike,
    n_permutations: int = 100,
    seed: int = 0,
    **options: Any,
) -> NullResult:
    """The metric on the true pairing and on ``n_permutations`` random pairings of the rows.

    Args:
        metric: a :data:`METRICS` name or a :class:`Metric`.
        x: ``(n, d1)``; y: ``(n, d2)``, the same rows.
        n_permutations: B >= 1. seed: the permutations are ``np.random.default_rng(seed)``'s
            first B permutations of n, the same ones :func:`alignkit.metrics.score_pairs` uses.
        options: metric options overriding the registry defaults (e.g. ``k=20``).

    Cost: one per-representation preparation per input, then B cross terms (linear CKA: one
    n·d1·d2 GEMM each; mutual-kNN/CKNNA: O(n·k²) relabelling, no new neighbour search).
    """
    m = get_metric(metric)
    opts = m.options(**options)
    b = check_count(n_permutations, "n_permutations", 1)
    xt, yt = as_pair(x, y)
    n = xt.shape[0]
    m.engine.check(n, opts)
    sx, sy = m.engine.prepare(xt, opts, "x"), m.engine.prepare(yt, opts, "y")
    observed = m.engine.finish(sx, sy, m.engine.cross(sx, sy, None, opts), opts)
    samples = np.array(
        [
            m.engine.finish(sx, sy, m.engine.cross(sx, sy, p, opts), opts)
            for p in permutations(n, b, seed, xt.device)
        ]
    )
    mean, std, z, p = null_summary(observed, samples)
    chance = m.chance(n, opts) if m.chance is not None else math.nan
    return NullResult(observed, mean, std, z, p, samples, chance)


def subsample_bounds(
    full: ArrayLike, subset_scores: ArrayLike, n: int, m: int, level: float, axis: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Confidence interval for a full-n estimate from its scores on S subsets of m rows.

    The delete-d jackknife (Shao & Wu 1989, "A general theory for jackknife variance estimation",
    Ann. Statist. 17, 1176-1197) with d = n - m rows left out of each of S random subsets, its
    variance estimate turned into a Student-t interval around the full-n score θ_n:

        se² = m / (n - m) · var_s(θ_m,s)          (sample variance over the S subsets)
        interval = θ_n ± t_{S-1, (1+level)/2} · se

    Why this form: for a smooth estimator, Var(θ_m - θ_n) = σ²(1/m - 1/n) over subsets drawn
    without replacement from the n rows (a finite-population correction), so m/(n-m) · var(θ_m)
    estimates σ²/n, the variance of θ_n. The re-centred subsampling of Politis & Romano (1994,
    Ann. Statist. 22) scales deviations by sqrt(m/n) instead, which assumes m/n -> 0: at the 80%
    subsets used here it would give intervals sqrt(1 - m/n) = 0.45 times too narrow. The spread
    is taken about the subsets' own mean, not θ_n: estimators whose bias depends on n (biased
    CKA; mutual-kNN, whose chance level is k/(n-1)) score m-row subsets systematically
    differently, the shift that put the old percentile intervals (quantiles of θ_m itself)
    beside their own score. A t quantile rather than percentiles of the S subset scores: with the
    CLI's default S = 10, the 2.5% and 97.5% percentiles are the extreme subsets and under-cover
    (a simulation with S = 50 at level 0.9 covered 0.85 with percentiles).

    What it covers: the expected score at probe size n, i.e. for CKA the population value plus
    the estimator's O(1/n) bias (biased CKA keeps its positive floor; the unbiased estimator's
    interval covers the population CKA). Coverage is tested by simulation for linear CKA; for
    the neighbourhood metrics, whose neighbour sets change with the subset, it is approximate.

    Args:
        full: the full-n score(s), ``subset_scores``' shape without ``axis``.
        subset_scores: S >= 2 subset scores along ``axis``.
        n: rows of the full sample. m: rows per subset, 1 <= m < n. level: in (0, 1).

    Returns:
        ``(low, high)`` arrays of ``full``'s shape, symmetric about it.
    """
    if not 1 <= m < n:
        raise AlignkitError(f"subsets must have 1 <= m < n rows: got m={m}, n={n}")
    scores = np.asarray(subset_scores, dtype=np.float64)
    s = scores.shape[axis]
    if s < 2:
        raise AlignkitError(f"the interval needs at least 2 subset scores: got {s}")
    se = np.sqrt(m / (n - m) * scores.var(axis=axis, ddof=1))
    half = scipy.stats.t.ppf((1 + level) / 2, s - 1) * se
    centre = np.asarray(full, dtype=np.float64)
    return centre - half, centre + half


def subsample_interval(
    metric: str | Metric,
    x: ArrayLike,
    y: ArrayLike,
    n_subsamples: int = 100,
    fraction: float = 0.8,
    level: float = 0.95,
    seed: int = 0,
    **options: Any,
) -> tuple[float, float]:
    """Confidence interval for the full-n score by re-centred subsampling of the rows.

    Args:
        metric: a :data:`METRICS` name or a :class:`Metric`.
        x: ``(n, d1)``; y: ``(n, d2)``, the same rows.
        n_subsamples: number of subsets (>= 2). fraction: subset size m = round(fraction·n) as
            a fraction of n, in (0, 1).
        level: coverage of the interval, in (0, 1). seed: subsets come from
            ``np.random.default_rng([seed, 1])``, the same as in ``score_pairs``.

    Returns:
        ``(low, high)``, symmetric about the full-n score (see :func:`subsample_bounds` for the
        method, a delete-d jackknife t-interval, and what it covers: the expected score at probe
        size n). Before issue #8 this returned
        percentiles of the m-row scores themselves, which describe smaller probes and excluded
        the full-n score in 80% of biased-CKA pairs at n=200.
    """
    m = get_metric(metric)
    opts = m.options(**options)
    s = check_count(n_subsamples, "n_subsamples", 2)
    check_fraction(fraction, level)
    xt, yt = as_pair(x, y)
    n = xt.shape[0]
    sets = subsets(n, s, fraction, seed)
    if len(sets[0]) >= n:
        raise AlignkitError(
            f"fraction={fraction} of n={n} rows leaves no row out of a subset: "
            "use a smaller fraction"
        )
    m.engine.check(n, opts)
    sx, sy = m.engine.prepare(xt, opts, "x"), m.engine.prepare(yt, opts, "y")
    full = m.engine.finish(sx, sy, m.engine.cross(sx, sy, None, opts), opts)
    scores = []
    for rows in sets:
        idx = torch.from_numpy(rows).to(xt.device)
        o = dict(opts)
        m.engine.check(len(rows), o)
        sx, sy = m.engine.prepare(xt[idx], o, "x"), m.engine.prepare(yt[idx], o, "y")
        scores.append(m.engine.finish(sx, sy, m.engine.cross(sx, sy, None, o), o))
    low, high = subsample_bounds(full, np.array(scores), n, len(sets[0]), level)
    return float(low), float(high)


def check_fraction(fraction: Any, level: Any) -> None:
    if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
        raise AlignkitError(f"fraction must be in (0, 1): got {fraction!r}")
    if not (isinstance(level, (int, float)) and 0 < level < 1):
        raise AlignkitError(f"level must be in (0, 1): got {level!r}")
