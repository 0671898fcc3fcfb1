"""The shards of a feature cache entry in progress, and the streamed commit of a finished one.

An extraction (or any writer of millions of rows) saves rows ``[a, b)`` as one shard file
``<key>.partial/rows-<a>-<b>.safetensors`` as soon as they are done, in the entry's stored
dtype, atomically; a rerun finds them and computes only what is missing. When every row is in
a shard, :meth:`ShardsMixin.commit_shards` streams them into the entry's file (one shard in
memory at a time, see :func:`alignkit.features.store.write_streamed`) and the sidecar commits
it. :meth:`ShardsMixin.commit_rows` does the same for rows gathered from another entry (a large
subsample). :class:`~alignkit.features.cache.FeatureCache` inherits these methods.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from alignkit._files import file_lock
from alignkit.errors import AlignkitError
from alignkit.features.featureset import FeatureSet
from alignkit.features.keys import FORMAT_VERSION, RowDigests
from alignkit.features.store import map_tensor, write_streamed

log = logging.getLogger("alignkit.features.cache")

_SHARD_RE = re.compile(r"^rows-(\d{9})-(\d{9})\.safetensors$")

#: A subsample of more rows than this, read from a larger entry, is written as its own entry
#: (block by block) and read back memory-mapped rather than gathered into memory.
GATHER_IN_MEMORY_ROWS = 65_536


def sound_shards(
    folder: Path,
    start: int,
    stop: int | None,
    sound: Callable[[Path, int, int], Any],
    what: str,
) -> list[tuple[int, int, Any]]:
    """The shards ``rows-<a>-<b>.safetensors`` of ``folder`` inside rows ``[start, stop)`` that
    ``sound(path, a, b)`` accepts (it returns what to keep of the shard, or None), as the
    non-overlapping ``(a, b, kept)`` covering the most rows (:func:`widest_cover`), sorted. A
    shard it refuses is deleted with a warning naming ``what`` (its rows are computed again)."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        match = _SHARD_RE.match(path.name)
        if not match:
            continue
        a, b = int(match.group(1)), int(match.group(2))
        if a < start or (stop is not None and b > stop) or b <= a:
            continue
        kept = sound(path, a, b)
        if kept is None:
            log.warning("dropping a damaged shard of %s: %s", what, path.name)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        found.append((a, b, kept))
    return widest_cover(found)


def first_gap(shards: list[tuple[int, int, Any]]) -> int:
    """The first row from 0 that sorted ``(start, stop, ...)`` shards leave out (their end when
    they cover every row from 0 without a gap)."""
    cursor = 0
    for a, b, *_ in shards:
        if a != cursor:
            break
        cursor = b
    return cursor


def widest_cover(found: list[tuple[int, int, Any]]) -> list[tuple[int, int, Any]]:
    """The non-overlapping shards ``(start, stop, what)`` of ``found`` that cover the most
    rows, sorted by row.

    Shards may overlap: a run with another batch size, another world size (a rank reads only
    the shards inside its block of rows and writes its own for the rest) or a shard saved by
    time cuts rows elsewhere. Taking the longest shard at each row (greedy) can then leave a
    gap that another choice covers; this is weighted interval scheduling (weight: rows), so
    when the shards can cover ``[0, n)`` without a gap, the choice does.
    """
    by_end = sorted(found, key=lambda s: (s[1], s[0]))
    ends = [b for _, b, _ in by_end]
    # best[i]: (rows covered, shards taken) using the first i shards by end; took[i]: shard
    # i - 1 is in that choice, after the best choice of the first back[i] shards
    best, took, back = [0], [False], [0]
    for i, (a, b, _) in enumerate(by_end):
        j = bisect.bisect_right(ends, a, 0, i)  # the shards ending at or before a
        with_it = best[j] + (b - a)
        took.append(with_it > best[i])
        best.append(max(with_it, best[i]))
        back.append(j if took[-1] else i)
    chosen, i = [], len(by_end)
    while i > 0:
        if took[i]:
            chosen.append(by_end[i - 1])
        i = back[i]
    return chosen[::-1]


