"""Pair figures: the vision x text heatmap of one metric and the top-pairs bar chart."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    cells = _Cells.of(scores, metric, order)
    nv, nt = cells.score.shape
    ax = _axes(ax, (max(6.4, 2.8 + 1.2 * nt), max(3.8, 1.9 + 0.62 * nv)))
    scale = _colour_scale(cells)
    image = ax.imshow(
        np.ma.masked_invalid(scale.values), cmap=scale.cmap, norm=scale.norm, aspect="auto"
    )
    if colorbar:
        bar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
        bar.set_label(scale.label)
        if scale.norm is not None:  # z = 0 / score = chance level: where "no relation" sits
            mark_chance(bar, 0.0, color="black", linewidth=1.2)
    for i in range(nv):
        for j in range(nt):
            _annotate_cell(ax, cells, scale, image, i, j, alpha)
    _label_encoders(ax, cells.table, labels, controls)
    ax.set_xticks(np.arange(-0.5, nt, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, nv, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    ax.set_title(_heatmap_title(title, metric, cells, scale, alpha), fontsize=10)
    return ax


@dataclass(frozen=True)
class _Cells:
    """The vision x text matrices a heatmap shows, in one row and column order: ``table`` (the
    scores, with the encoders as index and columns) and ``(nv, nt)`` float arrays."""

    table: pd.DataFrame
    score: np.ndarray
    z: np.ndarray
    null_mean: np.ndarray
    p: np.ndarray
    chance: np.ndarray

    @classmethod
    def of(
        cls, scores: pd.DataFrame, metric: str, order: tuple[Sequence[str], Sequence[str]] | None
    ) -> _Cells:
        table = score_matrix(scores, metric, "score")
        if order is not None:
            rows = [v for v in order[0] if v in table.index]
            cols = [t for t in order[1] if t in table.columns]
            table = table.reindex(index=rows, columns=cols)
        others = {
            c: score_matrix(scores, metric, c).reindex_like(table).to_numpy(dtype=float)
            for c in ("z", "null_mean", "p", "chance")
        }
        return cls(table, table.to_numpy(dtype=float), **others)


@dataclass(frozen=True)
class _Scale:
    """What a cell's colour shows: ``values`` (nv, nt) through ``norm`` and ``cmap``."""

    values: np.ndarray
    norm: Any
    cmap: Any
    label: str
    has_null: bool


def _colour_scale(cells: _Cells) -> _Scale:
    """z against the null when there is one, else score minus the chance level when there is
    one (both centred on 0 = chance), else the raw score."""
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt

    z, score, chance = cells.z, cells.score, cells.chance
    if np.isfinite(z).any():
        finite = z[np.isfinite(z)]
        lim = max(3.0, float(np.abs(finite).max()))
        norm = mcolors.TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim)
        label = "z-score vs. shuffled pairs\n(0 = chance level)"
        return _Scale(z, norm, plt.get_cmap("RdBu_r"), label, has_null=True)
    if np.isfinite(chance).any():
        values = score - chance
        finite = values[np.isfinite(values)]
        lim = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
        norm = mcolors.TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim)
        label = "score − chance level\n(0 = chance)"
        return _Scale(values, norm, plt.get_cmap("RdBu_r"), label, has_null=False)
    return _Scale(score, None, plt.get_cmap("viridis"), "score (no null computed)", False)


def _annotate_cell(
    ax: Axes, cells: _Cells, scale: _Scale, image: Any, i: int, j: int, alpha: float
) -> None:
    """Score, z and a null floor worth showing in cell (i, j); hatched when p >= alpha."""
    import matplotlib.patches as mpatches

    score, z, p, null = cells.score[i, j], cells.z[i, j], cells.p[i, j], cells.null_mean[i, j]
    if not np.isfinite(score):
        return
    nonsig = np.isfinite(p) and p >= alpha
    value = scale.values[i, j]
    colour = "black" if not np.isfinite(value) else _text_colour(scale.cmap(image.norm(value)))
    text = _fmt(score)
    if np.isfinite(z):
        text += f"\n{_fmt_z(z)}"
        if np.isfinite(null) and abs(null) >= 0.005:
            text += f"\nnull {null:.2f}"  # worth showing: a floor (biased CKA, kNN)
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
        hatch = mpatches.Rectangle(
            (j - 0.5, i - 0.5),
            1,
            1,
            fill=False,
            hatch=NONSIG_HATCH,
            edgecolor="0.55",
            linewidth=0,
            gid=NONSIG_GID,
        )
        ax.add_patch(hatch)


def _label_encoders(
    ax: Axes, score: pd.DataFrame, labels: Mapping[str, str] | None, controls: Sequence[str]
) -> None:
    """Tick labels of the encoders; controls grey, italic, "(control)", set apart by a rule."""
    names = dict(labels) if labels is not None else short_labels([*score.index, *score.columns])
    control_set = set(controls)

    def tick(spec: str) -> str:
        return names.get(spec, spec) + (" (control)" if spec in control_set else "")

    ax.set_xticks(
        range(len(score.columns)), [tick(t) for t in score.columns], rotation=35, ha="right"
    )
    ax.set_yticks(range(len(score.index)), [tick(v) for v in score.index])
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


def _heatmap_title(
    title: str | None, metric: str, cells: _Cells, scale: _Scale, alpha: float
) -> str:
    """``title`` (default the metric's name) and what the hatching means."""
    title = metric_label(metric) if title is None else title
    pvals = cells.p
    n_nonsig = int((np.isfinite(pvals) & (pvals >= alpha)).sum())
    if scale.has_null and n_nonsig:
        title += f"\nhatched: p ≥ {alpha:g} (not above shuffled pairs)"
    elif scale.has_null and np.isfinite(pvals).any():
        title += f"\nevery pair above shuffled pairs (p < {alpha:g})"
    return title


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
