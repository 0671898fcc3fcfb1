"""The layer x layer heatmap of one encoder pair."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from alignkit.errors import AlignkitError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

from alignkit.plots._style import (
    BEST_GID,
    _axes,
    _text_colour,
    mark_chance,
    metric_label,
    short_label,
)


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
    vmin: float | None = None,
    vmax: float | None = None,
    chance: float | None = None,
) -> Axes:
    """Layer x layer heatmap of one pair: ``scores`` is ``(Lv, Lt)`` (vision layers on rows).

    The best cell is outlined (a patch with ``gid == "best-layer-pair"``); ``p_max`` is the
    permutation p-value of that maximum against the null of the maximum over all layer pairs,
    which corrects for having picked the best of ``Lv * Lt`` cells. Values are written in the
    cells when ``annotate`` (default: when there are at most 144 cells).

    ``vmin``/``vmax`` fix the colour scale (``Ranking.plot_layers`` passes one scale for every
    pair, so a control's low scores look low); ``chance`` (the metric's chance level, where it
    has one) is marked on the colour bar when it lies within the colour scale. Layer i is the
    output of the encoder's i-th block (0 = the first, the last index = the encoder's final
    layer).
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
    image = ax.imshow(
        np.ma.masked_invalid(scores), cmap=cmap, origin="lower", aspect="auto", vmin=vmin, vmax=vmax
    )
    bar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    shared = " (scale shared by all pairs)" if vmin is not None and vmax is not None else ""
    bar.set_label((metric_label(metric) if metric else "score") + shared)
    if chance is not None and np.isfinite(chance):
        mark_chance(bar, float(chance), color="white", linewidth=1.5, linestyle="--")
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
    ax.set_xlabel(f"{short_label(text)} layer (0 = first block, {lt - 1} = last)")
    ax.set_ylabel(f"{short_label(vision)} layer (0 = first block, {lv - 1} = last)")
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
