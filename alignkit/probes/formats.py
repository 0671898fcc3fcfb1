"""Readers for the probe file formats. Each turns a file or folder into a :class:`RawProbe`:
candidate rows that still carry where they came from (file and line), so that
:func:`alignkit.probes.load_probe` can validate them and name the culprit in one line.

Formats (``FORMATS``, chosen by :func:`detect_format` or the ``format=`` option):

- ``manifest``: JSONL or CSV; columns ``image`` (path relative to the manifest), ``caption`` or
  ``captions`` (a list; in CSV a JSON list), optional ``id``, ``label``, ``split``.
  A labelled manifest without captions gets prompt-template captions from its class names.
- ``coco``: a COCO captions JSON (``captions_val2017.json``) and its image folder.
- ``flickr``: the Flickr8k/Flickr30k token file (``Flickr8k.token.txt``, ``results_20130124.token``)
  with optional split files (``Flickr_8k.testImages.txt``) and an image folder.
- ``imagefolder``: an ImageNet-style labelled set: one folder per class.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image

from alignkit.errors import AlignkitError, unknown_key
from alignkit.probes.lazypath import ImagePath

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
DEFAULT_TEMPLATES = ("a photo of a {}.",)
_MANIFEST_NAMES = (
    "manifest.jsonl",
    "manifest.csv",
    "pairs.jsonl",
    "captions.jsonl",
    "captions.csv",
    "labels.jsonl",
    "labels.csv",
)
_CLASS_NAME_FILES = ("classnames.txt", "class_names.txt")
_FLICKR_IMAGE_DIRS = (
    "images",
    "Flicker8k_Dataset",
    "Flickr8k_Dataset",
    "flickr30k-images",
    "flickr30k_images",
    "Images",
)
_WNID = re.compile(r"^n\d{8}$")


@dataclass
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
    name: str
    root: Path | None
    entries: list[Entry]
    class_names: tuple[str, ...] | None = None
    content_key: tuple[str, ...] = ()
    needs_checks: bool = True  # file-backed rows get the image checks; rendered rows do not
    templates: tuple[str, ...] | None = None  # prompt templates the data ships with ({} = class)


# ----------------------------------------------------------------------------- class names


@cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1,000 readable ImageNet-1k class names in standard index order (the curated list
    used by CLIP's zero-shot notebooks, e.g. ``[1] == "goldfish"``), with one change: that list
    names labels 657 and 744 both ``missile``, so their prompts are identical and the classes can
    never be told apart; label 744 (WordNet n04008634, "projectile, missile") is ``projectile``,
    its synset's first lemma. Every name is distinct."""
    text = resources.files("alignkit.probes").joinpath("imagenet_classes.txt").read_text("utf-8")
    return tuple(line for line in text.splitlines() if line)


@cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k WordNet ids in standard index order (sorted)."""
    text = resources.files("alignkit.probes").joinpath("imagenet_wnids.txt").read_text("utf-8")
    return tuple(line for line in text.splitlines() if line)


def resolve_class_names(
    class_names: Sequence[str] | str | Path | None, search_dir: Path | None
) -> tuple[str, ...] | None:
    """``class_names`` as given: a sequence, ``"imagenet"`` (the built-in list), a path to a text
    file (one name a line); else a ``classnames.txt`` beside the data; else ``None``."""
    if isinstance(class_names, str) and class_names == "imagenet":
        return imagenet_class_names()
    if isinstance(class_names, (str, Path)):
        path = Path(class_names).expanduser()
        if not path.is_file():
            raise AlignkitError(
                f"class_names must be a list, 'imagenet' or a text file: got {str(class_names)!r}"
                " (no such file)"
            )
        return tuple(line.strip() for line in path.read_text("utf-8").splitlines() if line.strip())
    if class_names is not None:
        return tuple(str(c) for c in class_names)
    if search_dir is not None:
        for fname in _CLASS_NAME_FILES:
            if (search_dir / fname).is_file():
                return resolve_class_names(search_dir / fname, None)
    return None


def _template_captions(
    label: int | None, class_names: tuple[str, ...] | None, templates: Sequence[str]
) -> list[str]:
    if label is None or class_names is None or not 0 <= label < len(class_names):
        return []
    return [t.format(class_names[label]) for t in templates]


def check_label(label: int | None, class_names: tuple[str, ...] | None) -> str | None:
    """A reason when ``label`` is out of range, else ``None``."""
    if label is None:
        return None
    if class_names is not None and not 0 <= label < len(class_names):
        return (
            f"label {label} out of range 0..{len(class_names) - 1} ({len(class_names)} class names)"
        )
    if label < 0:
        return f"label {label} out of range (labels are class indices >= 0)"
    return None


# ----------------------------------------------------------------------------- manifest


def _read_manifest_records(path: Path) -> tuple[list[tuple[int, dict | None]], list[str]]:
    """(line number, record or None when the line is not a JSON object) and the column names."""
    records: list[tuple[int, dict | None]] = []
    columns: dict[str, None] = {}
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                columns = dict.fromkeys(c.strip() for c in (reader.fieldnames or []))
                for rec in reader:
                    rec = {(k or "").strip(): v for k, v in rec.items() if k is not None}
                    rec = {k: v for k, v in rec.items() if v not in (None, "")}
                    records.append((reader.line_num, rec))
        else:
            with path.open(encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        rec = None
                    if not isinstance(rec, dict):
                        records.append((lineno, None))
                        continue
                    columns.update(dict.fromkeys(rec))
                    records.append((lineno, rec))
    except UnicodeDecodeError as exc:
        raise AlignkitError(
            f"manifest {path} is not UTF-8 text: {_where_not_utf8(path, exc)}; save it as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)"
        ) from None
    return records, list(columns)


def _where_not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    """Line, column and byte offset of the first bytes of ``path`` that are not UTF-8 (the
    decoder's own offset counts from the start of its read buffer, not of the file)."""
    offset = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                byte = raw[bad.start : bad.start + 1].hex().upper()
                column = len(raw[: bad.start].decode("utf-8", errors="replace")) + 1
                return (
                    f"line {lineno}, column {column} (byte offset {offset + bad.start}) has the "
                    f"byte 0x{byte}, {bad.reason}"
                )
            offset += len(raw)
    return str(exc.reason)


def _parse_captions(value: Any) -> list[str] | None:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                return [value]
        else:
            return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(c, str) for c in value):
        return list(value)
    return None


def _parse_label(value: Any) -> tuple[int | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, bool):
        return None, f"label {value!r} is not an integer class index"
    if isinstance(value, int):
        return value, None
    if isinstance(value, float) and value.is_integer():
        return int(value), None
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value), None
    return None, f"label {value!r} is not an integer class index"


