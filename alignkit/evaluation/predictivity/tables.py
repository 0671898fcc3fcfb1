"""The predictivity study's tables and statistics, and the sentences that lead its report.

Spearman rho and Kendall tau-b over pairs (average ranks for ties), percentile bootstrap
intervals over pairs (pairs resampled with replacement; the same resamples for every cell), and
leave-one-encoder-out rho: nothing is fitted in a rank correlation, so "held out" means rho over
the pairs that do *not* contain encoder E, for each E of the grid. ``loeo_min`` is the smallest
(does the correlation survive dropping any one encoder?) and ``rho_no_controls`` is rho over the
pairs without a control encoder (does the metric order real pairs, or only separate real pairs
from random-init ones?).

Too few pairs: with fewer than :data:`MIN_PAIRS` pairs even a perfect order is not evidence (the
exact permutation p of rho = 1 over n pairs is 2/n!, 0.083 at n = 4), and a bootstrap over so few
pairs resamples two or three distinct pairs and reports intervals such as [1.0, 1.0] that claim a
certainty it does not have. Below that count the intervals are NaN and the verdict says so.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from alignkit.evaluation.predictivity.config import PredictivityConfig

MIN_PAIRS = 5
#: why a correlations column can be NaN (printed under the table for the all-NaN ones)
NAN_REASONS = {
    "spearman_low": f"fewer than {MIN_PAIRS} pairs: no interval can mean what it claims",
    "kendall_low": f"fewer than {MIN_PAIRS} pairs: no interval can mean what it claims",
    "loeo_min": "leaving out any one encoder leaves fewer than 3 pairs",
    "rho_no_controls": "fewer than 3 pairs without a control encoder",
}


def seed_table(rows: Sequence[Mapping[str, Any]], config: PredictivityConfig) -> pd.DataFrame:
    """seeds.csv: one row per training run (pair x seed): vision, text, control, seed and the
    ``post/<result>`` columns of the results the config correlates. ``rows``: ``{"vision",
    "text", "seed", "metrics"}`` mappings (``metrics``: the run's metrics.json entries)."""
    table = []
    for row in rows:
        v, t = row["vision"], row["text"]
        rec: dict[str, Any] = {
            "vision": v,
            "text": t,
            "control": config.is_control(v) or config.is_control(t),
            "seed": row.get("seed", config.first_seed),
        }
        for key, value in row["metrics"].items():
            if any(fnmatch.fnmatchcase(key, pat) for pat in config.results):
                rec[f"post/{key}"] = float(value["value"])
        table.append(rec)
    return pd.DataFrame(table)


def pair_table(
    scores: pd.DataFrame, rows: Sequence[Mapping[str, Any]], config: PredictivityConfig
) -> pd.DataFrame:
    """One row per pair: ``n_seeds`` (its training runs), the pre-training scores (raw and z)
    and the post-training results, each the mean over the pair's seeds (:func:`seed_table`)."""
    last = scores
    if "vision_layer" in scores:
        last = scores[(scores["vision_layer"] == -1) & (scores["text_layer"] == -1)]
    runs = seed_table(rows, config)
    if runs.empty:
        return runs
    post = [c for c in runs if c.startswith("post/")]
    table = []
    for v, t in dict.fromkeys(zip(runs["vision"], runs["text"], strict=True)):
        mine = runs[(runs["vision"] == v) & (runs["text"] == t)]
        rec: dict[str, Any] = {
            "vision": v,
            "text": t,
            "control": bool(mine["control"].iloc[0]),
            "n_seeds": len(mine),
        }
        for _, s in last[(last["vision"] == v) & (last["text"] == t)].iterrows():
            rec[f"pre/{s['metric']}"] = float(s["score"])
            rec[f"pre/{s['metric']}/z"] = float(s["z"])
        rec.update({c: float(mine[c].mean()) for c in post})
        table.append(rec)
    return pd.DataFrame(table)


def correlate(pairs: pd.DataFrame, config: PredictivityConfig) -> pd.DataFrame:
    """Spearman rho and Kendall tau-b of each pre-training column against each post-training
    column, with percentile bootstrap intervals over pairs (NaN below :data:`MIN_PAIRS` pairs)
    and leave-one-encoder-out rho. One row per (pre, kind, post)."""
    pre_cols = [c for c in pairs if c.startswith("pre/")]
    post_cols = [c for c in pairs if c.startswith("post/")]
    rng = np.random.default_rng(config.seed)
    n = len(pairs)
    boot = rng.integers(0, n, size=(config.bootstrap, n))  # the same resamples for every cell
    out = []
    for pre in pre_cols:
        x = pairs[pre].to_numpy(float)
        for post in post_cols:
            y = pairs[post].to_numpy(float)
            metric = pre.removeprefix("pre/")
            out.append(
                {
                    "pre": metric.removesuffix("/z"),
                    "kind": "z" if metric.endswith("/z") else "raw",
                    "post": post.removeprefix("post/"),
                    **_cell(pairs, x, y, boot, config.level),
                }
            )
    return pd.DataFrame(out)


def _cell(
    pairs: pd.DataFrame, x: np.ndarray, y: np.ndarray, boot: np.ndarray, level: float
) -> dict[str, Any]:
    """The statistics of one (pre, post) column pair."""
    from scipy import stats

    n = len(x)
    alpha = (1 - level) / 2
    rho = _spearman(x, y)
    tau = float(stats.kendalltau(x, y, variant="b").statistic)
    if n >= MIN_PAIRS:
        b_rho = np.array([_spearman(x[i], y[i]) for i in boot])
        b_tau = np.array([stats.kendalltau(x[i], y[i], variant="b").statistic for i in boot])
        rho_iv = (float(np.nanquantile(b_rho, alpha)), float(np.nanquantile(b_rho, 1 - alpha)))
        tau_iv = (float(np.nanquantile(b_tau, alpha)), float(np.nanquantile(b_tau, 1 - alpha)))
    else:
        rho_iv = tau_iv = (math.nan, math.nan)
    loeo = []
    for e in dict.fromkeys([*pairs["vision"], *pairs["text"]]):
        keep = ((pairs["vision"] != e) & (pairs["text"] != e)).to_numpy(bool)
        if keep.sum() >= 3:
            loeo.append(_spearman(x[keep], y[keep]))
    loeo_arr = np.array(loeo, float)
    real = ~pairs["control"].to_numpy(bool)
    return {
        "n_pairs": n,
        "spearman": rho,
        "spearman_low": rho_iv[0],
        "spearman_high": rho_iv[1],
        "kendall": tau,
        "kendall_low": tau_iv[0],
        "kendall_high": tau_iv[1],
        "loeo_min": float(np.nanmin(loeo_arr)) if np.isfinite(loeo_arr).any() else math.nan,
        "loeo_mean": float(np.nanmean(loeo_arr)) if np.isfinite(loeo_arr).any() else math.nan,
        "rho_no_controls": _spearman(x[real], y[real]) if real.sum() >= 3 else math.nan,
        "n_no_controls": int(real.sum()),
    }


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rho (average ranks for ties); NaN when either side is constant."""
    from scipy import stats

    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def headline_metric(config: PredictivityConfig) -> str:
    """The pre-training metric the verdict sentences and the figure lead with: the grid's first
    (choosing the best of several after the fact would overstate it)."""
    return config.metrics[0]


def verdicts(correlations: pd.DataFrame, config: PredictivityConfig) -> list[str]:
    """One sentence per post-training result: how well the headline metric's raw score predicted
    it ("over N pairs, X predicted Y at rho R [low, high]"). The raw score, not its
    permutation-null z: in the 42-pair study (docs/evaluation.md) every metric's z decided which
    of two pairs trains better less often than its raw score, and ``rank-encoders`` orders by the
    raw score. Below :data:`MIN_PAIRS`
    pairs the sentences carry no interval and a last sentence says that nothing can be
    concluded from so few pairs."""
    metric = headline_metric(config)
    rows = correlations[(correlations["pre"] == metric) & (correlations["kind"] == "raw")]
    out = []
    n = int(rows["n_pairs"].iloc[0]) if len(rows) else 0
    for _, r in rows.iterrows():
        rho = (
            "undefined (a constant column)" if math.isnan(r["spearman"]) else f"{r['spearman']:.2f}"
        )
        head = f"over {n} pairs, {metric} predicted {r['post']} at rho {rho}"
        if n < MIN_PAIRS or math.isnan(r["spearman_low"]):
            out.append(head)
            continue
        iv = (
            f" [{r['spearman_low']:.2f}, {r['spearman_high']:.2f}] "
            f"({100 * config.level:.0f} % bootstrap over pairs)"
        )
        tail = ""
        if not math.isnan(r["rho_no_controls"]) and int(r["n_no_controls"]) < n:
            tail = (
                f"; without controls rho {r['rho_no_controls']:.2f} over "
                f"{int(r['n_no_controls'])} pairs"
            )
        out.append(f"{head}{iv}{tail}")
    if 0 < n < MIN_PAIRS:
        out.append(
            f"{n} pairs are too few pairs to conclude anything: even a perfect order of {n} "
            f"pairs arises by chance with p = {2 / math.factorial(n):.3g} (two-sided), so no "
            f"interval is given; add encoders to the grid ({MIN_PAIRS} or more pairs)"
        )
    return out


def printable(correlations: pd.DataFrame, columns: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """``correlations[columns]`` without the columns that are NaN in every row, and one note per
    reason saying why those columns are empty (the CSV keeps every column)."""
    keep, dropped = [], {}
    for col in columns:
        if col in correlations and correlations[col].isna().all() and col in _REASON_OF:
            dropped.setdefault(_REASON_OF[col], []).append(col)
        else:
            keep.append(col)
    notes = [f"{', '.join(cols)}: not shown, {why}" for why, cols in dropped.items()]
    return correlations[keep], notes


_REASON_OF = {
    **NAN_REASONS,
    "spearman_high": NAN_REASONS["spearman_low"],
    "kendall_high": NAN_REASONS["kendall_low"],
}

__all__ = [
    "MIN_PAIRS",
    "correlate",
    "headline_metric",
    "pair_table",
    "printable",
    "seed_table",
    "verdicts",
]
