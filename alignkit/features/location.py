"""Where a feature cache lives: the cache root a user names (``--cache``, ``$ALIGNKIT_CACHE_DIR``)
and its ``features/`` folder, recognising a features folder given in place of its root."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from alignkit import _paths
from alignkit.errors import AlignkitError

log = logging.getLogger("alignkit.features.cache")


ENTRY_DIR = re.compile(r"^[0-9a-f]{2}$")


_NOTED: set[str] = set()


@dataclass(frozen=True)
class CacheLocation:
    """Where a cache lives, as :func:`locate_cache` resolved it.

    Attributes:
        root: the cache root (``$ALIGNKIT_CACHE_DIR``, or what ``--cache`` names).
        features: the folder of the feature entries, ``root / "features"`` (the folder itself
            when an old-layout folder holding entries directly was given).
        note: why the given folder was not taken as the root, or None when it was.
    """

    root: Path
    features: Path
    note: str | None = None


def _holds_entries(folder: Path) -> bool:
    """True when ``folder`` is laid out like a features folder: ``ab/<key>.json|.safetensors``."""
    try:
        for child in folder.iterdir():
            if child.is_dir() and ENTRY_DIR.match(child.name):
                if any(p.suffix in (".json", ".safetensors", ".partial") for p in child.iterdir()):
                    return True
    except OSError:
        return False
    return False


def locate_cache(path: str | Path | None = None) -> CacheLocation:
    """Resolve a cache location given by a user: ``path`` names the cache ROOT (entries under
    ``<root>/features``), like ``$ALIGNKIT_CACHE_DIR``; None means ``$ALIGNKIT_CACHE_DIR`` (else
    ``~/.cache/alignkit``).

    A features folder given in place of its root is recognised and used, with a note (logged once
    per folder): a folder named ``features`` with no ``features/`` inside stands for its parent,
    and a folder that holds entries directly (``ab/<key>.json``, the layout an older ``--cache``
    wrote) is used as the features folder itself. Nothing is created.
    """
    if path is None:
        root = _paths.cache_dir()
        return CacheLocation(root, root / "features")
    given = Path(path).expanduser()
    if given.exists() and not given.is_dir():
        raise AlignkitError(f"a cache location is a folder: got the file {given}")
    if (given / "features").is_dir():
        return CacheLocation(given, given / "features")
    if given.name == "features":
        note = f"{given} is a features folder: using its parent {given.parent} as the cache root"
        return _noted(CacheLocation(given.parent, given, note))
    if _holds_entries(given):
        note = (
            f"{given} holds feature entries directly (the older --cache layout): reading and "
            "writing them there"
        )
        return _noted(CacheLocation(given, given, note))
    return CacheLocation(given, given / "features")


def _noted(location: CacheLocation) -> CacheLocation:
    if location.note and str(location.features) not in _NOTED:
        _NOTED.add(str(location.features))
        log.warning("%s", location.note)
    return location


def resolve_cache_root(path: str | Path | None = None) -> Path:
    """The cache root that ``path`` stands for (see :func:`locate_cache`); None -> the default,
    ``$ALIGNKIT_CACHE_DIR`` (else ``~/.cache/alignkit``)."""
    return locate_cache(path).root
