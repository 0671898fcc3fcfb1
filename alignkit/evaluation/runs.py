"""Moved: trained run folders are :mod:`alignkit.runs` (one runs concept), loading them
:mod:`alignkit.aligned`, the comparison table :mod:`alignkit.evaluation.table`.

The old names still resolve here, with a ``DeprecationWarning`` that says where they went.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_MOVED = {
    "RUN_FORMATS": "alignkit.runs.trained",
    "REQUIRED_FILES": "alignkit.runs.trained",
    "write_run_config": "alignkit.runs.trained",
    "check_run_folder": "alignkit.runs.trained",
    "METRICS_FORMAT": "alignkit.runs.metrics",
    "write_metrics": "alignkit.runs.metrics",
    "read_metrics": "alignkit.runs.metrics",
    "atomic_write_text": "alignkit._files",
    "load_pair": "alignkit.aligned",
    "comparison_table": "alignkit.evaluation.table",
    "format_table": "alignkit.evaluation.table",
}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    where = _MOVED[name]
    warnings.warn(
        f"alignkit.evaluation.runs.{name} moved to {where}.{name}; import it from there",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(where), name)
