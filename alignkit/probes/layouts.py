"""The dataset layouts read as they are published: ``coco`` (a COCO captions JSON and its image
folder), ``flickr`` (the Flickr8k/Flickr30k token file, its split files and image folder) and
``imagefolder`` (an ImageNet-style labelled set, one folder per class)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignkit.errors import AlignkitError
from alignkit.probes.classnames import (
    DEFAULT_TEMPLATES,
    imagenet_class_names,
    imagenet_wnids,
    resolve_class_names,
    template_captions,
)
from alignkit.probes.labels import check_templates
from alignkit.probes.raw import Entry, RawProbe

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_FLICKR_IMAGE_DIRS = (
    "images",
    "Flicker8k_Dataset",
    "Flickr8k_Dataset",
    "flickr30k-images",
    "flickr30k_images",
    "Images",
)
_WNID = re.compile(r"^n\d{8}$")


def _find_images_dir(candidates: Sequence[Path], what: str, hint: str) -> Path:
    for cand in candidates:
        if cand.is_dir():
            return cand
    looked = ", ".join(str(c) for c in candidates)
    raise AlignkitError(f"no image folder for {what}: looked in {looked}; {hint}")


def read_coco(path: Path, *, images: Path | None = None) -> RawProbe:
    """A COCO captions JSON (``images`` + ``annotations`` with ``caption``). Rows follow the
    file's image order; each row's captions follow annotation id order; ids are the COCO image
    ids. The image folder is ``images`` or, for ``.../annotations/captions_val2017.json``,
    ``.../val2017`` (also tried: ``images/`` beside the JSON)."""
    try:
        blob = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise AlignkitError(f"cannot read COCO captions file {path}: {exc}") from None
    if not isinstance(blob, dict) or not {"images", "annotations"} <= set(blob):
        got = ", ".join(blob) if isinstance(blob, dict) else type(blob).__name__
        raise AlignkitError(
            f"{path} is not a COCO captions file: expected keys images, annotations; found {got}"
        )
    anns = blob["annotations"]
    if anns and "caption" not in anns[0]:
        raise AlignkitError(
            f"{path} has no 'caption' in its annotations (an instances file?); use captions_*.json"
        )
    if images is None:
        stem = path.stem.split("_", 1)[-1]  # captions_val2017 -> val2017
        images = _find_images_dir(
            [
                path.parent.parent / stem,
                path.parent / stem,
                path.parent / "images",
                path.parent.parent / "images",
            ],
            str(path),
            "pass images=<folder>",
        )
    captions: dict[Any, list[tuple[Any, str]]] = {}
    for ann in anns:
        captions.setdefault(ann.get("image_id"), []).append(
            (ann.get("id", 0), str(ann.get("caption", "")))
        )
    entries = []
    for img in blob["images"]:
        caps = [c.strip() for _, c in sorted(captions.get(img.get("id"), []), key=lambda t: t[0])]
        entries.append(
            Entry(
                id=str(img.get("id")),
                image=images / str(img.get("file_name")),
                captions=caps,
                where=f"{path.name} image id {img.get('id')}",
                attributes={"file_name": img.get("file_name")},
                problem=None if caps else "no captions for this image",
            )
        )
    return RawProbe(str(path), images, entries)


# ----------------------------------------------------------------------------- Flickr


def _flickr_split_files(folder: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(folder.glob("*Images.txt")):
        m = re.search(r"(?:^|[._])([A-Za-z]+)Images\.txt$", p.name)
        if m:
            out[m.group(1)] = p
    return out


def read_flickr(path: Path, *, images: Path | None = None) -> RawProbe:
    """The Flickr8k/Flickr30k token layout: ``name.jpg#k<TAB>caption`` lines. Rows follow the
    order of first appearance; captions are sorted by ``k`` (official order). Split files
    ``*.<split>Images.txt`` beside the token file set ``split`` (rows in none get ``"none"``)."""
    folder = path.parent
    if images is None:
        images = _find_images_dir(
            [folder / d for d in _FLICKR_IMAGE_DIRS]
            + [folder.parent / d for d in _FLICKR_IMAGE_DIRS],
            str(path),
            "pass images=<folder>",
        )
    groups: dict[str, Entry] = {}
    order: dict[str, list[tuple[int, str]]] = {}
    entries: list[Entry] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            key, sep, caption = line.partition("\t")
            name, hashmark, k = key.partition("#")
            if not sep or not hashmark or not k.strip().isdigit():
                entries.append(
                    Entry(
                        f"<line {lineno}>",
                        None,
                        [],
                        f"{path.name} line {lineno}",
                        problem="expected 'image#k<TAB>caption'",
                    )
                )
                continue
            if name not in groups:
                groups[name] = Entry(
                    Path(name).stem,
                    images / name,
                    [],
                    f"{path.name} line {lineno}",
                    attributes={"file_name": name},
                )
                order[name] = []
                entries.append(groups[name])
            order[name].append((int(k), caption.strip()))
    for name, entry in groups.items():
        entry.captions = [c for _, c in sorted(order[name], key=lambda t: t[0])]
    splits = _flickr_split_files(folder)
    if splits:
        membership: dict[str, str] = {}
        for split, sp in splits.items():
            for line in sp.read_text("utf-8").splitlines():
                if line.strip():
                    membership.setdefault(line.strip(), split)
        for name, entry in groups.items():
            entry.attributes["split"] = membership.get(name, "none")
    return RawProbe(str(path), images, entries)


# ----------------------------------------------------------------------------- image folder


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def class_dirs(root: Path) -> list[Path]:
    """The sorted class folders of ``root`` that hold at least one image."""
    return sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and _image_files(p)
    )


def read_imagefolder(
    root: Path,
    *,
    class_names: Sequence[str] | str | Path | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    allow_duplicate_class_names: bool = False,
) -> RawProbe:
    """An ImageNet-style labelled set: ``root/<class>/<image>``; labels index the sorted class
    folders. Class names: ``class_names``, else ``classnames.txt`` in ``root``, else the built-in
    ImageNet names when the folders are WordNet ids (``n01440764``), else the folder names with
    underscores as spaces. Captions come from ``templates`` (``"a photo of a {}."``)."""
    dirs = class_dirs(root)
    if not dirs:
        raise AlignkitError(f"no class folders with images in {root}")
    names = resolve_class_names(class_names, root, allow_duplicate_class_names)
    templates = check_templates(templates, "templates")
    if names is None:
        if all(_WNID.match(d.name) for d in dirs):
            index = {w: i for i, w in enumerate(imagenet_wnids())}
            if all(d.name in index for d in dirs):
                names = tuple(imagenet_class_names()[index[d.name]] for d in dirs)
        if names is None:
            names = tuple(d.name.replace("_", " ") for d in dirs)
    entries = []
    for label, d in enumerate(dirs):
        for f in _image_files(d):
            rel = f.relative_to(root).as_posix()
            entries.append(
                Entry(rel, f, [], f"{d.name}/", label=label, attributes={"class_folder": d.name})
            )
    for e in entries:
        e.captions = template_captions(e.label, names, templates)
    return RawProbe(str(root), root, entries, names)
