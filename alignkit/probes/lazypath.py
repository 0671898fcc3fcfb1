"""``ImagePath``: an image file's path that costs a string, not a :class:`pathlib.Path`.

A manifest of a million rows makes a million paths at load. ``pathlib.Path`` parses each one
(about 15 us and 400 bytes apiece on Python 3.11: a third of the load time and most of its
memory, measured in benchmarks/probe_load.py); an ``ImagePath`` keeps the joined string and
builds the ``Path`` only when one is asked for. It is ``os.PathLike`` (``open``, ``Path()``,
:func:`alignkit.images.load_image` take it), compares and hashes equal to the same ``Path``, and
answers every other ``Path`` attribute (``.name``, ``.suffix``, ``.exists()``...) through one.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import Any


class ImagePath:
    """``folder / name`` as a string; a :class:`pathlib.Path` on demand.

    Not a subclass of :class:`os.PathLike` (whose instances carry a ``__dict__``: 24 more bytes
    a row, and a dict when one is made), yet ``isinstance(p, os.PathLike)`` holds: that check
    looks for ``__fspath__``."""

    __slots__ = ("_text",)

    def __init__(self, folder: str | os.PathLike[str], name: str) -> None:
        self._text = os.path.join(os.fspath(folder), name)

    @classmethod
    def under(cls, prefix: str, name: str) -> ImagePath:
        """``name`` joined to a folder given as ``prefix`` (its path with a trailing separator,
        computed once per file): the per-row cost is one string concatenation."""
        self = cls.__new__(cls)
        self._text = name if name.startswith(os.sep) else prefix + name
        return self

    def __fspath__(self) -> str:
        return self._text

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"ImagePath({self._text!r})"

    def path(self) -> Path:
        """The same path as a :class:`pathlib.Path`."""
        return Path(self._text)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (ImagePath, PurePath)):
            return Path(self._text) == Path(os.fspath(other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(Path(self._text))

    def __getstate__(self) -> str:
        return self._text

    def __setstate__(self, state: str) -> None:
        self._text = state

    def __getattr__(self, name: str) -> Any:  # .name, .suffix, .parent, .exists(), ...
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(Path(self._text), name)
