"""Atomic safetensors files: written to a temporary name beside the target, then renamed."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from alignkit._files import atomic_path
from alignkit._files import file_hash as sha256_file

__all__ = ["atomic_path", "load_tensor", "save_tensor", "sha256_file"]


def save_tensor(
    path: Path, tensor: torch.Tensor, metadata: dict[str, str], dtype: torch.dtype = torch.float32
) -> None:
    """Write one tensor named ``features`` (CPU, stored as ``dtype``: float32 unless the store
    asks for float16) and string ``metadata``, atomically.

    Raises OSError when the file cannot be written, whatever layer failed.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    tensor = tensor.detach().to("cpu", dtype).contiguous()
    with atomic_path(Path(path)) as tmp:
        try:
            save_file({"features": tensor}, str(tmp), metadata=metadata)
        except SafetensorError as exc:  # its I/O failures (a folder removed meanwhile, a full
            raise OSError(f"could not write {tmp}: {exc}") from exc  # disk) are OSErrors here
        with open(tmp, "rb+") as f:  # durable before the rename makes it visible
            os.fsync(f.fileno())


def load_tensor(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    """Read a file written by :func:`save_tensor`; any failure (truncated, not safetensors, no
    ``features`` tensor) raises ``ValueError``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensor = f.get_tensor("features")
    except Exception as exc:  # safetensors raises several types for damaged files
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
    return tensor, metadata
