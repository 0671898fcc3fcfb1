"""Moved: the predictivity study is :mod:`alignkit.evaluation.predictivity` (with evaluation).

The old names still resolve here, with a ``DeprecationWarning`` that says where they went.
"""

from __future__ import annotations

import warnings
from typing import Any

_NEW = "alignkit.evaluation.predictivity"


def __getattr__(name: str) -> Any:
    import alignkit.evaluation.predictivity as new

    if name.startswith("__") or not hasattr(new, name):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r} (see {_NEW})")
    warnings.warn(
        f"alignkit.predictivity.{name} moved to {_NEW}.{name}; import it from there",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(new, name)
