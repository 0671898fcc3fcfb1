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

from alignkit.plots._style import (
    BEST_GID,
    NONSIG_GID,
    NONSIG_HATCH,
    metric_label,
    short_label,
    short_labels,
)
from alignkit.plots.agreement import agreement_heatmap
from alignkit.plots.layers import layer_heatmap
from alignkit.plots.pairs import heatmap, score_matrix, top_pairs

__all__ = [
    "BEST_GID",
    "NONSIG_GID",
    "NONSIG_HATCH",
    "agreement_heatmap",
    "heatmap",
    "layer_heatmap",
    "metric_label",
    "score_matrix",
    "short_label",
    "short_labels",
    "top_pairs",
]
