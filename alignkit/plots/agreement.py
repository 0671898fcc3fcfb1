"""The metric x metric agreement figure (Kendall τ between the metrics' orders of the pairs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

from alignkit._words import counted
from alignkit.plots._style import _axes, _fmt, _text_colour, metric_label


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
            title += f"\nKendall τ over {counted(n_pairs, 'pair')}"
    if too_few:
        title += f"\ntoo few pairs to judge agreement ({n_pairs} < {min_pairs})"
    ax.set_title(title, fontsize=10)
    return ax
