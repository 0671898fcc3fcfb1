"""Token features in the cache shard by shard (:mod:`alignkit.features.tokens`): a process
writes the rows ``[start, stop)`` it is given as shards ``<key>.partial/rows-<a>-<b>.safetensors``
(tensors ``tokens`` (rows, T_shard, D) float16 and ``mask`` (rows, T_shard) bool), reusing the
shards a stopped run left, and one process commits the entry from every shard on disk, padding
each to the longest token count (memory: one shard). Under ``torchrun`` each rank writes its own
block of rows and rank 0 commits, so no rank holds another's tokens.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from alignkit.errors import AlignkitError
from alignkit.features._io import atomic_path, sha256_file
from alignkit.features._shards import first_gap, sound_shards
from alignkit.features._work import missing_chunks
from alignkit.features.keys import FORMAT_VERSION

if TYPE_CHECKING:
    from alignkit.features.cache import FeatureCache

log = logging.getLogger("alignkit.features.tokens")


# -- the file format ------------------------------------------------------------------------------
def _header(n: int, t: int, d: int, metadata: dict[str, str]) -> bytes:
    token_bytes = n * t * d * 2
    head = {
        "__metadata__": metadata,
        "tokens": {"dtype": "F16", "shape": [n, t, d], "data_offsets": [0, token_bytes]},
        "mask": {
            "dtype": "BOOL",
            "shape": [n, t],
            "data_offsets": [token_bytes, token_bytes + n * t],
        },
    }
    raw = json.dumps(head, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def _write_streamed(
    path: Path, shards: list[tuple[int, int, Path]], n: int, t: int, d: int, meta: dict[str, str]
) -> None:
    """Write the final safetensors file from shard files, one shard in memory at a time."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(_header(n, t, d, meta))
            for _, _, shard in shards:  # tokens, padded to T
                tok, _ = _read_shard(shard)
                f.write(pad(tok, t).numpy().tobytes())
            for _, _, shard in shards:  # then the masks
                _, mask = _read_shard(shard)
                f.write(pad(mask, t).numpy().astype(np.uint8).tobytes())
            f.flush()
            os.fsync(f.fileno())


def pad(x: torch.Tensor, t: int) -> torch.Tensor:
    """``(n, T_x, ...)`` zero-padded to ``(n, t, ...)`` along the token axis."""
    if x.shape[1] == t:
        return x.contiguous()
    shape = (x.shape[0], t - x.shape[1], *x.shape[2:])
    return torch.cat([x, torch.zeros(shape, dtype=x.dtype)], dim=1)


def _read_shard(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    data = load_file(str(path))
    return data["tokens"], data["mask"]


# -- shards ---------------------------------------------------------------------------------------
def _shard_shapes(path: Path) -> tuple[list[int], list[int]]:
    """The ``tokens`` and ``mask`` shapes of a shard, from its header (its data is not read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.get_slice("tokens").get_shape()), list(f.get_slice("mask").get_shape())


def shards_in(
    partial: Path, start: int = 0, stop: int | None = None
) -> list[tuple[int, int, Path]]:
    """Sound shards inside rows ``[start, stop)``, non-overlapping and covering the most rows,
    sorted: ``(a, b, path)``. A damaged shard is deleted with a warning (its rows are computed
    again)."""

    def sound(path: Path, a: int, b: int) -> Path | None:
        try:
            tok, mask = _shard_shapes(path)
        except Exception:  # noqa: BLE001 - safetensors raises several types for damaged files
            return None
        return path if len(tok) == 3 and tok[0] == b - a and mask == tok[:2] else None

    return sound_shards(partial, start, stop, sound, "a token entry")


def write_rows(job: Any, store: FeatureCache, key: str, start: int, stop: int) -> None:
    """Write rows ``[start, stop)`` of the token entry ``key`` as shards of ``shard_batches``
    batches (cut at global multiples, so any world size cuts them alike), skipping rows that
    sound shards already hold. ``job``: a ``_TokenJob`` (``batches(a, b)`` yields
    ``(tokens (B, T, D) float16, mask (B, T) bool)``)."""
    from safetensors.torch import save_file

    partial = store.path(key).with_suffix(".partial")
    shard_rows = job.batch_size * store.shard_batches
    have = [(a, b) for a, b, _ in shards_in(partial, start, stop)]
    todo = missing_chunks(start, stop, shard_rows, have)
    t0 = time.perf_counter()
    for a, b in todo:
        parts = list(job.batches(a, b))
        t = max(tok.shape[1] for tok, _ in parts)
        tokens = torch.cat([pad(tok, t) for tok, _ in parts])
        mask = torch.cat([pad(m, t) for _, m in parts])
        with atomic_path(partial / f"rows-{a:09d}-{b:09d}.safetensors") as tmp:
            save_file({"tokens": tokens.contiguous(), "mask": mask.contiguous()}, str(tmp))
    rows = sum(b - a for a, b in todo)
    log.info(
        "%s: token features of %d rows in %.1f s", job.enc.name, rows, time.perf_counter() - t0
    )


def commit(
    store: FeatureCache,
    key: str,
    ids: tuple[str, ...],
    prov: dict[str, Any],
    token_format: int,
) -> Path:
    """Commit the token entry ``key`` from its shards, which must cover rows ``[0, len(ids))``:
    the tensor file streamed from them (padded to the longest token count), then the sidecar;
    the shards are removed. Returns the tensor file's path.

    Raises:
        AlignkitError: the shards leave rows out (naming the first); nothing is removed.
    """
    path = store.path(key)
    partial = path.with_suffix(".partial")
    n = len(ids)
    shards = shards_in(partial, 0, n)
    if first_gap(shards) != n:
        raise AlignkitError(
            f"the token shards of cache entry {key} must cover rows [0, {n}): the first row "
            f"missing is {first_gap(shards)} (under torchrun every rank must see the same "
            f"cache folder: {store.root}); run the extraction again to compute it"
        )
    t_max, d = 0, 0
    for _, _, p in shards:  # widths from the shard headers, not their data
        shape, _ = _shard_shapes(p)
        t_max, d = max(t_max, shape[1]), shape[2]
    meta = {
        "kind": "tokens",
        "key": key,
        "ids": json.dumps(list(ids)),
        "provenance": json.dumps(prov, sort_keys=True, default=str),
    }
    _write_streamed(path, shards, n, t_max, d, meta)
    sidecar = {
        "format": FORMAT_VERSION,
        "token_format": token_format,
        "kind": "tokens",
        "key": key,
        "shape": [n, t_max, d],
        "n": n,
        "dim": d,
        "dtype": "float16",
        "size": path.stat().st_size,
        "sha256": sha256_file(path),
        "encoder": prov["encoder"],
        "probe": prov["probe"],
        "created": prov["created"],
        "provenance": prov,
    }
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=1, sort_keys=True, default=str))
    shutil.rmtree(partial, ignore_errors=True)
    return path