def read_manifest(
    path: Path,
    *,
    images: Path | None = None,
    id_column: str = "id",
    class_names: Sequence[str] | str | Path | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> RawProbe:
    """A JSONL or CSV manifest. Image paths are relative to the manifest's folder (or
    ``images``). Without an ``id`` column, a row's id is its image path and rows naming the same
    image are merged into one row with all their captions (``image,caption`` files with one
    caption a line). A labelled manifest without captions gets ``templates`` captions."""
    base = images if images is not None else path.parent
    records, columns = _read_manifest_records(path)
    if not records:
        raise AlignkitError(f"manifest {path} has no rows")
    has = set(columns)
    found = ", ".join(columns) or "(none)"
    if "image" not in has:
        raise AlignkitError(
            f"manifest {path} is missing required column 'image'; found columns: {found}"
        )
    caption_col = "captions" if "captions" in has else "caption" if "caption" in has else None
    names = resolve_class_names(class_names, path.parent)
    if caption_col is None and "label" not in has:
        raise AlignkitError(
            f"manifest {path} is missing required column 'caption' or 'captions' (or 'label' "
            f"with class names); found columns: {found}"
        )
    if caption_col is None and names is None:
        raise AlignkitError(
            f"manifest {path} has labels but no captions and no class names: pass class_names= "
            f"(a list, a text file, or 'imagenet') or put classnames.txt beside it"
        )
    ids_given = id_column in has
    if id_column != "id" and not ids_given:
        raise AlignkitError(
            f"manifest {path} has no id column {id_column!r}; found columns: {found}"
        )
    entries: list[Entry] = []
    by_image: dict[str, Entry] = {}
    prefix = os.path.join(os.fspath(base), "")
    for lineno, rec in records:
        where = f"{path.name} line {lineno}"
        if rec is None:
            entries.append(Entry(f"<line {lineno}>", None, [], where, problem="not a JSON object"))
            continue
        image_value = rec.get("image")
        row_id = str(rec[id_column]) if ids_given and rec.get(id_column) is not None else None
        if not isinstance(image_value, str) or not image_value.strip():
            entries.append(
                Entry(row_id or f"<line {lineno}>", None, [], where, problem="no 'image' value")
            )
            continue
        image_rel = image_value.strip()
        label, label_problem = _parse_label(rec.get("label"))
        if caption_col is not None:
            captions = _parse_captions(rec.get(caption_col)) if caption_col in rec else []
            caption_problem = (
                None
                if captions is not None
                else (f"'{caption_col}' must be a string or a list of strings")
            )
            captions = captions or []
        else:
            captions = _template_captions(label, names, templates)
            caption_problem = None
        attributes = {
            k: v
            for k, v in rec.items()
            if k not in ("image", "caption", "captions", "label", id_column)
            and isinstance(v, (str, int, float, bool))
        }
        if row_id is None and image_rel in by_image:  # one caption a line: merge into one row
            first = by_image[image_rel]
            first.captions.extend(c.strip() for c in captions)
            first.problem = first.problem or label_problem or caption_problem
            continue
        entry = Entry(
            id=row_id if row_id is not None else image_rel,
            image=ImagePath.under(prefix, image_rel),  # a Path costs 15 us a row at 10^6 rows
            captions=[c.strip() for c in captions],
            where=where,
            label=label,
            attributes=attributes,
            problem=label_problem or caption_problem,
        )
        if row_id is None:
            by_image[image_rel] = entry
        entries.append(entry)
    return RawProbe(str(path), path.parent, entries, names)


# ----------------------------------------------------------------------------- COCO


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


def _class_dirs(root: Path) -> list[Path]:
    return sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and _image_files(p)
    )


def read_imagefolder(
    root: Path,
    *,
    class_names: Sequence[str] | str | Path | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> RawProbe:
    """An ImageNet-style labelled set: ``root/<class>/<image>``; labels index the sorted class
    folders. Class names: ``class_names``, else ``classnames.txt`` in ``root``, else the built-in
    ImageNet names when the folders are WordNet ids (``n01440764``), else the folder names with
    underscores as spaces. Captions come from ``templates`` (``"a photo of a {}."``)."""
    dirs = _class_dirs(root)
    if not dirs:
        raise AlignkitError(f"no class folders with images in {root}")
    names = resolve_class_names(class_names, root)
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
        e.captions = _template_captions(e.label, names, templates)
    return RawProbe(str(root), root, entries, names)


# ----------------------------------------------------------------------------- detection

FORMATS: dict[str, Callable[..., RawProbe]] = {
    "manifest": read_manifest,
    "coco": read_coco,
    "flickr": read_flickr,
    "imagefolder": read_imagefolder,
}

_FORMAT_OPTIONS = {
    "manifest": {"images", "id_column", "class_names", "templates"},
    "coco": {"images"},
    "flickr": {"images"},
    "imagefolder": {"class_names", "templates"},
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
    if _class_dirs(path):
        return "imagefolder", path
    seen = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "(empty)"
    raise AlignkitError(
        f"no probe found in {path}: expected a manifest (.jsonl/.csv), a Flickr token file, a COCO "
        f"captions JSON or class folders; found: {seen}"
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
