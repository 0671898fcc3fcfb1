"""Small file helpers every part of alignkit shares: atomic writes, content hashes, locks.

    with atomic_path(dest) as tmp:        # write tmp; it becomes dest only if the block succeeds
        save_file(tensors, str(tmp))
    atomic_write_text(path, json_text)    # the same for a text file
    file_hash(path)                       # sha256 hex of the bytes ("sha1", "md5" ... also work)
    with file_lock(path.with_suffix(".lock")):   # one process at a time (filelock package)
        ...

Atomicity comes from writing a temporary file in the *same folder* and ``os.replace``-ing it
onto the target: a reader sees the old file or the new one, never half a file, even when the
writer is killed. Run folders (many files swapped in at once) are :mod:`alignkit.runs`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

_CHUNK = 1 << 22  # 4 MiB reads: fast on large checkpoints, small enough to keep memory flat


def temp_sibling(path: Path, kind: str = "tmp") -> Path:
    """A hidden, unique name beside ``path`` (same filesystem, so a rename onto it is atomic)."""
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: str | Path, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` when the block succeeds,
    delete it when the block raises.

    Args:
        final: the file to (re)place; its folder is created.
        durable: ``fsync`` the file before the rename, so that after a power cut the name never
            points at an empty file (costs a disk flush; worth it for cache entries).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    try:
        yield tmp
        if tmp.exists():  # temporary files may be private (0600); the result honours the umask
            os.chmod(tmp, 0o666 & ~_umask())
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def file_hash(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 4 MiB chunks.

    ``algorithm`` is any :func:`hashlib.new` name (``"sha256"``, ``"sha1"``, ``"md5"``); an
    unknown one raises ``ValueError``.
    """
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(path: str | Path, *, timeout: float = -1) -> Iterator[None]:
    """An exclusive lock between processes and threads, held for the ``with`` block.

    A thin wrapper over ``filelock.FileLock`` (OS locks where the platform has them); ``path`` is
    the lock file (its folder is created), ``timeout`` seconds to wait (``-1`` = forever), after
    which ``filelock.Timeout`` is raised.
    """
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path), timeout=timeout):
        yield


__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "file_hash",
    "file_lock",
    "temp_sibling",
]
