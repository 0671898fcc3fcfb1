"""The feature store's files: fixed-dtype safetensors files, read memory-mapped and written
streamed, so that a store of millions of rows is never held in memory whole.

A file is safetensors' documented layout: 8 bytes of little-endian header length, a JSON header
(per tensor its ``dtype``, ``shape`` and ``data_offsets`` into the data; string metadata under
``__metadata__``), then the raw little-endian data. :func:`map_tensor` maps one tensor's bytes
with ``numpy.memmap`` at its offset, copy-on-write (mode ``"c"``): pages come from the page cache
as rows are touched (file-backed memory the kernel can reclaim), and an in-place change by a
caller stays private to it, never reaching the file and never faulting. Why not safetensors'
own ``safe_open(...).get_tensor``: version 0.8 happens to return an mmap-backed tensor, but that
is not documented behaviour (earlier versions copied the tensor into RAM), and ``get_slice``
reads one contiguous range, not the scattered rows of a training batch; ``numpy.memmap`` is a
documented mapping whose rows torch gathers directly. :func:`write_streamed` writes the same
layout from pieces (shards, themselves mapped), one piece in memory at a time.

Stored dtypes (:data:`STORE_DTYPES`): ``float32`` (the default) and ``float16`` (half the disk
and page cache; a float16 entry holds the float32 features rounded to nearest, and readers
upcast one batch at a time).
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from alignkit._files import atomic_path
from alignkit.errors import AlignkitError, unknown_key

__all__ = ["STORE_DTYPES", "check_store_dtype", "map_tensor", "torch_dtype", "write_streamed"]

#: Stored dtype name -> (torch dtype, safetensors dtype code, numpy dtype).
STORE_DTYPES: dict[str, tuple[torch.dtype, str, type]] = {
    "float32": (torch.float32, "F32", np.float32),
    "float16": (torch.float16, "F16", np.float16),
}
_BY_CODE = {code: (name, np_type) for name, (_, code, np_type) in STORE_DTYPES.items()}
_MAX_HEADER = 1 << 30  # a larger "header length" means the file is not safetensors


def check_store_dtype(name: str) -> str:
    """``name`` when it is a stored dtype (:data:`STORE_DTYPES`); else an error listing them."""
    if name not in STORE_DTYPES:
        raise unknown_key("store dtype (store_dtype)", name, list(STORE_DTYPES))
    return name


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a stored dtype name (``"float16"`` -> ``torch.float16``)."""
    return STORE_DTYPES[check_store_dtype(name)][0]


def _header(path: Path) -> tuple[dict, int]:
    """(the JSON header, the byte offset where the data starts); ValueError when not safetensors."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError("shorter than a safetensors header")
        (size,) = struct.unpack("<Q", raw)
        if size > min(path.stat().st_size - 8, _MAX_HEADER):
            raise ValueError(f"header length {size} does not fit the file")
        return json.loads(f.read(size)), 8 + size


def map_tensor(path: str | Path, name: str = "features") -> tuple[torch.Tensor, dict[str, str]]:
    """The tensor ``name`` of a safetensors file, memory-mapped (copy-on-write), and the file's
    string metadata. Nothing is read until rows are touched.

    Raises:
        ValueError: the file is truncated, not safetensors, lacks ``name``, or stores it in a
            dtype other than :data:`STORE_DTYPES`.
    """
    path = Path(path)
    try:
        head, start = _header(path)
        entry = head[name]
        shape = tuple(int(s) for s in entry["shape"])
        begin, end = (int(o) for o in entry["data_offsets"])
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
    if entry.get("dtype") not in _BY_CODE:
        raise ValueError(f"tensor {name!r} is {entry.get('dtype')}, expected F32 or F16")
    np_type = _BY_CODE[entry["dtype"]][1]
    count = int(np.prod(shape, dtype=np.int64))
    if end - begin != count * np.dtype(np_type).itemsize or start + end > path.stat().st_size:
        raise ValueError(f"tensor {name!r} {list(shape)} does not fit the file (truncated?)")
    meta = {str(k): str(v) for k, v in (head.get("__metadata__") or {}).items()}
    if count == 0:
        return torch.empty(shape, dtype=STORE_DTYPES[_BY_CODE[entry["dtype"]][0]][0]), meta
    array = np.memmap(path, np_type, "c", offset=start + begin, shape=shape)
    with warnings.catch_warnings():  # a copy-on-write map is writable; nothing to warn about
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array), meta


def write_streamed(
    path: str | Path,
    pieces: Sequence[torch.Tensor],
    metadata: dict[str, str],
    dtype: str = "float32",
    name: str = "features",
) -> None:
    """Write one safetensors tensor ``name`` that is ``pieces`` concatenated along the row axis
    (the second to last: pieces are ``(rows_i, d)`` or ``(L, rows_i, d)``), stored as ``dtype``,
    atomically and durably. One piece (or one layer of one piece) is converted at a time, so
    mapped pieces keep memory bounded by a piece.

    Raises:
        AlignkitError: the pieces disagree in their other axes, or there are none.
        OSError: the file cannot be written.
    """
    torch_type, code, _ = STORE_DTYPES[check_store_dtype(dtype)]
    if not pieces:
        raise AlignkitError("write_streamed needs at least one piece of rows: got none")
    rest = {(tuple(p.shape[:-2]), p.shape[-1]) for p in pieces}
    if len(rest) != 1 or pieces[0].ndim not in (2, 3):
        shapes = sorted({tuple(p.shape) for p in pieces})
        raise AlignkitError(
            f"pieces must be (rows, d) or (L, rows, d) with the same L and d: got {shapes[:3]}"
        )
    layers = pieces[0].shape[0] if pieces[0].ndim == 3 else None
    rows = sum(int(p.shape[-2]) for p in pieces)
    shape = [rows, int(pieces[0].shape[-1])]
    if layers is not None:
        shape.insert(0, int(layers))
    nbytes = int(np.prod(shape, dtype=np.int64)) * torch_type.itemsize
    head = {
        "__metadata__": metadata,
        name: {"dtype": code, "shape": [int(s) for s in shape], "data_offsets": [0, nbytes]},
    }
    raw = json.dumps(head, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for layer in range(layers or 1):  # (L, n, d) is stored layer after layer
                for piece in pieces:
                    block = piece if layers is None else piece[layer]
                    f.write(block.to("cpu", torch_type).contiguous().numpy().data)
            f.flush()
            os.fsync(f.fileno())
