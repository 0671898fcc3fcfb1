"""ProbeSet: ordered rows of paired images and captions, with stable ids and a fingerprint."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from alignkit.errors import AlignkitError, unknown_key
from alignkit.images import load_image, to_rgb

CAPTION_POLICIES = ("first", "mean", "random")

# Bumped when the fingerprint recipe changes, so old cache keys can never match new probes.
FINGERPRINT_VERSION = "probe-fp-1"


@dataclass(frozen=True, slots=True)  # slots: no __dict__ a row (48 bytes of 10^6 rows' load)
class ProbeRow:
    """One probe row.

    ``image`` is a path to an image file (a :class:`pathlib.Path`, or an ``ImagePath`` string
    for manifests), a reader of an image inside a container (``ShardImage``, ``TableImage``:
    picklable, callable, with ``read_bytes()``; see :mod:`alignkit.probes.members`), or a
    zero-argument picklable callable that renders a PIL image (the synthetic probe), so rows
    travel to DataLoader workers. ``captions`` has at least one
    non-empty string (official order where the source has one). ``label`` indexes the probe's
    ``class_names`` when the probe is a labelled set. ``attributes`` holds anything an analysis may
    want to group by (synthetic scene attributes, split, source line). ``digest`` identifies the
    image content (sha256 of the file bytes, or of the synthetic scene description); loaders fill
    it, and when it is empty the fingerprint hashes the file (or the rendered pixels) on demand.
    """

    id: str
    image: Path | Callable[[], Image.Image]
    captions: tuple[str, ...]
    label: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    digest: str = ""

    def load_image(self) -> Image.Image:
        """The row's image as upright 8-bit RGB, as a viewer shows it
        (:func:`alignkit.images.load_image`: EXIF orientation, 16-bit greyscale, alpha)."""
        if callable(self.image):
            return to_rgb(self.image())
        return load_image(self.image)

    def image_digest(self) -> str:
        """``digest`` if set, else sha256 of the image file bytes (or of the rendered pixels)."""
        if self.digest:
            return self.digest
        if callable(self.image) and hasattr(self.image, "read_bytes"):  # inside a shard or table
            return hashlib.sha256(self.image.read_bytes()).hexdigest()
        if callable(self.image):
            img = self.load_image()
            h = hashlib.sha256(f"{img.size}".encode())
            h.update(img.tobytes())
            return h.hexdigest()
        return hashlib.sha256(Path(self.image).read_bytes()).hexdigest()


def hash_order(ids: Sequence[str], seed: int) -> list[int]:
    """Indices of ``ids`` sorted by a seeded sha256 of each id (ties, impossible for unique ids,
    broken by position). Taking a prefix of this order gives a subsample that is stable under
    growing ``n``: the first 500 of the 1000-row subsample are the 500-row subsample."""
    keys = [hashlib.sha256(f"{seed}\x00{i}".encode()).digest() for i in ids]
    return sorted(range(len(ids)), key=keys.__getitem__)  # stable: ties keep their position


def _row_choice(row_id: str, seed: int, k: int) -> int:
    digest = hashlib.sha256(f"caption\x00{seed}\x00{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % k


@dataclass(frozen=True)
class ProbeSet:
    """Ordered probe rows with stable ids.

    Attributes:
        name: the spec it was loaded from (``"flickr8k:test"``, a path, ``"synthetic"``).
        rows: the rows, in order.
        class_names: for labelled probes, ``class_names[label]`` is the label's readable name.
        dropped: rows removed by ``skip_bad=True``, as ``{"id", "where", "reason"}`` dicts, in
            the order they were found; their ids enter the fingerprint.
        content_key: extra content that defines the rows beyond ids, captions and image digests
            (e.g. the synthetic generator's version); enters the fingerprint.
        root: the folder the probe was read from (``None`` for the synthetic probe); informative
            only, never part of the fingerprint, so a probe fingerprints the same wherever it lives.
        templates: the zero-shot prompt templates the data ships with (CLIP_benchmark's
            ``zeroshot_classification_templates.txt``, each with one ``{}`` for the class name),
            or ``None``; evaluation uses them unless given its own. Not part of the fingerprint.
        rows_available: the good rows a subsample (``load_probe(n=...)``) was drawn from;
            informative only (``None``: not a subsample, or not known).
    """

    name: str
    rows: tuple[ProbeRow, ...]
    class_names: tuple[str, ...] | None = None
    dropped: tuple[dict[str, str], ...] = ()
    content_key: tuple[str, ...] = ()
    root: Path | None = None
    templates: tuple[str, ...] | None = None
    rows_available: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if len({row.id for row in self.rows}) == len(self.rows):  # the common case, in C speed
            return
        seen: dict[str, int] = {}
        for i, row in enumerate(self.rows):
            if row.id in seen:
                raise AlignkitError(
                    f"probe {self.name}: duplicate row id {row.id!r} (rows {seen[row.id]} and {i})"
                )
            seen[row.id] = i

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> ProbeRow:
        return self.rows[index]

    def __iter__(self):
        return iter(self.rows)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(row.id for row in self.rows)

    @property
    def labels(self) -> list[int | None]:
        return [row.label for row in self.rows]

    @functools.cached_property
    def fingerprint(self) -> str:
        """16 hex digits of sha256 over, in row order, each row's id, captions, label and image
        content digest, then the dropped rows and ``content_key``. Portable: no absolute path,
        file time or probe name enters it, so the same rows give the same fingerprint on every
        machine and in every folder; a changed caption, image byte, order, subsample or drop
        changes it. It enters every feature cache key."""
        h = hashlib.sha256(FINGERPRINT_VERSION.encode())
        for row in self.rows:
            record = [row.id, list(row.captions), row.label, row.image_digest()]
            h.update(json.dumps(record, ensure_ascii=False).encode())
            h.update(b"\n")
        # dropped rows by id only: their reasons name absolute paths, which must not enter
        tail = {"dropped": [d["id"] for d in self.dropped], "content_key": list(self.content_key)}
        h.update(json.dumps(tail, sort_keys=True, ensure_ascii=False).encode())
        return h.hexdigest()[:16]

    def captions(self, policy: str = "first", seed: int = 0) -> list[str]:
        """One caption per row: ``first`` (the official first caption) or ``random`` (a choice
        that depends only on the row id and ``seed``, so it survives subsampling and reordering).
        ``mean`` averages caption *embeddings*, so it has no single caption: the extractor encodes
        every ``row.captions`` and averages (as the reference code does)."""
        if policy not in CAPTION_POLICIES:
            raise unknown_key("caption policy", policy, CAPTION_POLICIES)
        if policy == "mean":
            raise AlignkitError(
                "caption policy 'mean' averages caption embeddings and has no single caption per "
                "row: encode every caption in row.captions and average them"
            )
        if policy == "first":
            return [row.captions[0] for row in self.rows]
        return [row.captions[_row_choice(row.id, seed, len(row.captions))] for row in self.rows]

    def subset(self, indices: Sequence[int], name: str | None = None) -> ProbeSet:
        """The rows at ``indices``, in that order."""
        rows = tuple(self.rows[i] for i in indices)
        return ProbeSet(
            name or self.name,
            rows,
            self.class_names,
            self.dropped,
            self.content_key,
            self.root,
            self.templates,
        )

    def subsample(self, n: int, seed: int = 0) -> ProbeSet:
        """``n`` rows in seeded-hash order (see :func:`hash_order`); prefix-stable in ``n``."""
        if n < 0:
            raise AlignkitError(f"n must be a non-negative number of rows: got {n}")
        order = hash_order(self.ids, seed)[:n]
        return self.subset(order, name=f"{self.name}[n={n},seed={seed}]")

    def summary(self) -> str:
        """One line: name, rows, captions per row, labels, dropped, fingerprint."""
        n_caps = sorted({len(r.captions) for r in self.rows})
        caps = (
            str(n_caps[0]) if len(n_caps) == 1 else f"{n_caps[0]}-{n_caps[-1]}" if n_caps else "0"
        )
        labelled = f", {len(self.class_names)} classes" if self.class_names else ""
        dropped = f", {len(self.dropped)} dropped" if self.dropped else ""
        return (
            f"{self.name}: {len(self)} rows, {caps} captions/row{labelled}{dropped}, "
            f"fingerprint {self.fingerprint}"
        )


def image_bytes_digest(data: bytes) -> str:
    """sha256 hex of an image file's bytes (the digest loaders store in ``ProbeRow.digest``)."""
    return hashlib.sha256(data).hexdigest()


def decode_check(data: bytes) -> str | None:
    """Fully decode image bytes; ``None`` when they decode, else a one-line reason. A
    decompression-bomb warning of PIL counts as a failure, as it does at extraction."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                if img.width < 1 or img.height < 1:
                    return f"empty image ({img.width}x{img.height})"
                to_rgb(img)  # a mode alignkit cannot show as RGB is caught here, with the row
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBomb...
        msg = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc))
        msg = " ".join(msg.split()) or type(exc).__name__
        return f"unreadable image ({msg})"
    return None
