"""Image file checks and content digests, cached per file by (size, mtime).

Loading a probe reads every selected image file once: its bytes are hashed (sha256, the row's
``digest``, which enters the fingerprint) and, by default, fully decoded so that a truncated or
corrupt file fails at load time instead of in a DataLoader worker half-way through an extraction.
The result is cached in ``<cache_dir>/probe-checks/`` (one file per image folder), keyed by the
file name, size and mtime, so a second load only stats the files.

Measured on Flickr8k (8,091 JPEGs, 224x224, 2 shared CPU cores): stat 0.05 s, read + sha256
0.4-0.9 s, read + sha256 + full decode 4.5 s on first load; about 0.15 s when cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from alignkit._files import atomic_write_text
from alignkit._paths import cache_dir
from alignkit.errors import unknown_key
from alignkit.probes.base import decode_check, image_bytes_digest

log = logging.getLogger("alignkit.probes")

CHECKS = ("decode", "read")  # decode: full decode + sha256; read: sha256 of the bytes only
_CACHE_VERSION = 1
_PROGRESS_MIN_FILES = 200  # below this a bar is noise


@dataclass(frozen=True)
class FileCheck:
    """What one image file turned out to be: its sha256 (``""`` when unreadable) and the reason it
    is bad (``None`` when good)."""

    digest: str
    error: str | None


def _check_one(path: Path, level: str) -> tuple[FileCheck, tuple[int, int] | None]:
    try:
        st = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        return FileCheck("", f"image file not found: {path}"), None
    except IsADirectoryError:
        return FileCheck("", f"image path is a folder, not a file: {path}"), None
    except OSError as exc:
        return FileCheck("", f"cannot read image file {path}: {exc.strerror or exc}"), None
    stamp = (st.st_size, st.st_mtime_ns)
    if not data:
        return FileCheck("", f"empty image file (0 bytes): {path}"), stamp
    error = decode_check(data) if level == "decode" else None
    if error is not None:
        error = f"{error}: {path}"
    return FileCheck(image_bytes_digest(data), error), stamp


class _CheckCache:
    """One JSON file per image folder: ``{file name: [size, mtime_ns, level, digest, error]}``.
    Keyed by folder, not by probe, so every probe that reads the same images (Flickr8k through
    ``pairs.jsonl`` or through the token file) shares the work."""

    def __init__(self, folder: Path) -> None:
        key = hashlib.sha256(str(folder.absolute()).encode()).hexdigest()[:20]
        self.path = cache_dir() / "probe-checks" / f"{key}.json"
        self.root = folder
        self.entries: dict[str, list] = {}
        self.dirty = False
        try:
            blob = json.loads(self.path.read_text())
            if blob.get("version") == _CACHE_VERSION:
                self.entries = blob["files"]
        except (OSError, ValueError, KeyError, TypeError):
            self.entries = {}

    def get(self, path: Path, level: str) -> FileCheck | None:
        entry = self.entries.get(os.path.basename(path))
        if entry is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        size, mtime, cached_level, digest, error = entry
        if (size, mtime) != (st.st_size, st.st_mtime_ns):
            return None
        if cached_level == level:
            return FileCheck(digest, error)
        if cached_level == "decode" and level == "read":  # read only needs the bytes' digest
            return FileCheck(digest, None if digest else error)
        return None

    def put(self, path: Path, level: str, check: FileCheck, stamp: tuple[int, int]) -> None:
        self.entries[os.path.basename(path)] = [
            stamp[0],
            stamp[1],
            level,
            check.digest,
            check.error,
        ]
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            blob = {"version": _CACHE_VERSION, "root": str(self.root), "files": self.entries}
            atomic_write_text(self.path, json.dumps(blob))  # readers never see half a file
        except OSError as exc:  # a read-only cache is not fatal: the checks just run again
            log.debug("could not save probe check cache %s: %s", self.path, exc)


def check_images(
    paths: Sequence[Path],
    *,
    level: str = "decode",
    progress: bool = True,
    use_cache: bool = True,
) -> list[FileCheck]:
    """Check ``paths`` (read, hash, and with ``level="decode"`` fully decode each file), in order.

    Files whose size and mtime match the cache are not read again. Work runs in a small thread
    pool (hashing and JPEG decoding release the GIL).
    """
    if level not in CHECKS:
        raise unknown_key("image check", level, CHECKS)
    folders = [os.path.dirname(p) for p in paths]  # str keys: pathlib hashing is slow at 10^4
    caches: dict[str, _CheckCache] = {}
    if use_cache:
        for folder in dict.fromkeys(folders):
            caches[folder] = _CheckCache(Path(folder))
    results: list[FileCheck | None] = [None] * len(paths)
    todo: list[int] = []
    for i, path in enumerate(paths):
        hit = caches[folders[i]].get(path, level) if use_cache else None
        if hit is None:
            todo.append(i)
        else:
            results[i] = hit
    if todo:
        workers = max(1, min(4, os.cpu_count() or 1))
        bar = tqdm(
            total=len(todo),
            desc="checking images",
            unit="img",
            disable=not progress or len(todo) < _PROGRESS_MIN_FILES,
            leave=False,
        )
        with ThreadPoolExecutor(workers) as pool:
            for i, (check, stamp) in zip(
                todo, pool.map(lambda j: _check_one(paths[j], level), todo), strict=True
            ):
                results[i] = check
                if use_cache and stamp is not None:
                    caches[folders[i]].put(paths[i], level, check, stamp)
                bar.update(1)
        bar.close()
        for cache in caches.values():
            cache.save()
    return [r for r in results if r is not None]
