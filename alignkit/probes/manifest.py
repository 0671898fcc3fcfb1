"""The ``manifest`` probe format: a JSONL or CSV file with columns ``image`` (path relative to the
manifest), ``caption`` or ``captions`` (a list; in CSV a JSON list), optional ``id``, ``label``,
``split``. A labelled manifest without captions gets prompt-template captions from its class
names."""

from __future__ import annotations

import csv
import functools
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from alignkit.errors import AlignkitError
from alignkit.probes.classnames import DEFAULT_TEMPLATES, resolve_class_names, template_captions
from alignkit.probes.labels import check_templates
from alignkit.probes.lazypath import ImagePath
from alignkit.probes.raw import Entry, RawProbe

Record = tuple[int, dict[str, Any] | None]  # (line number, the parsed line or None)


def _manifest_records(path: Path, columns: dict[str, None]) -> Iterator[Record]:
    """(line number, record or None when the line is not a JSON object), one at a time, so that
    a million parsed lines are never held at once; ``columns`` gets the column names as they
    are seen (a CSV's from its header, before the first row)."""
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                columns.update(dict.fromkeys(c.strip() for c in (reader.fieldnames or [])))
                for rec in reader:
                    rec = {(k or "").strip(): v for k, v in rec.items() if k is not None}
                    rec = {k: v for k, v in rec.items() if v not in (None, "")}
                    yield reader.line_num, rec
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
                        yield lineno, None
                        continue
                    columns.update(dict.fromkeys(rec))
                    yield lineno, rec
    except UnicodeDecodeError as exc:
        raise AlignkitError(
            f"manifest {path} is not UTF-8 text: {_where_not_utf8(path, exc)}; save it as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)"
        ) from None


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


def _layout(columns: dict[str, None], id_column: str) -> tuple[str | None, bool]:
    """The caption column (``captions`` over ``caption``; None: captions from labels) and
    whether rows have ids, as the columns ``columns`` decide them."""
    caption_col = (
        "captions" if "captions" in columns else "caption" if "caption" in columns else None
    )
    return caption_col, id_column in columns


def _check_columns(
    path: Path,
    columns: list[str],
    id_column: str,
    names: tuple[str, ...] | None,
    names_error: AlignkitError | None,
) -> None:
    """The manifest-wide errors, in this order: no image column; class names or templates that
    cannot be used (``names_error``); no captions and no labels; labels without class names; no
    such id column."""
    has = set(columns)
    found = ", ".join(columns) or "(none)"
    if "image" not in has:
        raise AlignkitError(
            f"manifest {path} is missing required column 'image'; found columns: {found}"
        )
    if names_error is not None:
        raise names_error
    caption_col, ids_given = _layout(dict.fromkeys(columns), id_column)
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
    if id_column != "id" and not ids_given:
        raise AlignkitError(
            f"manifest {path} has no id column {id_column!r}; found columns: {found}"
        )


def _entries(
    records: Iterable[Record],
    layout: tuple[str | None, bool],
    *,
    path: Path,
    prefix: str,
    id_column: str,
    names: tuple[str, ...] | None,
    templates: tuple[str, ...],
) -> list[Entry]:
    """The candidate rows of ``records`` read with ``layout`` (see :func:`_layout`); image paths
    are ``prefix`` (a folder with its trailing separator) + the ``image`` value."""
    caption_col, ids_given = layout
    entries: list[Entry] = []
    by_image: dict[str, Entry] = {}
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
            captions = template_captions(label, names, templates)
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
    return entries


def read_manifest(
    path: Path,
    *,
    images: Path | None = None,
    id_column: str = "id",
    class_names: Sequence[str] | str | Path | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    allow_duplicate_class_names: bool = False,
) -> RawProbe:
    """A JSONL or CSV manifest. Image paths are relative to the manifest's folder (or
    ``images``). Without an ``id`` column, a row's id is its image path and rows naming the same
    image are merged into one row with all their captions (``image,caption`` files with one
    caption a line). A labelled manifest without captions gets ``templates`` captions.

    The lines are read once, each made a candidate row as it is parsed, with the columns of the
    CSV header or of the first JSONL record; a JSONL file whose later records bring a column
    that changes how rows read (``captions``, the id column) is read a second time."""
    base = images if images is not None else path.parent
    prefix = os.path.join(os.fspath(base), "")
    try:  # raised after the column checks that come before it (see _check_columns)
        names = resolve_class_names(class_names, path.parent, allow_duplicate_class_names)
        templates = check_templates(templates, "templates")
        names_error = None
    except AlignkitError as exc:
        names, templates, names_error = None, (), exc
    columns: dict[str, None] = {}
    records = _manifest_records(path, columns)
    first = next(records, None)
    if first is None:
        raise AlignkitError(f"manifest {path} has no rows")
    guess = _layout(columns, id_column)  # the CSV header's, or the first JSONL record's
    read = functools.partial(
        _entries, path=path, prefix=prefix, id_column=id_column, names=names, templates=templates
    )
    entries = read(itertools.chain([first], records), guess)
    _check_columns(path, list(columns), id_column, names, names_error)
    layout = _layout(columns, id_column)
    if layout != guess:  # a later record has a column the first lacked: read again with it
        entries = []
        entries = read(_manifest_records(path, {}), layout)
    return RawProbe(str(path), path.parent, entries, names)
