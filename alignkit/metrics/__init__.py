"""Representation similarity metrics with calibration (issue #4).

Conventions are in the module docstrings: :mod:`.cka` (linear, RBF and minibatch CKA),
:mod:`.neighbours` (mutual-kNN, CKNNA), :mod:`.svcca`, :mod:`.calibration` (permutation nulls,
subsampling intervals). Every metric takes two ``(n, d)`` feature matrices of the same probe rows
(torch tensors or numpy arrays, any float dtype, any device) and returns a float.
"""

from __future__ import annotations

from alignkit.metrics.calibration import NullResult, permutation_null, subsample_interval
from alignkit.metrics.cka import linear_cka, minibatch_cka, rbf_cka
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
from alignkit.metrics.registry import METRICS, Metric, get_metric, list_metrics
from alignkit.metrics.svcca import svcca

__all__ = [
    "METRICS",
    "Metric",
    "MutualKnnResult",
    "NeighbourResult",
    "NullResult",
    "cknna",
    "get_metric",
    "knn_graph",
    "knn_lists",
    "linear_cka",
    "list_metrics",
    "minibatch_cka",
    "mutual_knn",
    "mutual_knn_chance",
    "mutual_knn_detail",
    "permutation_null",
    "rbf_cka",
    "subsample_interval",
    "svcca",
]
