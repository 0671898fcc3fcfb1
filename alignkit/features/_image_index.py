"""The image index of the feature cache: for each image entry, the content digest of the image of
each of its rows, filed under the encoder's share of the key::

    _images/<encoder key>/<entry key>.json    {"format", "key", "digests": [sha256, ...]}

so that :meth:`FeatureCache.lookup` finds the features of images an entry of the same encoder
already holds (the same images under another probe, a subsample). A record whose entry is gone
is skipped, never trusted: the entry itself is always checked.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignkit.features._io import atomic_path
from alignkit.features.keys import FORMAT_VERSION, KEY_PATTERN

if TYPE_CHECKING:
    from alignkit.features.keys import ImageRows

log = logging.getLogger("alignkit.features.cache")


def folder(root: Path) -> Path:
    """The index folder of the cache's features folder ``root``."""
    return root / "_images"


def has(root: Path, key: str, images: ImageRows) -> bool:
    """True when the record of ``key`` is already filed under ``images.encoder_key``."""
    return (folder(root) / images.encoder_key / f"{key}.json").is_file()


def write(root: Path, key: str, images: ImageRows) -> None:
    """Note that the entry ``key`` holds the images ``images.digests``, in that row order. A
    failed write only costs a later extraction, so it is logged, not raised."""
    record = {"format": FORMAT_VERSION, "key": key, "digests": list(images.digests)}
    try:
        with atomic_path(folder(root) / images.encoder_key / f"{key}.json") as tmp:
            tmp.write_text(json.dumps(record))
    except OSError as exc:
        log.warning("could not write the image index of feature cache entry %s: %s", key, exc)


def records(root: Path, encoder_key: str) -> list[dict[str, Any]]:
    """The index records of one encoder, newest first; unreadable or foreign ones left out."""
    here = folder(root) / encoder_key
    if not KEY_PATTERN.fullmatch(encoder_key) or not here.is_dir():
        return []
    found = []
    for path in here.glob("*.json"):
        try:
            record = json.loads(path.read_text())
            ok = (
                record.get("format") == FORMAT_VERSION
                and KEY_PATTERN.fullmatch(str(record["key"]))
                and isinstance(record["digests"], list)
            )
            if ok:
                found.append((path.stat().st_mtime, record))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return [r for _, r in sorted(found, key=lambda t: t[0], reverse=True)]
