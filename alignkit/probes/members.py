"""Images that live inside a container file (a tar shard, a parquet or arrow table), read lazily.

A probe row of a webdataset shard or an HF dataset does not copy its image out at load: its
``ProbeRow.image`` is a small picklable reader that fetches the bytes when a DataLoader worker
asks for them. Every reader here has the same three faces:

- ``reader()`` -> the decoded image (:func:`alignkit.images.load_image` of its bytes), so rows
  read from a container give the same pixels as the same file on disk;
- ``reader.read_bytes()`` -> the image file's bytes, exactly as stored;
- ``str(reader)`` -> where the bytes live (``shards/00003.tar key 000031234``), for error lines.

:meth:`alignkit.probes.ProbeRow.image_digest` hashes ``read_bytes()``, so a row keeps the digest
(and the probe the fingerprint and cache keys) of the same image given as a file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

from PIL import Image
from tqdm.auto import tqdm

from alignkit.images import load_image
from alignkit.probes.base import decode_check, image_bytes_digest
from alignkit.probes.checks import FileCheck

_PROGRESS_MIN = 200  # below this a bar is noise


@runtime_checkable
class MemberImage(Protocol):
    """A lazily read image inside a container file (see the module docstring)."""

    def read_bytes(self) -> bytes: ...

    def __call__(self) -> Image.Image: ...


def is_member(image: object) -> bool:
    """Whether a row's image is a reader of an image inside a container (not a file path)."""
    return callable(image) and hasattr(image, "read_bytes")


def decode_member(reader: MemberImage) -> Image.Image:
    """The reader's image as upright 8-bit RGB (:func:`alignkit.images.load_image`)."""
    return load_image(reader.read_bytes())


def _check_one(reader: MemberImage, level: str) -> FileCheck:
    try:
        data = reader.read_bytes()
    except Exception as exc:  # a truncated shard, a vanished file: reported with the row
        return FileCheck("", " ".join(str(exc).split()) or type(exc).__name__)
    if not data:
        return FileCheck("", "empty image (0 bytes)")
    # no location here: the row's own `where` (shard and key, file and row) is put before it
    return FileCheck(image_bytes_digest(data), decode_check(data) if level == "decode" else None)


def check_members(
    readers: Sequence[MemberImage], *, level: str = "decode", progress: bool = True
) -> list[FileCheck]:
    """Read (and with ``level="decode"`` fully decode) each reader's image, in order: its sha256
    and the reason it is bad (``None`` when good), as :func:`alignkit.probes.checks.check_images`
    does for files. Runs in a small thread pool (reads, hashing and decoding release the GIL)."""
    workers = max(1, min(4, os.cpu_count() or 1))
    bar = tqdm(
        total=len(readers),
        desc="checking images",
        unit="img",
        disable=not progress or len(readers) < _PROGRESS_MIN,
        leave=False,
    )
    out: list[FileCheck] = []
    with ThreadPoolExecutor(workers) as pool:
        for check in pool.map(lambda r: _check_one(r, level), readers):
            out.append(check)
            bar.update(1)
    bar.close()
    return out
