"""Former home of all-pairs scoring, now :mod:`alignkit.metrics.pairs` (issue #9 item 2).

Kept as a re-export so ``from alignkit.compare import score_pairs`` keeps working; new code
imports from :mod:`alignkit.metrics` (or ``alignkit.score_pairs``).
"""

from __future__ import annotations

from alignkit.metrics.pairs import (
    DEFAULT_METRICS,
    SCORE_COLUMNS,
    LayerScores,
    score_layers,
    score_pairs,
)

__all__ = ["DEFAULT_METRICS", "SCORE_COLUMNS", "LayerScores", "score_layers", "score_pairs"]
