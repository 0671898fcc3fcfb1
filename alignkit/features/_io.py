"""Atomic safetensors files: written to a temporary name beside the target, then renamed."""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` when the block succeeds,
    delete it when it fails. Same folder, so the rename is atomic (``os.replace``)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        if tmp.exists():  # temporary files are private (0600); the result honours the umask
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def save_tensor(path: Path, tensor: torch.Tensor, metadata: dict[str, str]) -> None:
    """Write one tensor named ``features`` (float32, CPU) and string ``metadata``, atomically.

    Raises OSError when the file cannot be written, whatever layer failed.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    tensor = tensor.detach().to("cpu", torch.float32).contiguous()
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
