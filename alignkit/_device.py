"""Device selection and mixed precision, in one place so every module agrees."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from alignkit.errors import AlignkitError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) picks CUDA when available, else CPU; torch parses anything else."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise AlignkitError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N': got {device!r}"
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise AlignkitError(f"device {device!r} was asked for but CUDA is not available here")
    return resolved


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on GPU only; a no-op on CPU so CPU numbers stay float32-exact.

    ``precision``: ``"auto"`` (bf16 where supported, else fp16, on CUDA), ``"fp32"``, ``"bf16"``,
    ``"fp16"``.
    """
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    if precision == "auto":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    else:
        raise AlignkitError(f"precision must be one of auto, fp32, bf16, fp16: got {precision!r}")
    return torch.autocast(device_type="cuda", dtype=dtype)


@contextlib.contextmanager
def inference(device: torch.device, precision: str = "auto") -> Iterator[None]:
    """``torch.inference_mode`` plus :func:`autocast`: the context every encoder forward runs in."""
    with torch.inference_mode(), autocast(device, precision):
        yield
