"""The content-addressed feature cache.

Layout under ``root`` (default ``<alignkit cache dir>/features``)::

    ab/ab12...ef.safetensors        one tensor "features", (n, d) or (L, n, d), float32 (or
                                    float16 by choice: :mod:`alignkit.features.store`); the header
                                    metadata holds the key, the format version, the probe ids and
                                    the provenance. Read memory-mapped: rows are read when touched
    ab/ab12...ef.json               sidecar: format version, key, shape, row count, byte size and
                                    sha256 of the .safetensors file, provenance (for `list`)
    ab/ab12...ef.partial/           shards of an extraction in progress:
        rows-000000000-000000512.safetensors   rows [0, 512), written when those rows are done
    ab/ab12...ef.lock               serialises the final commit of one key between processes
    _memo/<lookup>.json             cheap encoder identity -> key (see :func:`lookup_key`): a hit
                                    without building the encoder
    _images/<encoder key>/<key>.json  the image digests of an image entry's rows, so that the
                                    same images under another probe, or a subsample, are read
                                    from it (see :meth:`FeatureCache.lookup`)
    _texts/<encoder key>/<key>.json   the same for the texts of a text entry's rows

The key is a hash of what changes the numbers and nothing else (:mod:`alignkit.features.keys`);
where the cache is, :mod:`alignkit.features.location`. Every
file is written to a temporary name in the same folder and renamed into place (``os.replace`` is
atomic), so a reader never sees a partial file. The sidecar is renamed last and is the commit
marker: an entry counts only when its sidecar names the current format version and the tensor
file's size and sha256 match it. Anything else (a truncated file, a foreign format version) is
reported with a warning and rebuilt, never used.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from alignkit import _paths
from alignkit._files import file_lock as _file_lock
from alignkit.errors import AlignkitError
from alignkit.features import _row_index as row_index
from alignkit.features._io import atomic_path, save_tensor, sha256_file
from alignkit.features._shards import GATHER_IN_MEMORY_ROWS, ShardsMixin
from alignkit.features._verified import sha256_matches
from alignkit.features.featureset import FeatureSet
from alignkit.features.keys import (
    FORMAT_VERSION,
    IMAGE_FEATURES_VERSION,
    KEY_PATTERN,
    RowDigests,
    effective_precision,
    feature_key,
    key_fields,
    lookup_key,
)
from alignkit.features.location import ENTRY_DIR, CacheLocation, locate_cache, resolve_cache_root
from alignkit.features.store import STORE_DTYPES, check_store_dtype, map_tensor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheEntry:
    """One complete cache entry, as :meth:`FeatureCache.list` reports it."""

    key: str
    encoder: str
    probe: str
    n: int
    dim: int
    shape: tuple[int, ...]
    size: int  # bytes on disk, tensor file + sidecar
    created: str  # ISO 8601, UTC
    path: Path  # the .safetensors file


# -- small file helpers -------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- the cache ----------------------------------------------------------------------------------
class FeatureCache(ShardsMixin):
    """Content-addressed store of :class:`FeatureSet` s (safetensors + JSON sidecar).

    Args:
        root: the folder of the feature entries (the ``features/`` folder of a cache root);
            default ``$ALIGNKIT_CACHE_DIR/features``. To start from a cache root, as every
            command's ``--cache`` does, use :meth:`FeatureCache.at`.
        shard_batches: an extraction writes a resumable shard every this many batches.
        shard_seconds: ... and at the first batch boundary after this many seconds without one
            (default 60), so that an interrupted run keeps its work even when a shard of
            ``shard_batches`` batches takes minutes. None: by batches only.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        shard_batches: int = 8,
        shard_seconds: float | None = 60.0,
    ) -> None:
        if (
            isinstance(shard_batches, bool)
            or not isinstance(shard_batches, int)
            or shard_batches < 1
        ):
            raise AlignkitError(f"shard_batches must be a positive integer: got {shard_batches!r}")
        if shard_seconds is not None and (
            isinstance(shard_seconds, bool)
            or not isinstance(shard_seconds, (int, float))
            or not shard_seconds >= 0
        ):
            raise AlignkitError(
                f"shard_seconds must be None or a number of seconds >= 0: got {shard_seconds!r}"
            )
        self.root = Path(root).expanduser() if root is not None else _paths.cache_dir() / "features"
        self.shard_batches = shard_batches
        self.shard_seconds = None if shard_seconds is None else float(shard_seconds)

    @classmethod
    def at(cls, cache: str | Path | None = None, **options: Any) -> FeatureCache:
        """The feature cache of the cache ROOT ``cache`` (None: ``$ALIGNKIT_CACHE_DIR``); a
        features folder given in its place is recognised (see :func:`locate_cache`).
        ``options`` go to the constructor."""
        return cls(locate_cache(cache).features, **options)

    def __repr__(self) -> str:
        return (
            f"FeatureCache(root={str(self.root)!r}, shard_batches={self.shard_batches}, "
            f"shard_seconds={self.shard_seconds})"
        )

    # paths
    def _check_key(self, key: str) -> str:
        if not KEY_PATTERN.fullmatch(key or ""):
            raise AlignkitError(f"a cache key is a lower-case hex string: got {key!r}")
        return key

    def path(self, key: str) -> Path:
        """The ``.safetensors`` file of ``key`` (it may not exist)."""
        key = self._check_key(key)
        return self.root / key[:2] / f"{key}.safetensors"

    def _sidecar(self, key: str) -> Path:
        return self.path(key).with_suffix(".json")

    def _lock(self, key: str) -> Path:
        return self.path(key).with_suffix(".lock")

    # read
    def _read_sidecar(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._sidecar(key).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            return {"_error": f"unreadable sidecar ({exc})"}

    def _problem(self, key: str, side: dict[str, Any]) -> str | None:
        """Why the committed entry of ``key`` cannot be used, or None when it is sound. The
        tensor file's sha256 is computed at its first check in this process and again only
        when its size, times or inode change (:mod:`alignkit.features._verified`)."""
        if "_error" in side:
            return str(side["_error"])
        if side.get("format") != FORMAT_VERSION:
            return f"format version {side.get('format')!r}, expected {FORMAT_VERSION}"
        if side.get("key") != key:
            return f"sidecar names key {side.get('key')!r}"
        path = self.path(key)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return "tensor file missing"
        if size != side.get("size"):
            return f"tensor file has {size} bytes, sidecar says {side.get('size')} (truncated?)"
        if not sha256_matches(path, str(side.get("sha256"))):  # hashed once per process
            return "tensor file sha256 differs from the sidecar (corrupt?)"
        return None

    def get(self, key: str, *, ids: tuple[str, ...] | None = None) -> FeatureSet | None:
        """The cached FeatureSet of ``key``, or None when absent or unusable.

        An unusable entry (truncated, corrupt, another format version, other row ids than
        ``ids``) logs a warning and counts as absent; the next :meth:`put` replaces it.
        """
        side = self._read_sidecar(key)
        if side is None:
            return None
        problem = self._problem(key, side)
        fs = None
        if problem is None:
            try:
                tensor, meta = map_tensor(self.path(key))
                stored_ids = tuple(json.loads(meta["ids"]))
                provenance = json.loads(meta["provenance"])
                if list(tensor.shape) != side.get("shape"):
                    problem = f"tensor shape {list(tensor.shape)}, sidecar says {side.get('shape')}"
                elif STORE_DTYPES[side.get("dtype", "float32")][0] != tensor.dtype:
                    problem = f"tensor dtype {tensor.dtype}, sidecar says {side.get('dtype')}"
                elif ids is not None and stored_ids != tuple(ids):
                    problem = "its row ids differ from the probe's"
                else:
                    fs = FeatureSet(tensor, stored_ids, provenance)
            except (ValueError, KeyError, AlignkitError) as exc:  # KeyError: an unknown dtype
                problem = f"cannot load the tensor file ({exc})"
        if problem is not None:
            log.warning("feature cache entry %s is unusable, rebuilding it: %s", key, problem)
            return None
        return fs

    def __contains__(self, key: str) -> bool:
        side = self._read_sidecar(key)
        return side is not None and self._problem(key, side) is None

    # write
    def put(
        self,
        key: str,
        features: FeatureSet,
        content: RowDigests | None = None,
        dtype: str = "float32",
    ) -> Path:
        """Store ``features`` under ``key`` atomically, as ``dtype`` (``float32`` or
        ``float16``, see :mod:`alignkit.features.store`); returns the tensor file's path.
        ``content``: what the entry's rows encode, for the row index (see :meth:`lookup`).

        Safe when several processes put the same key: the commit is serialised by a lock file,
        and a process that finds a sound entry already committed leaves it as it is. For rows
        written shard by shard, see :meth:`commit_shards`.
        """
        check_store_dtype(dtype)
        path = self.path(key)
        with _file_lock(self._lock(key)):
            side = self._read_sidecar(key)
            if side is None or self._problem(key, side) is not None:  # else: committed already
                provenance = dict(features.provenance)
                metadata = {
                    "format": str(FORMAT_VERSION),
                    "key": key,
                    "ids": json.dumps(list(features.ids)),
                    "provenance": json.dumps(provenance, sort_keys=True, default=str),
                }
                save_tensor(path, features.features, metadata, STORE_DTYPES[dtype][0])
                self._write_sidecar(key, list(features.features.shape), dtype, provenance)
        if content is not None:
            self.index_rows(key, content)
        return path

    def _write_sidecar(
        self, key: str, shape: list[int], dtype: str, provenance: dict[str, Any]
    ) -> None:
        """The commit marker of the tensor file of ``key`` just written (call under its lock)."""
        path = self.path(key)
        sidecar = {
            "format": FORMAT_VERSION,
            "key": key,
            "shape": [int(s) for s in shape],
            "n": int(shape[-2]),
            "dim": int(shape[-1]),
            "dtype": dtype,
            "size": path.stat().st_size,
            "sha256": sha256_file(path),
            "encoder": str(provenance.get("encoder", "?")),
            "probe": str(provenance.get("probe", "?")),
            "created": str(provenance.get("created") or _now()),
            "provenance": provenance,
        }
        with atomic_path(self._sidecar(key)) as tmp:
            tmp.write_text(json.dumps(sidecar, indent=1, sort_keys=True, default=str))

    # features found by what their rows encode (alignkit.features.keys.RowDigests)
    def lookup(
        self, key: str, ids: tuple[str, ...], content: RowDigests | None = None
    ) -> FeatureSet | None:
        """The features stored for ``key``, as the rows ``ids``; None when the cache lacks them.

        Without ``content``: the entry of ``key`` when it holds exactly ``ids``. Image features
        (``content.modality == "image"``, keyed by the images alone): the entry of ``key`` (the
        same images in the same order, under whatever ids they had), else the entry written under
        ``content.legacy_key`` before image keys. Text features (keyed by the probe): the entry of
        ``key`` when it holds exactly ``ids`` (then indexed, if it was written before the text
        index). Else, for both, any entry of the same encoder that holds every wanted row's
        content (its rows gathered by digest: a subsample, another probe or caption policy). A
        hit for other ids comes back with ``ids`` and ``provenance["cached_from"]``, the key of
        the entry it was read from.
        """
        if content is None:
            return self.get(key, ids=ids)
        if content.modality == "text":
            hit = self.get(key, ids=ids)
            if hit is not None:  # an entry from before the text index: let others find it
                self.index_rows(key, content)
            return hit if hit is not None else self._rows_of_other_entry(key, ids, content)
        hit = self._as_rows(self.get(key), key, ids)
        if hit is None and content.legacy_key is not None and content.legacy_key in self:
            hit = self._as_rows(self.get(content.legacy_key, ids=ids), key, ids)
            if hit is not None:  # let subsamples find it too
                self.index_rows(content.legacy_key, content)
        return hit if hit is not None else self._rows_of_other_entry(key, ids, content)

    def index_rows(self, key: str, content: RowDigests) -> None:
        """Note that the entry ``key`` holds the rows ``content.digests`` (in row order), so
        that :meth:`lookup` finds them for another probe. Written once per entry."""
        if row_index.has(self.root, key, content):
            return
        row_index.write(self.root, key, content)

    def _as_rows(
        self,
        fs: FeatureSet | None,
        key: str,
        ids: tuple[str, ...],
        part_of: str | None = None,
        content: RowDigests | None = None,
    ) -> FeatureSet | None:
        """``fs`` as the rows ``ids``: unchanged when it is a whole entry with these ids, else
        with the provenance of a set read from another entry (``part_of``: of which it is a
        part; ``content.provenance``: what it records as its own)."""
        if fs is None or fs.n != len(ids):
            return None
        if fs.ids == tuple(ids) and part_of is None:
            return fs
        source = part_of or fs.provenance.get("cache_key")
        own = dict(content.provenance) if content is not None else {}
        provenance = {**fs.provenance, **own, "cache_key": key, "cached_from": source}
        return FeatureSet(fs.features, tuple(ids), provenance)

    def _rows_of_other_entry(
        self, key: str, ids: tuple[str, ...], content: RowDigests
    ) -> FeatureSet | None:
        """The wanted rows of the newest entry of the same encoder holding them all (by content
        digest): in memory up to :data:`GATHER_IN_MEMORY_ROWS` rows, else written as the entry
        ``key`` and read back memory-mapped (see :meth:`commit_rows`)."""
        for record in row_index.records(self.root, content):
            if record["key"] == key:  # its own entry: :meth:`lookup` has read it already
                continue
            where: dict[str, int] = {}
            for i, digest in enumerate(record["digests"]):
                where.setdefault(digest, i)
            if not all(d in where for d in content.digests):
                continue
            fs = self.get(record["key"])
            if fs is None or fs.n != len(record["digests"]) or _dtype(fs) != content.store_dtype:
                continue
            rows = torch.tensor([where[d] for d in content.digests], dtype=torch.long)
            if len(rows) > GATHER_IN_MEMORY_ROWS:  # a large part: its own entry, mapped
                return self.commit_rows(key, fs, rows, tuple(ids), content, str(record["key"]))
            chosen = fs.features.index_select(-2, rows)
            part = FeatureSet(chosen, tuple(ids), fs.provenance)
            return self._as_rows(part, key, ids, part_of=str(record["key"]), content=content)
        return None

    # the memo: cheap encoder identity -> full key (a cache hit without building the encoder)
    def _memo(self, lookup: str) -> Path:
        return self.root / "_memo" / f"{self._check_key(lookup)}.json"

    def recall(self, lookup: str) -> str | None:
        """The full key remembered for ``lookup`` (see :func:`lookup_key`), or None.

        The full key needs the built encoder (its ``config()`` and weights identity); the lookup
        key does not. Only a sound committed entry counts, so a stale memo costs one build."""
        try:
            memo = json.loads(self._memo(lookup).read_text())
            key = self._check_key(str(memo["key"]))
        except (OSError, ValueError, KeyError, TypeError, AlignkitError):
            return None
        return key if memo.get("format") == FORMAT_VERSION else None

    def remember(self, lookup: str, key: str) -> None:
        """Note that ``lookup`` builds the encoder whose features are stored under ``key``. A
        failed write only costs a later build, so it is logged, not raised."""
        memo = {"format": FORMAT_VERSION, "key": self._check_key(key), "created": _now()}
        try:
            with atomic_path(self._memo(lookup)) as tmp:
                tmp.write_text(json.dumps(memo, sort_keys=True))
        except OSError as exc:
            log.warning("could not write the feature cache memo %s: %s", lookup, exc)

    # listing and clearing
    def list(self, pattern: str = "*") -> list[CacheEntry]:
        """Complete entries whose key, encoder spec or probe name matches the glob ``pattern``,
        newest first. Entries whose sidecar cannot be read are left out."""
        entries = []
        if not self.root.is_dir():
            return entries
        for sidecar in self.root.glob("*/*.json"):
            if not ENTRY_DIR.match(sidecar.parent.name):
                continue
            try:
                side = json.loads(sidecar.read_text())
                key = str(side["key"])
                tensor = sidecar.with_suffix(".safetensors")
                entry = CacheEntry(
                    key=key,
                    encoder=str(side.get("encoder", "?")),
                    probe=str(side.get("probe", "?")),
                    n=int(side["n"]),
                    dim=int(side["dim"]),
                    shape=tuple(int(s) for s in side["shape"]),
                    size=(tensor.stat().st_size if tensor.exists() else 0) + sidecar.stat().st_size,
                    created=str(side.get("created", "")),
                    path=tensor,
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if _matches(pattern, entry.key, entry.encoder, entry.probe):
                entries.append(entry)
        return sorted(entries, key=lambda e: e.created, reverse=True)

    def clear(self, pattern: str = "*") -> int:
        """Delete the entries :meth:`list` gives for ``pattern`` (with their shards and lock
        files); ``"*"`` also removes unfinished extractions and stray temporary files.
        Returns how many complete entries were removed."""
        removed = 0
        for entry in self.list(pattern):
            for path in (
                entry.path,
                entry.path.with_suffix(".json"),
                entry.path.with_suffix(".lock"),
                entry.path.with_suffix(".verified"),
            ):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            shutil.rmtree(entry.path.with_suffix(".partial"), ignore_errors=True)
            removed += 1
        if pattern == "*":
            shutil.rmtree(self.root / "_memo", ignore_errors=True)
            for modality in row_index.FOLDERS:
                shutil.rmtree(row_index.folder(self.root, modality), ignore_errors=True)
        if pattern == "*" and self.root.is_dir():
            for path in self.root.glob("*/*"):
                if path.suffix == ".partial" and path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                elif path.suffix in (".tmp", ".lock", ".safetensors", ".verified"):
                    # stray temporaries, locks, stamps, tensor files without a committed sidecar
                    keep = path.suffix in (".safetensors", ".verified")
                    if not (keep and path.with_suffix(".json").exists()) and path.is_file():
                        with contextlib.suppress(FileNotFoundError):
                            path.unlink()
        return removed


def _dtype(fs: FeatureSet) -> str:
    """The stored dtype name of an entry read by :meth:`FeatureCache.get`."""
    return "float16" if fs.features.dtype == torch.float16 else "float32"


def _matches(pattern: str, key: str, *names: str) -> bool:
    """Glob match on the key, encoder spec or probe name; a bare hex string also matches as a
    key prefix."""
    if any(fnmatch.fnmatchcase(v, pattern) for v in (key, *names)):
        return True
    return bool(re.fullmatch(r"[0-9a-f]+", pattern)) and key.startswith(pattern)


__all__ = [
    "FORMAT_VERSION",
    "GATHER_IN_MEMORY_ROWS",
    "IMAGE_FEATURES_VERSION",
    "CacheEntry",
    "CacheLocation",
    "FeatureCache",
    "effective_precision",
    "feature_key",
    "key_fields",
    "locate_cache",
    "lookup_key",
    "resolve_cache_root",
]
