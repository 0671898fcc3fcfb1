"""ProbeSet: ordered rows of paired images and captions, with stable ids and a fingerprint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from alignkit.errors import AlignkitError

CAPTION_POLICIES = ("first", "mean", "random")


@dataclass(frozen=True)
class ProbeRow:
    """One probe row.

    ``image`` is a path to an image file, or a zero-argument callable that renders a PIL image
    (the synthetic probe). ``captions`` has at least one non-empty string. ``label`` indexes the
    probe's ``class_names`` when the probe is a labelled set. ``attributes`` holds anything an
    analysis may want to group by (synthetic scene attributes, split, source id).
    """

    id: str
    image: "Path | Callable[[], Image.Image]"
    captions: tuple[str, ...]
    label: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    def load_image(self) -> Image.Image:
        """The row's image as RGB."""
        if callable(self.image):
            return self.image().convert("RGB")
        with Image.open(self.image) as img:
            return img.convert("RGB")


@dataclass(frozen=True)
class ProbeSet:
    """Ordered probe rows with stable ids.

    Attributes:
        name: the spec it was loaded from (``"flickr8k:test"``, a path, ``"synthetic"``).
        rows: the rows, in order.
        class_names: for labelled probes, ``class_names[label]`` is the label's readable name.
        dropped: rows removed by ``skip_bad=True``, as ``{"id": ..., "reason": ...}``.
        content_key: extra content that defines the rows beyond ids and captions (e.g. file
            sizes and mtimes, or the synthetic generator's seed and version); enters the fingerprint.
    """

    name: str
    rows: tuple[ProbeRow, ...]
    class_names: tuple[str, ...] | None = None
    dropped: tuple[dict[str, str], ...] = ()
    content_key: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for row in self.rows:
            if row.id in seen:
                raise AlignkitError(f"probe {self.name}: duplicate row id {row.id!r}")
            seen.add(row.id)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(row.id for row in self.rows)

    @property
    def fingerprint(self) -> str:
        """Hash of ids, captions, labels, image identity and dropped rows: enters every cache key."""
        h = hashlib.sha256()
        for row in self.rows:
            image_key = str(row.image) if not callable(row.image) else "<rendered>"
            h.update(json.dumps([row.id, list(row.captions), row.label, image_key]).encode())
        h.update(json.dumps([list(self.content_key), list(self.dropped)], sort_keys=True).encode())
        return h.hexdigest()[:16]

    def subset(self, indices: Sequence[int], name: str | None = None) -> "ProbeSet":
        """The rows at ``indices``, in that order."""
        rows = tuple(self.rows[i] for i in indices)
        return ProbeSet(name or self.name, rows, self.class_names, self.dropped, self.content_key)
