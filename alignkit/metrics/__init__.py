"""Representation similarity metrics with calibration (issue #4).

Conventions are in the module docstrings: :mod:`.cka` (linear, RBF and minibatch CKA),
:mod:`.neighbours` (mutual-kNN, CKNNA), :mod:`.svcca`, :mod:`.alignability` (held-out ridge,
Procrustes and CCA retrieval), :mod:`.calibration` (permutation nulls,
subsampling intervals). Every metric takes two ``(n, d)`` feature matrices of the same probe rows
(torch tensors or numpy arrays, any float dtype, any device) and returns a float.
:mod:`.pairs` scores every vision x text pair with them (:func:`score_pairs`, imported lazily:
it needs pandas).
"""

from __future__ import annotations

import importlib
from typing import Any

from alignkit.metrics.alignability import (
    alignability_chance,
    cca_alignability,
    fold_labels,
    procrustes_alignability,
    ridge_alignability,
)
from alignkit.metrics.calibration import (
    MaxOverCells,
    NullResult,
    analytic_null,
    max_over_cells,
    permutation_null,
    subsample_interval,
)
from alignkit.metrics.cka import linear_cka, minibatch_cka
from alignkit.metrics.neighbours import (
    MutualKnnResult,
    NeighbourResult,
    cknna,
    knn_graph,
    knn_lists,
    mutual_knn,
    mutual_knn_chance,
    mutual_knn_detail,
)
from alignkit.metrics.rbf import rbf_cka
from alignkit.metrics.registry import METRICS, Metric, get_metric, list_metrics
from alignkit.metrics.svcca import svcca

__all__ = [
    "METRICS",
    "MaxOverCells",
    "Metric",
    "MutualKnnResult",
    "NeighbourResult",
    "NullResult",
    "alignability_chance",
    "analytic_null",
    "cca_alignability",
    "cknna",
    "fold_labels",
    "get_metric",
    "knn_graph",
    "knn_lists",
    "linear_cka",
    "list_metrics",
    "max_over_cells",
    "minibatch_cka",
    "mutual_knn",
    "mutual_knn_chance",
    "mutual_knn_detail",
    "permutation_null",
    "procrustes_alignability",
    "rbf_cka",
    "ridge_alignability",
    "subsample_interval",
    "svcca",
    "DEFAULT_METRICS",
    "LayerScores",
    "SCORE_COLUMNS",
    "score_layers",
    "score_pairs",
]

_PAIRS = ("DEFAULT_METRICS", "LayerScores", "SCORE_COLUMNS", "score_layers", "score_pairs")


def __getattr__(name: str) -> Any:
    if name in _PAIRS:
        value = getattr(importlib.import_module("alignkit.metrics.pairs"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'alignkit.metrics' has no attribute {name!r}")
