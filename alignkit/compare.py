"""Removed: all-pairs scoring is :mod:`alignkit.metrics.pairs` (``alignkit.score_pairs``)."""

raise ImportError(
    "alignkit.compare was removed: import score_pairs, score_layers, LayerScores, "
    "SCORE_COLUMNS and DEFAULT_METRICS from alignkit.metrics.pairs (or use alignkit.score_pairs)"
)
