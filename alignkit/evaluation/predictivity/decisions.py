"""Seed noise and the decision a user makes: of two real pairs, which one to train?

A rank correlation over a grid mostly rewards separating clusters (ImageNet CNNs from a
copy-detection model from random-init controls). The question a researcher asks is narrower:
given two candidate pairs, does the score before training pick the one that trains better? And a
difference smaller than what a second training seed moves the result by is no answer to get
right or wrong. So:

* :func:`seed_noise` pools the within-pair spread of the results over the real pairs trained with
  two or more seeds (``noise.csv``): the standard deviation of a single run;
* :func:`decisions_table` counts, over the pairs of real pairs whose results differ by more than
  that noise allows, how often a pre-training metric orders them the same way
  (``decisions.csv``), with a bootstrap interval over pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from alignkit.errors import AlignkitError

#: the two-sided 95 % normal quantile: a difference under Z standard errors may be seed noise
Z = 1.96
COLUMNS = ("metric", "result", "scope", "n_decisions", "accuracy", "ci_low", "ci_high")
NOISE_COLUMNS = ("result", "sd", "n_pairs", "df")


def _same(column: str) -> Callable[[pd.DataFrame], np.ndarray]:
    def mask(real: pd.DataFrame) -> np.ndarray:
        values = real[column].to_numpy()
        return values[:, None] == values[None, :]

    return mask


#: which pairs of pairs a scope compares: (m, m) bool masks over the real pairs
SCOPES: dict[str, Callable[[pd.DataFrame], np.ndarray]] = {
    "all": lambda real: np.ones((len(real), len(real)), dtype=bool),
    "same_text": _same("text"),  # "which vision encoder for my text encoder?"
    "same_vision": _same("vision"),  # "which text encoder for my vision encoder?"
}


def seed_noise(seeds: pd.DataFrame) -> pd.DataFrame:
    """The standard deviation of a single training run's result, pooled over real pairs.

    ``seeds``: a ``seeds.csv`` frame (one row per pair and training seed: ``vision``, ``text``,
    ``control``, ``seed``, ``post/<result>`` columns). For each result, over the real pairs with
    ``n_i >= 2`` seeds (controls and single runs left out; missing values dropped)::

        sd^2 = sum_i sum_j (y_ij - mean_i)^2 / sum_i (n_i - 1)

    the pooled within-pair variance (each pair keeps its own mean, so the differences between
    pairs do not enter). Returns one row per result: ``result`` (the key without ``post/``),
    ``sd`` (in the result's units; NaN when no real pair has two seeds), ``n_pairs`` (pairs that
    entered), ``df`` (``sum_i (n_i - 1)``, the degrees of freedom of ``sd``).
    """
    missing = [c for c in ("vision", "text", "control") if c not in seeds]
    if missing:
        raise AlignkitError(f"seeds must be a seeds.csv table: got no column(s) {missing}")
    real = seeds[~seeds["control"].astype(bool)]
    rows = []
    for col in (c for c in seeds if c.startswith("post/")):
        squares, df, n_pairs = 0.0, 0, 0
        for _, runs in real.groupby(["vision", "text"], sort=False):
            y = runs[col].dropna().to_numpy(np.float64)
            if len(y) >= 2:
                squares += float(((y - y.mean()) ** 2).sum())
                df += len(y) - 1
                n_pairs += 1
        sd = math.sqrt(squares / df) if df else math.nan
        rows.append({"result": col.removeprefix("post/"), "sd": sd, "n_pairs": n_pairs, "df": df})
    return pd.DataFrame(rows, columns=list(NOISE_COLUMNS))


def decisions_table(
    pairs: pd.DataFrame,
    noise: Mapping[str, float],
    *,
    metrics: Sequence[str] | None = None,
    results: Sequence[str] | None = None,
    scopes: Sequence[str] = ("all", "same_text", "same_vision"),
    bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """How often each pre-training metric picks the better of two real pairs.

    Args:
        pairs: a ``pairs.csv`` frame: ``vision``, ``text``, ``control``, ``n_seeds`` (runs
            averaged into the pair's results; 1 when the column is absent), ``pre/<name>`` and
            ``pre/<name>/z``, ``post/<result>`` (the mean over the pair's seeds). Pairs with a
            control encoder are dropped: only real pairs are decisions.
        noise: ``{result: sd}``, the single-run standard deviation of each result
            (:func:`seed_noise`; ``noise.csv``'s ``result`` and ``sd``).
        metrics: ``<name>`` for ``pre/<name>``, ``<name>/z`` for ``pre/<name>/z`` (default every
            ``pre/`` column); results: result keys without ``post/`` (default every ``post/``
            column); scopes: some of :data:`SCOPES`.
        bootstrap: resamples of the real pairs (0: no interval); level: interval coverage in
            (0, 1); seed: the resamples.

    A decision is an unordered pair of distinct real pairs (a, b) in the scope (``all``;
    ``same_text``: a and b share the text encoder, the "which vision encoder for my text
    encoder?" question; ``same_vision``: they share the vision encoder) whose results differ by
    more than seed noise explains::

        |y_a - y_b| > Z * sd * sqrt(1 / n_a + 1 / n_b),   Z = 1.96

    (``y``: seed means; ``sd * sqrt(1/n_a + 1/n_b)`` is the standard error of the difference of
    two means of ``n_a`` and ``n_b`` independent runs; under a normal approximation a smaller
    difference arises from seeds alone more than 5 % of the time, so no metric is credited or
    blamed for it. ``sd`` is taken as known; with few degrees of freedom a t quantile would be
    larger.) The metric is right when ``sign(x_a - x_b) == sign(y_a - y_b)``; a tie in the metric
    counts as wrong (a score that cannot tell two pairs apart has not picked one). Rows with a
    NaN score or result take part in no decision. ``accuracy`` = right / ``n_decisions`` (NaN
    when there are none; chance is 0.5).

    Interval: percentile bootstrap over real pairs, because decisions share pairs and are not
    independent (a binomial interval over decisions would be too narrow): the real pairs, in
    their row order, are resampled with replacement, ``np.random.default_rng(seed).integers(0,
    m, (bootstrap, m))`` (the same resamples for every row of the table); every two drawn
    positions holding different pairs are compared (a pair drawn twice is not compared with
    itself, so k copies of a and l of b give k * l decisions), and ``ci_low``/``ci_high`` are the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled accuracies (NaN when
    no resample has a decision). A percentile interval cannot reach past what was observed (when
    every decision is right it is [1, 1] whatever their number), so the interval reported is the
    union of that bootstrap interval and the Wilson score interval of ``right`` of
    ``n_decisions`` at ``level`` (Wilson 1927; decisions taken as independent, which is too
    narrow where pairs are shared but not degenerate at 0 or 1): 3 of 3 right gives
    ``ci_low`` 0.44 at 95 %, not 1.

    Returns: one row per (metric, result, scope), columns exactly :data:`COLUMNS`.

    Raises:
        AlignkitError: no noise for a result (no pair was trained with two or more seeds), an
            unknown metric, result or scope, a missing column, bad ``bootstrap`` or ``level``.
    """
    real, metrics, results, scopes = _check(pairs, metrics, results, scopes, bootstrap, level)
    sds = {r: _noise_of(noise, r) for r in results}
    m = len(real)
    n_seeds = real["n_seeds"].to_numpy(np.float64) if "n_seeds" in real else np.ones(m)
    draws = np.random.default_rng(seed).integers(0, m, size=(bootstrap, m))
    weights = np.zeros((bootstrap, m))  # (B, m): how often each real pair was drawn
    np.add.at(weights, (np.arange(bootstrap)[:, None], draws), 1.0)
    masks = {s: SCOPES[s](real) & ~np.eye(m, dtype=bool) for s in scopes}  # (m, m) each
    se = np.sqrt(1 / n_seeds[:, None] + 1 / n_seeds[None, :])  # (m, m), times sd
    rows = []
    for metric in metrics:
        x = real[f"pre/{metric}"].to_numpy(np.float64)
        for result in results:
            y = real[f"post/{result}"].to_numpy(np.float64)
            dy = y[:, None] - y[None, :]  # (m, m)
            dx = x[:, None] - x[None, :]
            ok = np.isfinite(dx) & np.isfinite(dy)
            differ = ok & (np.abs(np.where(ok, dy, 0.0)) > Z * sds[result] * se)
            right = np.sign(dx) == np.sign(dy)  # a tie in x: sign 0, never y's sign here
            for scope in scopes:
                decided = differ & masks[scope]
                rows.append(
                    {
                        "metric": metric,
                        "result": result,
                        "scope": scope,
                        **_cell(decided, decided & right, weights, level),
                    }
                )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _cell(
    decided: np.ndarray, right: np.ndarray, weights: np.ndarray, level: float
) -> dict[str, float | int]:
    """Counts over the grid and the bootstrap interval of one (metric, result, scope)."""
    n = int(decided.sum()) // 2  # each unordered pair is in the symmetric mask twice
    accuracy = int(right.sum()) / (2 * n) if n else math.nan
    low = high = math.nan
    if len(weights):
        # a resample with counts w compares copies of a and b w_a * w_b times
        total = np.einsum("bi,ij,bj->b", weights, decided.astype(np.float64), weights)
        hits = np.einsum("bi,ij,bj->b", weights, right.astype(np.float64), weights)
        seen = total > 0
        if seen.any():
            acc = hits[seen] / total[seen]
            alpha = (1 - level) / 2
            low, high = (float(q) for q in np.quantile(acc, [alpha, 1 - alpha]))
    if n:
        wilson = binomtest(int(right.sum()) // 2, n).proportion_ci(level, method="wilson")
        low, high = np.fmin(low, wilson.low), np.fmax(high, wilson.high)  # fmin: NaN-safe
    return {"n_decisions": n, "accuracy": accuracy, "ci_low": float(low), "ci_high": float(high)}


def _check(
    pairs: pd.DataFrame,
    metrics: Sequence[str] | None,
    results: Sequence[str] | None,
    scopes: Sequence[str],
    bootstrap: int,
    level: float,
) -> tuple[pd.DataFrame, list[str], list[str], list[str]]:
    missing = [c for c in ("vision", "text", "control") if c not in pairs]
    if missing:
        raise AlignkitError(f"pairs must be a pairs.csv table: got no column(s) {missing}")
    have_m = [c.removeprefix("pre/") for c in pairs if c.startswith("pre/")]
    have_r = [c.removeprefix("post/") for c in pairs if c.startswith("post/")]
    metrics = have_m if metrics is None else [metrics] if isinstance(metrics, str) else metrics
    results = have_r if results is None else [results] if isinstance(results, str) else results
    scopes = [scopes] if isinstance(scopes, str) else list(scopes)
    for kind, asked, have in (
        ("metric", metrics, have_m),
        ("result", results, have_r),
        ("scope", scopes, list(SCOPES)),
    ):
        unknown = [a for a in asked if a not in have]
        if unknown or not asked:
            raise AlignkitError(
                f"unknown {kind}(s) {unknown or 'none given'}; expected some of: "
                f"{', '.join(have) or '(none in the table)'}"
            )
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise AlignkitError(f"bootstrap must be an int >= 0 (0: no interval): got {bootstrap!r}")
    if not 0 < level < 1:
        raise AlignkitError(f"level must be in (0, 1): got {level!r}")
    real = pairs[~pairs["control"].astype(bool)].reset_index(drop=True)
    return real, list(metrics), list(results), scopes


def _noise_of(noise: Mapping[str, float], result: str) -> float:
    sd = dict(noise).get(result)
    if sd is None or not math.isfinite(float(sd)) or float(sd) < 0:
        raise AlignkitError(
            f"no seed noise for the result {result!r} (got {sd!r}): a decision counts only "
            "when a difference exceeds the noise measured with repeated training seeds; run the "
            "grid with extra seeds (PredictivityConfig.seeds, --seeds on the command line) and "
            "pass noise.csv's sd of each result"
        )
    return float(sd)


__all__ = ["COLUMNS", "NOISE_COLUMNS", "SCOPES", "Z", "decisions_table", "seed_noise"]
