"""Pair figures: the vision x text heatmap of one metric and the top-pairs bar chart."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from alignkit.errors import AlignkitError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

from alignkit.plots._style import (
    NONSIG_GID,
    NONSIG_HATCH,
    _axes,
    _fmt,
    _fmt_z,
    _text_colour,
    mark_chance,
    metric_label,
    short_labels,
)


def score_matrix(
    scores: pd.DataFrame, metric: str, column: str = "score", *, order: str = "mean"
) -> pd.DataFrame:
    """Pivot the long-form scores of one metric (last layers) into a vision x text matrix.

    Rows and columns are sorted by their mean ``score`` (best first) when ``order="mean"``, or
    kept in first-seen order when ``order="given"``.
    """
    sub = scores[scores["metric"] == metric]
    if "vision_layer" in sub and sub["vision_layer"].nunique() > 1:
        sub = sub[(sub["vision_layer"] == -1) & (sub["text_layer"] == -1)]
    if sub.empty:
        have = sorted(scores["metric"].unique())
        raise AlignkitError(
            f"no scores for metric {metric!r}; the table has: {', '.join(have) or '(none)'}"
        )
    vision = list(dict.fromkeys(sub["vision"]))
    text = list(dict.fromkeys(sub["text"]))
    if order == "mean":
        means = sub.pivot_table(index="vision", columns="text", values="score", aggfunc="mean")
        vision = list(means.mean(axis=1).sort_values(ascending=False, kind="stable").index)
        text = list(means.mean(axis=0).sort_values(ascending=False, kind="stable").index)
    mat = sub.pivot_table(
        index="vision", columns="text", values=column, aggfunc="first", dropna=False
    )
    return mat.reindex(index=vision, columns=text)


def heatmap(
    scores: pd.DataFrame,
    metric: str,
    *,
    ax: Axes | None = None,
    alpha: float = 0.05,
    title: str | None = None,
    labels: Mapping[str, str] | None = None,
    colorbar: bool = True,
    order: tuple[Sequence[str], Sequence[str]] | None = None,
    controls: Sequence[str] = (),
) -> Axes:
    """Vision x text heatmap of one metric: score (and z, null mean) in each cell, colour = z.

    Args:
        scores: long-form table with :data:`alignkit.metrics.SCORE_COLUMNS`.
        metric: which metric to draw.
        alpha: cells with permutation ``p >= alpha`` are hatched (not significantly above chance).
        labels: ``{spec: display name}``; default :func:`short_labels`.
        order: ``(vision, text)`` row and column order, so that heatmaps of several metrics can
            be compared cell by cell (``Ranking.plot_heatmap`` passes one order for all);
            default: by mean score, best first.
        controls: encoders that are controls: their tick labels are grey, italic and end in
            "(control)", and a dashed line sets their rows / columns apart when they are last.
    Returns:
        the Axes; the cell texts are ``ax.texts`` (one per cell with a score), and each hatched
        cell is a patch with ``gid == "nonsignificant"``. The colour bar marks chance (z = 0,
        or score = chance level) with a tick labelled "chance".
    """
    import matplotlib.colors as mcolors
    import matplotlib.patches as mpatches
    import matplotlib.pyplot as plt

    score = score_matrix(scores, metric, "score")
    if order is not None:
        rows = [v for v in order[0] if v in score.index]
        cols = [t for t in order[1] if t in score.columns]
        score = score.reindex(index=rows, columns=cols)
    z = score_matrix(scores, metric, "z").reindex_like(score)
    null_mean = score_matrix(scores, metric, "null_mean").reindex_like(score)
    p = score_matrix(scores, metric, "p").reindex_like(score)
    chance = score_matrix(scores, metric, "chance").reindex_like(score)
    nv, nt = score.shape
    ax = _axes(ax, (max(6.4, 2.8 + 1.2 * nt), max(3.8, 1.9 + 0.62 * nv)))
    has_null = bool(np.isfinite(z.to_numpy(dtype=float)).any())
    has_chance = bool(np.isfinite(chance.to_numpy(dtype=float)).any())
    if has_null:
        values = z.to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        lim = max(3.0, float(np.abs(finite).max())) if finite.size else 3.0
        norm: Any = mcolors.TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim)
        cmap = plt.get_cmap("RdBu_r")
        cbar_label = "z-score vs. shuffled pairs\n(0 = chance level)"
    elif has_chance:
        values = score.to_numpy(dtype=float) - chance.to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        lim = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
        norm = mcolors.TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim)
        cmap = plt.get_cmap("RdBu_r")
        cbar_label = "score − chance level\n(0 = chance)"
    else:
        values = score.to_numpy(dtype=float)
        norm = None
        cmap = plt.get_cmap("viridis")
        cbar_label = "score (no null computed)"
    masked = np.ma.masked_invalid(values)
    image = ax.imshow(masked, cmap=cmap, norm=norm, aspect="auto")
    if colorbar:
        bar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
        bar.set_label(cbar_label)
        if norm is not None:  # z = 0 / score = chance level: where "no relation" sits
            mark_chance(bar, 0.0, color="black", linewidth=1.2)
    pvals = p.to_numpy(dtype=float)
    zvals = z.to_numpy(dtype=float)
    nvals = null_mean.to_numpy(dtype=float)
    svals = score.to_numpy(dtype=float)
    for i in range(nv):
        for j in range(nt):
            if not np.isfinite(svals[i, j]):
                continue
            nonsig = np.isfinite(pvals[i, j]) and pvals[i, j] >= alpha
            colour = (
                "black"
                if not np.isfinite(values[i, j])
                else _text_colour(cmap(image.norm(values[i, j])))
            )
            text = _fmt(svals[i, j])
            if np.isfinite(zvals[i, j]):
                text += f"\n{_fmt_z(zvals[i, j])}"
                if np.isfinite(nvals[i, j]) and abs(nvals[i, j]) >= 0.005:
                    text += f"\nnull {nvals[i, j]:.2f}"  # worth showing: a floor (biased CKA, kNN)
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=8.5,
                color="0.35" if nonsig else colour,
                fontstyle="italic" if nonsig else "normal",
            )
            if nonsig:
                ax.add_patch(
                    mpatches.Rectangle(
                        (j - 0.5, i - 0.5),
                        1,
                        1,
                        fill=False,
                        hatch=NONSIG_HATCH,
                        edgecolor="0.55",
                        linewidth=0,
                        gid=NONSIG_GID,
                    )
                )
    names = dict(labels) if labels is not None else short_labels([*score.index, *score.columns])
    control_set = set(controls)

    def tick(spec: str) -> str:
        return names.get(spec, spec) + (" (control)" if spec in control_set else "")

    ax.set_xticks(range(nt), [tick(t) for t in score.columns], rotation=35, ha="right")
    ax.set_yticks(range(nv), [tick(v) for v in score.index])
    for label, spec in [
        *zip(ax.get_xticklabels(), score.columns, strict=True),
        *zip(ax.get_yticklabels(), score.index, strict=True),
    ]:
        if spec in control_set:
            label.set_color("0.45")
            label.set_fontstyle("italic")
    for i, spec in enumerate(score.index):  # a dashed rule above the first control row
        if spec in control_set and i and score.index[i - 1] not in control_set:
            ax.axhline(i - 0.5, color="0.2", linestyle="--", linewidth=1.2)
    for j, spec in enumerate(score.columns):
        if spec in control_set and j and score.columns[j - 1] not in control_set:
            ax.axvline(j - 0.5, color="0.2", linestyle="--", linewidth=1.2)
    ax.set_xlabel("text encoder")
    ax.set_ylabel("vision encoder")
    ax.set_xticks(np.arange(-0.5, nt, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, nv, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    if title is None:
        title = metric_label(metric)
    n_nonsig = int((np.isfinite(pvals) & (pvals >= alpha)).sum())
    if has_null and n_nonsig:
        title += f"\nhatched: p ≥ {alpha:g} (not above shuffled pairs)"
    elif has_null and np.isfinite(pvals).any():
        title += f"\nevery pair above shuffled pairs (p < {alpha:g})"
    ax.set_title(title, fontsize=10)
    return ax


def top_pairs(
    table: pd.DataFrame,
    metric: str,
    *,
    top: int = 10,
    ax: Axes | None = None,
    alpha: float = 0.05,
    title: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> Axes:
    """Horizontal bars of the ``top`` pairs under ``metric`` with their subsample intervals.

    ``table`` is long form (``SCORE_COLUMNS``). Each bar is the score; the whisker the interval
    ``[ci_low, ci_high]`` when present; a black tick marks the permutation null mean (what
    shuffled pairs score) with ±2 null std as a thin grey band. Bars of pairs not significantly
    above the null (p ≥ alpha) are grey.
    """
    sub = table[table["metric"] == metric]
    if "vision_layer" in sub and sub["vision_layer"].nunique() > 1:
        sub = sub[(sub["vision_layer"] == -1) & (sub["text_layer"] == -1)]
    if sub.empty:
        raise AlignkitError(f"no scores for metric {metric!r}")
    sub = sub.sort_values("score", ascending=False, kind="stable").head(top).iloc[::-1]
    count = len(sub)
    ax = _axes(ax, (7.5, 0.9 + 0.38 * count))
    names = dict(labels) if labels is not None else short_labels([*sub["vision"], *sub["text"]])
    ylabels = [
        f"{names.get(v, v)}  ×  {names.get(t, t)}"
        for v, t in zip(sub["vision"], sub["text"], strict=True)
    ]
    score = sub["score"].to_numpy(float)
    pvals = sub["p"].to_numpy(float)
    colours = ["#b0b0b0" if np.isfinite(pv) and pv >= alpha else "#c0392b" for pv in pvals]
    y = np.arange(count)
    ax.barh(y, score, color=colours, height=0.65, zorder=2)
    lo, hi = sub["ci_low"].to_numpy(float), sub["ci_high"].to_numpy(float)
    has_ci = np.isfinite(lo) & np.isfinite(hi)
    if has_ci.any():
        err = np.vstack([score - lo, hi - score])[:, has_ci].clip(min=0)
        ax.errorbar(
            score[has_ci],
            y[has_ci],
            xerr=err,
            fmt="none",
            ecolor="black",
            elinewidth=1.1,
            capsize=3,
            zorder=3,
            label="subsample interval",
        )
    null_mean, null_std = sub["null_mean"].to_numpy(float), sub["null_std"].to_numpy(float)
    has_null = np.isfinite(null_mean)
    if has_null.any():
        band = np.where(np.isfinite(null_std), 2 * null_std, 0.0)
        ax.barh(
            y[has_null],
            (2 * band)[has_null],
            left=(null_mean - band)[has_null],
            height=0.3,
            color="#2c3e50",
            alpha=0.35,
            zorder=3,
            label="null mean ± 2 sd",
        )
        ax.scatter(
            null_mean[has_null],
            y[has_null],
            marker="|",
            s=160,
            color="black",
            zorder=4,
            label="null mean (shuffled pairs)",
        )
    ax.axvline(0, color="0.3", linewidth=0.8, zorder=1)
    ax.set_yticks(y, ylabels, fontsize=8.5)
    ax.set_xlabel(metric_label(metric))
    ax.grid(axis="x", color="0.9", zorder=0)
    if has_ci.any() or has_null.any():
        ax.legend(loc="lower right", fontsize=7.5, frameon=True)
    ax.set_title(title or f"Top {count} pairs by {metric_label(metric)}", fontsize=10)
    return ax
