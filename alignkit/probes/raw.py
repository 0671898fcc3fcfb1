"""A probe as read from its files, before validation: candidate rows (:class:`Entry`) that still
carry where they came from (file and line), so that :func:`alignkit.probes.load_probe` can
validate them and name the culprit in one line. Every reader in :mod:`alignkit.probes.formats`
returns a :class:`RawProbe`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from alignkit.probes.lazypath import ImagePath


@dataclass(slots=True)  # a million of them at a time: no __dict__ each
class Entry:
    """A candidate row before validation. ``problem`` is a parse-level reason it is bad."""

    id: str
    image: Path | ImagePath | Callable[[], Image.Image] | None
    captions: list[str]
    where: str
    label: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
    digest: str = ""


@dataclass
class RawProbe:
    """A probe's candidate rows as one reader read them; ``root`` is the folder image paths
    resolve against, ``content_key`` what its fingerprint is computed from besides the rows."""

    name: str
    root: Path | None
    entries: list[Entry]
    class_names: tuple[str, ...] | None = None
    content_key: tuple[str, ...] = ()
    needs_checks: bool = True  # file-backed rows get the image checks; rendered rows do not
    templates: tuple[str, ...] | None = None  # prompt templates the data ships with ({} = class)
