"""Probe file formats: which reader reads a path (:func:`detect_format`) and reading it
(:func:`read_path`). Each reader turns a file or folder into a :class:`RawProbe`.

Formats (``FORMATS``, chosen by :func:`detect_format` or the ``format=`` option):

- ``manifest``: JSONL or CSV (:mod:`alignkit.probes.manifest`).
- ``coco``: a COCO captions JSON (``captions_val2017.json``) and its image folder.
- ``flickr``: the Flickr8k/Flickr30k token file (``Flickr8k.token.txt``, ``results_20130124.token``)
  with optional split files (``Flickr_8k.testImages.txt``) and an image folder.
- ``imagefolder``: an ImageNet-style labelled set: one folder per class.

(the last three in :mod:`alignkit.probes.layouts`; class names in :mod:`alignkit.probes.classnames`)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignkit.errors import AlignkitError, unknown_key
from alignkit.probes.classnames import (
    DEFAULT_TEMPLATES,
    check_label,
    imagenet_class_names,
    imagenet_wnids,
    resolve_class_names,
)
from alignkit.probes.layouts import (
    IMAGE_SUFFIXES,
    class_dirs,
    read_coco,
    read_flickr,
    read_imagefolder,
)
from alignkit.probes.manifest import read_manifest
from alignkit.probes.raw import Entry, RawProbe

__all__ = [
    "DEFAULT_TEMPLATES",
    "FORMATS",
    "IMAGE_SUFFIXES",
    "Entry",
    "RawProbe",
    "check_label",
    "detect_format",
    "imagenet_class_names",
    "imagenet_wnids",
    "read_coco",
    "read_flickr",
    "read_imagefolder",
    "read_manifest",
    "read_path",
    "resolve_class_names",
]

_MANIFEST_NAMES = (
    "manifest.jsonl",
    "manifest.csv",
    "pairs.jsonl",
    "captions.jsonl",
    "captions.csv",
    "labels.jsonl",
    "labels.csv",
)


FORMATS: dict[str, Callable[..., RawProbe]] = {
    "manifest": read_manifest,
    "coco": read_coco,
    "flickr": read_flickr,
    "imagefolder": read_imagefolder,
}

_FORMAT_OPTIONS = {
    "manifest": {"images", "id_column", "class_names", "templates", "allow_duplicate_class_names"},
    "coco": {"images"},
    "flickr": {"images"},
    "imagefolder": {"class_names", "templates", "allow_duplicate_class_names"},
}


def _is_flickr_token(p: Path) -> bool:
    return p.name.endswith(".token.txt") or p.suffix == ".token"


def detect_format(path: Path) -> tuple[str, Path]:
    """(format name, the file or folder it reads) for a path spec."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".csv"):
            return "manifest", path
        if _is_flickr_token(path):
            return "flickr", path
        if suffix == ".json":
            return "coco", path
        raise AlignkitError(
            f"cannot tell the probe format of {path}: expected .jsonl/.csv (manifest), .json (COCO "
            f"captions) or *.token.txt (Flickr); pass format= to choose"
        )
    if not path.is_dir():
        raise AlignkitError(f"probe {str(path)!r} is neither a named probe nor an existing path")
    for name in _MANIFEST_NAMES:
        if (path / name).is_file():
            return "manifest", path / name
    for folder in (path, path / "text", path / "annotations"):
        if folder.is_dir():
            tokens = sorted(p for p in folder.iterdir() if _is_flickr_token(p))
            if tokens:
                return "flickr", tokens[0]
    cocos = sorted(path.glob("annotations/captions_*.json")) + sorted(path.glob("captions_*.json"))
    if len(cocos) == 1:
        return "coco", cocos[0]
    if len(cocos) > 1:
        listed = ", ".join(str(p.relative_to(path)) for p in cocos)
        raise AlignkitError(
            f"{path} holds several COCO captions files ({listed}); pass one of them"
        )
    manifests = sorted(p for p in path.iterdir() if p.suffix.lower() in (".jsonl", ".csv"))
    if len(manifests) == 1:
        return "manifest", manifests[0]
    if class_dirs(path):
        return "imagefolder", path
    seen = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "(empty)"
    raise AlignkitError(
        f"no probe found in {path}: expected a manifest (.jsonl/.csv), a Flickr token file, a COCO "
        "captions JSON, class folders, webdataset .tar shards, a CLIP_benchmark folder (split "
        f"folders of .tar shards with nshards.txt) or HF parquet/arrow files; found: {seen}"
    )


def read_path(path: Path, *, format: str | None = None, **options: Any) -> RawProbe:
    """Read a probe from a file or folder, detecting its format unless ``format`` is given."""
    path = Path(path).expanduser().absolute()  # rows keep working if the cwd changes
    if format is None:
        format, target = detect_format(path)
    else:
        if format not in FORMATS:
            raise unknown_key("probe format", format, list(FORMATS))
        target = path
        if format != "imagefolder" and path.is_dir():
            target = detect_format(path)[1]
    allowed = _FORMAT_OPTIONS[format]
    extra = sorted(set(options) - allowed)
    if extra:
        raise AlignkitError(
            f"option(s) {', '.join(extra)} do not apply to {format} probes; expected: "
            f"{', '.join(sorted(allowed)) or '(none)'}"
        )
    if "images" in options and options["images"] is not None:
        options["images"] = Path(options["images"]).expanduser()
    return FORMATS[format](target, **options)