class ShardsMixin:
    """Shard methods of :class:`~alignkit.features.cache.FeatureCache` (which gives the paths,
    the sidecar reader and writer, and :meth:`index_rows`)."""

    def _partial_dir(self, key: str) -> Path:
        return self.path(key).with_suffix(".partial")  # type: ignore[attr-defined]

    def put_shard(
        self,
        key: str,
        start: int,
        stop: int,
        features: torch.Tensor | Sequence[torch.Tensor],
        dtype: str = "float32",
    ) -> Path:
        """Store rows ``[start, stop)`` of an unfinished entry: ``features`` is
        ``(stop - start, d)`` or ``(L, stop - start, d)``, or consecutive pieces of those rows
        (batch outputs: written one after the other, never concatenated in memory), stored as
        ``dtype``, atomically and durably.

        Raises:
            AlignkitError: the rows do not add up to ``stop - start``.
            OSError: the file cannot be written.
        """
        pieces = [features] if isinstance(features, torch.Tensor) else list(features)
        rows = sum(int(p.shape[-2]) for p in pieces)
        if rows != stop - start:
            raise AlignkitError(
                f"a shard of rows [{start}, {stop}) needs {stop - start} rows: got {rows}"
            )
        path = self._partial_dir(key) / f"rows-{start:09d}-{stop:09d}.safetensors"
        meta = {"format": str(FORMAT_VERSION), "key": key, "start": str(start), "stop": str(stop)}
        write_streamed(path, pieces, meta, dtype)
        return path

    def load_shards(
        self, key: str, start: int = 0, stop: int | None = None
    ) -> list[tuple[int, int, torch.Tensor]]:
        """Sound, non-overlapping shards of ``key`` inside rows ``[start, stop)``, sorted by row.

        Returns ``(start, stop, features)`` triples; ``features`` are memory-mapped. A damaged
        shard is deleted with a warning (its rows are simply computed again).
        """

        def sound(path: Path, a: int, b: int) -> torch.Tensor | None:
            try:
                tensor, meta = map_tensor(path)
            except ValueError as exc:
                log.debug("shard %s: %s", path, exc)
                return None
            ok = (
                meta.get("format") == str(FORMAT_VERSION)
                and meta.get("key") == key
                and tensor.ndim in (2, 3)
                and tensor.shape[-2] == b - a
            )
            return tensor if ok else None

        return sound_shards(
            self._partial_dir(key), start, stop, sound, f"feature cache entry {key}"
        )

    def drop_shards(self, key: str) -> None:
        """Remove the shards of ``key`` (after its entry is committed)."""
        shutil.rmtree(self._partial_dir(key), ignore_errors=True)

    def commit_shards(
        self,
        key: str,
        ids: tuple[str, ...],
        provenance: dict[str, Any],
        content: RowDigests | None = None,
        dtype: str = "float32",
    ) -> Path:
        """Commit the entry of ``key`` from its shards, which must cover rows ``[0, len(ids))``
        exactly: streamed into the entry's file as ``dtype`` (memory: one shard), then the
        sidecar; the shards are removed. Returns the tensor file's path.

        Raises:
            AlignkitError: the shards leave rows out (naming the first gap); nothing is lost.
        """
        path = self.path(key)  # type: ignore[attr-defined]
        with file_lock(self._lock(key)):  # type: ignore[attr-defined]
            side = self._read_sidecar(key)  # type: ignore[attr-defined]
            if side is None or self._problem(key, side) is not None:  # type: ignore[attr-defined]
                shards = self.load_shards(key)
                cursor = first_gap(shards)
                if cursor != len(ids) or not shards:
                    raise AlignkitError(
                        f"the shards of feature cache entry {key} must cover rows [0, "
                        f"{len(ids)}): the first row missing is {cursor}; write it with "
                        "put_shard, then commit again"
                    )
                pieces = [t for _, _, t in shards]
                metadata = {
                    "format": str(FORMAT_VERSION),
                    "key": key,
                    "ids": json.dumps(list(ids)),
                    "provenance": json.dumps(provenance, sort_keys=True, default=str),
                }
                write_streamed(path, pieces, metadata, dtype)
                shape = [*pieces[0].shape[:-2], len(ids), int(pieces[0].shape[-1])]
                self._write_sidecar(key, shape, dtype, provenance)  # type: ignore[attr-defined]
        if content is not None:
            self.index_rows(key, content)  # type: ignore[attr-defined]
        self.drop_shards(key)
        return path

    def commit_rows(
        self,
        key: str,
        source: FeatureSet,
        rows: torch.Tensor,
        ids: tuple[str, ...],
        content: RowDigests | None,
        part_of: str,
    ) -> FeatureSet:
        """Rows ``rows`` (int64, any order) of ``source`` (an entry, memory-mapped) committed as
        the entry ``key`` in ``source``'s dtype, :data:`GATHER_IN_MEMORY_ROWS` rows in memory at a
        time, and returned as a map of it with ``ids`` and ``provenance["cached_from"]`` =
        ``part_of`` (the source entry's key)."""
        dtype = "float16" if source.features.dtype == torch.float16 else "float32"
        own = dict(content.provenance) if content is not None else {}
        provenance = {**source.provenance, **own, "cache_key": key, "cached_from": part_of}
        for a in range(0, len(rows), GATHER_IN_MEMORY_ROWS):
            block = rows[a : a + GATHER_IN_MEMORY_ROWS]
            chosen = source.features.index_select(-2, block)  # (..., len(block), d)
            self.put_shard(key, a, a + len(block), chosen, dtype)
        path = self.commit_shards(key, ids, provenance, content, dtype)
        return FeatureSet(map_tensor(path)[0], ids, provenance)
