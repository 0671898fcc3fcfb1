"""Deprecated: the projectors, losses and trainer moved to :mod:`alignkit.training`.

``from alignkit.projectors import TrainConfig`` still works and warns once per name; write
``from alignkit.training import TrainConfig``. The submodules (``alignkit.projectors.trainer``
and the rest) are gone: import them from ``alignkit.training``.
"""

from __future__ import annotations

import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    import alignkit.training as training

    if name.startswith("__") or name not in training.__all__:
        raise AttributeError(f"module 'alignkit.projectors' has no attribute {name!r}")
    warnings.warn(
        f"alignkit.projectors is deprecated: import {name} from alignkit.training",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(training, name)


def __dir__() -> list[str]:
    import alignkit.training as training

    return list(training.__all__)
