"""The row index of the feature cache: for each entry, the content digest of what each of its
rows encodes (an image, a text), filed under the encoder's share of the key::

    _images/<encoder key>/<entry key>.json    {"format", "key", "digests": [sha256, ...]}
    _texts/<encoder key>/<entry key>.json     the same for text entries

so that :meth:`FeatureCache.lookup` finds the features of images or texts an entry of the same
encoder already holds (the same rows under another probe, a subsample, another caption policy).
One module for both modalities: the record, its safety and its reader are the same; only the
digest (:func:`alignkit.features.keys.image_rows`, :func:`~alignkit.features.keys.text_rows`)
and the folder differ. A record whose entry is gone or changed is skipped, never trusted: the
entry itself is always checked.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignkit.features._io import atomic_path
from alignkit.features.keys import FORMAT_VERSION, KEY_PATTERN

if TYPE_CHECKING:
    from alignkit.features.keys import RowDigests

log = logging.getLogger("alignkit.features.cache")

#: The index folder of each modality (``_images`` predates text records: its name stays).
FOLDERS = {"image": "_images", "text": "_texts"}


def folder(root: Path, modality: str) -> Path:
    """The index folder of ``modality`` in the cache's features folder ``root``."""
    return root / FOLDERS[modality]


def _record_path(root: Path, key: str, rows: RowDigests) -> Path:
    return folder(root, rows.modality) / rows.encoder_key / f"{key}.json"


def has(root: Path, key: str, rows: RowDigests) -> bool:
    """True when the record of ``key`` is already filed under ``rows.encoder_key``."""
    return _record_path(root, key, rows).is_file()


def write(root: Path, key: str, rows: RowDigests) -> None:
    """Note that the entry ``key`` holds the rows ``rows.digests``, in that order. A failed write
    only costs a later extraction, so it is logged, not raised."""
    record = {"format": FORMAT_VERSION, "key": key, "digests": list(rows.digests)}
    try:
        with atomic_path(_record_path(root, key, rows)) as tmp:
            tmp.write_text(json.dumps(record))
    except OSError as exc:
        log.warning("could not write the row index of feature cache entry %s: %s", key, exc)


def records(root: Path, rows: RowDigests) -> list[dict[str, Any]]:
    """The index records of ``rows``' modality and encoder, newest first; unreadable or foreign
    ones left out."""
    here = folder(root, rows.modality) / rows.encoder_key
    if not KEY_PATTERN.fullmatch(rows.encoder_key) or not here.is_dir():
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
