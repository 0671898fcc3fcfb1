"""Input validation at the public boundary of :mod:`alignkit.metrics`.

Public functions call these once, then hand the checked tensors to private kernels that assume:
2-D ``(n, d)`` floating tensors (float32 or float64), finite, on one device, same row count.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from alignkit.errors import AlignkitError

ArrayLike = Any  # torch.Tensor | np.ndarray: kept loose so numpy users need not import torch


def as_features(a: ArrayLike, name: str) -> torch.Tensor:
    """One feature matrix as a finite ``(n, d)`` float32/float64 tensor on its own device.

    float16/bfloat16 become float32 (CPU GEMMs in half precision are slow and inexact);
    integer and bool inputs become float64.
    """
    if isinstance(a, torch.Tensor):
        t = a.detach()
    elif isinstance(a, np.ndarray):
        if a.dtype.kind not in "biuf":
            raise AlignkitError(
                f"{name} must hold real numbers: got a numpy array of dtype {a.dtype}"
            )
        t = torch.as_tensor(np.ascontiguousarray(a))
    else:
        raise AlignkitError(
            f"{name} must be a torch tensor or numpy array of shape (n, d): got {type(a).__name__}"
        )
    if t.ndim != 2:
        raise AlignkitError(
            f"{name} must be a 2-D (n, d) feature matrix: got shape {tuple(t.shape)}"
        )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise AlignkitError(
            f"{name} must have at least one row and one column: got shape {tuple(t.shape)}"
        )
    if t.is_complex():
        raise AlignkitError(f"{name} must hold real numbers: got dtype {t.dtype}")
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    elif not t.is_floating_point():
        t = t.double()
    if bool(torch.isfinite(t.sum())):  # one reduction; NaN/Inf anywhere makes the sum non-finite
        return t
    bad = ~torch.isfinite(t).all(dim=1)  # (n,); only reached with NaN/Inf or an overflowing sum
    n_bad = int(bad.sum())
    if n_bad:
        first = int(torch.nonzero(bad)[0, 0])
        raise AlignkitError(
            f"{name} must be finite: {n_bad} of {t.shape[0]} rows hold NaN or Inf "
            f"(first: row {first})"
        )
    return t


def common_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32: the GEMM dtype of a pair."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def as_pair(
    x: ArrayLike, y: ArrayLike, names: tuple[str, str] = ("x", "y")
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two feature matrices of the same probe rows, on one device, in a common float dtype."""
    xt, yt = as_features(x, names[0]), as_features(y, names[1])
    if xt.shape[0] != yt.shape[0]:
        raise AlignkitError(
            f"{names[0]} and {names[1]} must describe the same probe rows: "
            f"got {xt.shape[0]} rows and {yt.shape[0]} rows"
        )
    if xt.device != yt.device:
        raise AlignkitError(
            f"{names[0]} and {names[1]} must be on the same device: got {xt.device} and {yt.device}"
        )
    dtype = common_dtype(xt, yt)
    return xt.to(dtype), yt.to(dtype)


def check_min_rows(n: int, minimum: int, what: str) -> None:
    if n < minimum:
        raise AlignkitError(f"{what} needs at least {minimum} rows: got n={n}")


def check_k(k: Any, n: int) -> int:
    """Neighbourhood size: an int with 1 <= k <= n - 1 (self is excluded)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise AlignkitError(f"k must be a positive integer: got {k!r}")
    k = int(k)
    if k < 1:
        raise AlignkitError(f"k must be a positive integer: got k={k}")
    if k >= n:
        raise AlignkitError(
            f"k must be smaller than the number of rows (self is excluded): got k={k}, n={n}"
        )
    return k


def check_positive(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise AlignkitError(f"{name} must be a positive number: got {value!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise AlignkitError(f"{name} must be a positive number: got {value!r}")
    return v
