"""Figures of a ranking: pair heatmaps, metric agreement, top pairs, layer x layer heatmaps.

Every function draws on the ``ax`` it is given (or a new figure's Axes) and returns that Axes,
so notebooks and the CLI draw the same figures. matplotlib is imported lazily; the CLI selects
the Agg backend before it draws.

**Colour keeps chance visible.** A raw score misleads: biased linear CKA of unrelated features
sits far above 0 at small n (DESIGN.md), and mutual-kNN's chance level is about k/(n-1). So the
pair heatmap colours each cell by its z-score against the permutation null,
``z = (score - null_mean) / null_std``, on a diverging scale centred at 0: white is "no better
than shuffled pairs", red is above chance, blue below. The cell text is the raw score (what the
metric says), with the z below it. Cells whose permutation p is not below ``alpha`` are hatched
and their text is grey. Without a null (``permutations=0``) the colour is the score minus the
analytic chance level where the metric has one (white = chance), else the raw score on a
sequential scale, and the colour bar says which.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from alignkit.errors import AlignkitError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

METRIC_LABELS: dict[str, str] = {
    "linear_cka": "linear CKA (biased)",
    "linear_cka_unbiased": "linear CKA (unbiased)",
    "rbf_cka": "RBF CKA",
    "mutual_knn": "mutual kNN",
    "cknna": "CKNNA",
    "svcca": "SVCCA",
}

NONSIG_HATCH = "////"
NONSIG_GID = "nonsignificant"
BEST_GID = "best-layer-pair"


def metric_label(metric: str) -> str:
    """Readable name of a metric key (``linear_cka_unbiased`` -> ``linear CKA (unbiased)``)."""
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


def short_label(spec: str, max_len: int = 28) -> str:
    """A readable short name for an encoder spec.

    ``st:sentence-transformers/all-MiniLM-L6-v2`` -> ``all-MiniLM-L6-v2``;
    ``random-init:torchvision:mobilenet_v2`` -> ``rand-init mobilenet_v2``;
    ``random:image-512`` -> ``random image-512``. Options in brackets are kept. Names longer than
    ``max_len`` lose their middle.
    """
    m = re.match(r"^(.*?)(\[.*\])?$", spec)
    base, opts = (m.group(1), m.group(2) or "") if m else (spec, "")
    prefix = ""
    if base.startswith("random-init:"):
        prefix, base = "rand-init ", base[len("random-init:") :]
    elif base.startswith("random:"):
        prefix, base = "random ", base[len("random:") :]
    name = base.rsplit(":", 1)[-1].rsplit("/", 1)[-1] or base
    label = f"{prefix}{name}{opts}"
    if len(label) > max_len:
        keep = max_len - 1
        label = label[: (keep + 1) // 2] + "…" + label[len(label) - keep // 2 :]
    return label


def short_labels(specs: Sequence[str], max_len: int = 28) -> dict[str, str]:
    """``{spec: short label}``; specs whose short labels would collide keep more of their spec."""
    labels = {s: short_label(s, max_len) for s in specs}
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    for spec, label in labels.items():
        if counts[label] > 1:
            labels[spec] = spec if len(spec) <= 2 * max_len else short_label(spec, 2 * max_len)
    return labels


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _text_colour(rgba: Sequence[float]) -> str:
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def _fmt(value: float, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _fmt_z(z: float) -> str:
    return f"z={z:.0f}" if abs(z) >= 10 else f"z={z:.1f}"


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
) -> Axes:
    """Vision x text heatmap of one metric: score (and z, null mean) in each cell, colour = z.

    Args:
        scores: long-form table with :data:`alignkit.compare.SCORE_COLUMNS`.
        metric: which metric to draw.
        alpha: cells with permutation ``p >= alpha`` are hatched (not significantly above chance).
        labels: ``{spec: display name}``; default :func:`short_labels`.
    Returns:
        the Axes; the cell texts are ``ax.texts`` (one per cell with a score), and each hatched
        cell is a patch with ``gid == "nonsignificant"``.
    """
    import matplotlib.colors as mcolors
    import matplotlib.patches as mpatches
    import matplotlib.pyplot as plt

    score = score_matrix(scores, metric, "score")
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
    ax.set_xticks(range(nt), [names.get(t, t) for t in score.columns], rotation=35, ha="right")
    ax.set_yticks(range(nv), [names.get(v, v) for v in score.index])
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


def agreement_heatmap(
    tau: pd.DataFrame,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    n_pairs: int | None = None,
    min_pairs: int = 5,
) -> Axes:
    """Metric x metric matrix of Kendall τ between the rankings the metrics give the pairs.

    τ = 1: the two metrics order every pair the same way; 0: unrelated orders; -1: reversed.
    ``n_pairs`` (default ``tau.attrs["n_pairs"]``, as ``Ranking.agreement`` sets it) is how many
    pairs τ was computed over; below ``min_pairs`` the matrix is drawn faded, its values grey
    and italic, and the title says there are too few pairs to judge (τ = ±1 is easy over 2-4).
    """
    import matplotlib.pyplot as plt

    if n_pairs is None:
        n_pairs = tau.attrs.get("n_pairs")
    too_few = n_pairs is not None and n_pairs < min_pairs
    m = len(tau)
    ax = _axes(ax, (2.8 + 1.2 * m, 1.4 + 1.0 * m))
    cmap = plt.get_cmap("RdBu_r")
    values = tau.to_numpy(dtype=float)
    image = ax.imshow(
        np.ma.masked_invalid(values), cmap=cmap, vmin=-1, vmax=1, alpha=0.35 if too_few else 1.0
    )
    bar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("Kendall τ")
    for i in range(m):
        for j in range(m):
            v = values[i, j]
            colour = "black" if not np.isfinite(v) else _text_colour(cmap((v + 1) / 2))
            ax.text(
                j,
                i,
                _fmt(v, 2),
                ha="center",
                va="center",
                fontsize=10,
                color="0.45" if too_few else colour,
                fontstyle="italic" if too_few else "normal",
            )
    names = [metric_label(k) for k in tau.index]
    ax.set_xticks(range(m), names, rotation=30, ha="right")
    ax.set_yticks(range(m), names)
    if title is None:
        title = "Do the metrics rank the pairs alike?"
        if n_pairs:
            title += f"\nKendall τ over {n_pairs} pairs"
    if too_few:
        title += f"\ntoo few pairs to judge agreement ({n_pairs} < {min_pairs})"
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


def layer_heatmap(
    scores: np.ndarray,
    *,
    ax: Axes | None = None,
    metric: str = "",
    vision: str = "vision",
    text: str = "text",
    p_max: float | None = None,
    title: str | None = None,
    annotate: bool | None = None,
) -> Axes:
    """Layer x layer heatmap of one pair: ``scores`` is ``(Lv, Lt)`` (vision layers on rows).

    The best cell is outlined (a patch with ``gid == "best-layer-pair"``); ``p_max`` is the
    permutation p-value of that maximum against the null of the maximum over all layer pairs,
    which corrects for having picked the best of ``Lv * Lt`` cells. Values are written in the
    cells when ``annotate`` (default: when there are at most 144 cells).
    """
    import matplotlib.patches as mpatches
    import matplotlib.pyplot as plt

    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or scores.size == 0:
        raise AlignkitError(
            "layer scores must be a non-empty (vision layers, text layers) matrix: "
            f"got shape {scores.shape}"
        )
    lv, lt = scores.shape
    ax = _axes(ax, (max(4.8, 2.2 + 0.55 * lt), max(3.6, 1.8 + 0.45 * lv)))
    cmap = plt.get_cmap("viridis")
    image = ax.imshow(np.ma.masked_invalid(scores), cmap=cmap, origin="lower", aspect="auto")
    bar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label(metric_label(metric) if metric else "score")
    if annotate is None:
        annotate = lv * lt <= 144
    if annotate:
        for i in range(lv):
            for j in range(lt):
                v = scores[i, j]
                if np.isfinite(v):
                    ax.text(
                        j,
                        i,
                        f"{v:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color=_text_colour(cmap(image.norm(v))),
                    )
    if np.isfinite(scores).any():
        bi, bj = np.unravel_index(np.nanargmax(scores), scores.shape)
        ax.add_patch(
            mpatches.Rectangle(
                (bj - 0.5, bi - 0.5),
                1,
                1,
                fill=False,
                edgecolor="#e74c3c",
                linewidth=2.2,
                gid=BEST_GID,
            )
        )
    ax.set_xlabel(f"{short_label(text)} layer")
    ax.set_ylabel(f"{short_label(vision)} layer")
    ax.set_xticks(range(lt))
    ax.set_yticks(range(lv))
    if title is None:
        title = f"{short_label(vision)} × {short_label(text)}"
        if np.isfinite(scores).any():
            title += f"\nbest L{bi}×L{bj} = {scores[bi, bj]:.3f}"
            if p_max is not None and np.isfinite(p_max):
                title += f", p(max, corrected) = {p_max:.3g}"
    ax.set_title(title, fontsize=9.5)
    return ax


__all__ = [
    "METRIC_LABELS",
    "agreement_heatmap",
    "heatmap",
    "layer_heatmap",
    "metric_label",
    "score_matrix",
    "short_label",
    "short_labels",
    "top_pairs",
]
