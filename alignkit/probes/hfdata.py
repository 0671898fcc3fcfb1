"""Hugging Face datasets on disk as probes: parquet files (the hub's layout) or a
``Dataset.save_to_disk`` folder (arrow files), read with :mod:`pyarrow`, the library both are
written with, without a copy: only the id, caption and label columns are read at load; a row's
image bytes are read when a worker asks for them (:class:`TableImage`).

Columns are detected or given: the image column (an HF ``Image`` feature, stored as a struct of
``bytes`` and ``path``, or plain binary), one or more caption columns (a string or a list of
strings per row), an optional id column (else the row's position) and label column (an HF
``ClassLabel``, whose names become the class names).

Why not HF ``datasets`` itself: ``load_dataset("parquet", ...)`` writes an arrow copy of every
image into its cache before the first row is read, and it brings a dozen packages; pyarrow reads
the same files in place, by column, with random access by row.
"""

from __future__ import annotations

import bisect
import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from alignkit.errors import AlignkitError
from alignkit.probes.formats import Entry, RawProbe, resolve_class_names
from alignkit.probes.members import decode_member

IMAGE_COLUMNS = ("image", "img", "jpg", "png", "webp")
CAPTION_COLUMNS = ("caption", "captions", "text", "sentences", "raw")
ID_COLUMNS = ("id", "key", "image_id", "img_id")
_SPLIT_FILE = re.compile(r"^(?P<split>[A-Za-z0-9_]+?)-\d+-of-\d+$")


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:  # pragma: no cover - a declared dependency
        raise AlignkitError("reading HF datasets needs pyarrow: pip install pyarrow") from None
    return pyarrow


@functools.lru_cache(maxsize=4)
def _table(path: str) -> Any:
    """An arrow (save_to_disk) file as a memory-mapped table: no copy; per process."""
    pa = _pyarrow()
    return pa.ipc.open_stream(pa.memory_map(path)).read_all()


@functools.lru_cache(maxsize=64)
def _group_starts(path: str) -> list[int]:
    """First row of each row group of a parquet file."""
    meta = _pyarrow().parquet.ParquetFile(path).metadata
    starts, total = [], 0
    for g in range(meta.num_row_groups):
        starts.append(total)
        total += meta.row_group(g).num_rows
    return starts


@functools.lru_cache(maxsize=2)
def _group(path: str, group: int, column: str) -> Any:
    """One column of one parquet row group: workers read rows in order, so a batch of rows costs
    one read, and memory holds two row groups' images, not a file's."""
    return _pyarrow().parquet.ParquetFile(path).read_row_group(group, columns=[column]).column(0)


def _cell(path: str, row: int, column: str) -> Any:
    if not path.endswith(".parquet"):
        return _table(path).column(column)[row].as_py()
    starts = _group_starts(path)
    g = bisect.bisect_right(starts, row) - 1
    return _group(path, g, column)[row - starts[g]].as_py()


@dataclass(frozen=True)
class TableImage:
    """Row ``row`` of column ``column`` of one parquet or arrow file. Picklable."""

    path: str
    row: int
    column: str

    def read_bytes(self) -> bytes:
        value = _cell(self.path, self.row, self.column)
        data = value.get("bytes") if isinstance(value, dict) else value
        if not data:
            raise AlignkitError(f"{self}: no image bytes (an image stored only as a path?)")
        return bytes(data)

    def __call__(self) -> Image.Image:
        return decode_member(self)

    def __str__(self) -> str:
        return f"{self.path} row {self.row}"


# ----------------------------------------------------------------------------- layout


def hf_files(root: Path) -> tuple[list[Path], dict[str, Any]]:
    """The data files of a parquet or arrow file, a folder of parquet files (or of sub-folders of
    them), or a ``save_to_disk`` folder, and its HF features (``{}`` when absent)."""
    if root.is_file():
        return [root], {}
    state = root / "state.json"
    if state.is_file():  # Dataset.save_to_disk
        blob = json.loads(state.read_text("utf-8"))
        files = [root / f["filename"] for f in blob.get("_data_files", [])]
        info = root / "dataset_info.json"
        features = json.loads(info.read_text("utf-8")).get("features", {}) if info.is_file() else {}
        return files, features
    return sorted(root.glob("*.parquet")) or sorted(root.glob("*/*.parquet")), {}


def is_hf_dataset(path: Path) -> bool:
    """A parquet or arrow file, a ``save_to_disk`` folder, or a folder holding parquet files
    (or a ``data/`` folder of them, the hub's layout)."""
    if path.is_file():
        return path.suffix in (".parquet", ".arrow")
    return path.is_dir() and ((path / "state.json").is_file() or bool(hf_files(path)[0]))


def _features_of(path: Path, schema: Any, features: dict[str, Any]) -> dict[str, Any]:
    if features:
        return features
    meta = (schema.metadata or {}).get(b"huggingface")
    if meta:
        try:
            return json.loads(meta).get("info", {}).get("features", {})
        except ValueError:
            return {}
    return {}


def _is_text(t: Any) -> bool:
    pa = _pyarrow()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return True
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_text(t.value_type)


def _is_image(t: Any) -> bool:
    pa = _pyarrow()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0


@dataclass(frozen=True)
class Columns:
    image: str
    captions: tuple[str, ...]
    id: str | None
    label: str | None


def pick_columns(
    where: str,
    schema: Any,
    *,
    image_column: str | None,
    caption_columns: Sequence[str] | str | None,
    id_column: str | None,
    label_column: str | None,
) -> Columns:
    """The columns to read, detected (see the module docstring) or as given.

    Raises:
        AlignkitError: a named column missing, or none detected, listing the columns found.
    """
    types = {f.name: f.type for f in schema}
    found = ", ".join(f"{n} ({t})" for n, t in types.items())

    def need(name: str, what: str) -> str:
        if name not in types:
            raise AlignkitError(f"{where} has no {what} column {name!r}; found columns: {found}")
        return name

    if image_column is not None:
        image = need(image_column, "image")
    else:
        images = [n for n in IMAGE_COLUMNS if n in types and _is_image(types[n])]
        images += [n for n, t in types.items() if _is_image(t) and n not in images]
        if not images:
            raise AlignkitError(
                f"{where} has no image column (HF Image or binary); found columns: {found}; "
                "pass image_column=NAME"
            )
        image = images[0]
    if isinstance(caption_columns, str):
        caption_columns = (caption_columns,)
    if caption_columns is not None:
        captions = tuple(need(c, "caption") for c in caption_columns)
    else:
        captions = tuple(c for c in CAPTION_COLUMNS if c in types and _is_text(types[c]))
    if id_column is not None:
        ident: str | None = need(id_column, "id")
    else:
        ident = next((c for c in ID_COLUMNS if c in types), None)
    label = need(label_column, "label") if label_column is not None else None
    if label is None and "label" in types and _pyarrow().types.is_integer(types["label"]):
        label = "label"
    if not captions and label is None:
        raise AlignkitError(
            f"{where} has no caption column ({', '.join(CAPTION_COLUMNS)}) and no label; found "
            f"columns: {found}; pass caption_columns=NAME"
        )
    return Columns(image, captions, ident, label)


# ----------------------------------------------------------------------------- reading


def _schema(path: Path) -> Any:
    pa = _pyarrow()
    try:
        if path.suffix == ".parquet":
            return pa.parquet.read_schema(path)
        with pa.memory_map(str(path)) as mm:
            return pa.ipc.open_stream(mm).schema
    except (OSError, pa.ArrowInvalid) as exc:
        kind = "parquet" if path.suffix == ".parquet" else "arrow"
        raise AlignkitError(f"{path} is not a readable {kind} file: {exc}") from None


def _columns(path: Path, names: list[str]) -> dict[str, list[Any]]:
    pa = _pyarrow()
    if path.suffix == ".parquet":
        table = pa.parquet.read_table(path, columns=names)
    else:
        table = _table(str(path)).select(names)  # memory-mapped: images are not read
    return {n: table.column(n).to_pylist() for n in names}


def _captions(values: list[Any]) -> tuple[list[str], str | None]:
    out: list[str] = []
    for v in values:
        if v is None:
            continue
        items = [v] if isinstance(v, str) else v
        if not all(isinstance(c, str) for c in items):
            return [], "captions must be strings or lists of strings"
        out.extend(c.strip() for c in items)
    return out, None


def _class_names_from(features: dict[str, Any], label: str | None) -> tuple[str, ...] | None:
    feature = features.get(label) if label else None
    if isinstance(feature, dict) and isinstance(feature.get("names"), list):
        return tuple(str(n) for n in feature["names"])
    return None


def read_hf(
    root: Path,
    *,
    image_column: str | None = None,
    caption_columns: Sequence[str] | str | None = None,
    id_column: str | None = None,
    label_column: str | None = None,
    class_names: Sequence[str] | str | Path | None = None,
    templates: Sequence[str] = ("a photo of a {}.",),
) -> RawProbe:
    """An HF dataset on disk (parquet files or a ``save_to_disk`` folder) as candidate probe rows,
    in file then row order. A ``split`` column, else a hub file name
    (``train-00000-of-00002.parquet``), sets the rows' ``split``.

    Raises:
        AlignkitError: no data files, a file that is not parquet/arrow, a named column missing.
    """
    files, features = hf_files(root)
    if not files:
        raise AlignkitError(f"no parquet or arrow data files in {root}")
    entries: list[Entry] = []
    names: tuple[str, ...] | None = None
    start = 0
    for path in files:
        schema = _schema(path)
        cols = pick_columns(
            str(path),
            schema,
            image_column=image_column,
            caption_columns=caption_columns,
            id_column=id_column,
            label_column=label_column,
        )
        feats = _features_of(path, schema, features)
        if names is None:
            names = resolve_class_names(class_names, root if root.is_dir() else None)
            names = names or _class_names_from(feats, cols.label)
        split_col = (
            "split" if "split" in schema.names and _is_text(schema.field("split").type) else None
        )
        wanted = [c for c in (*cols.captions, cols.id, cols.label, split_col) if c is not None]
        data = _columns(path, list(dict.fromkeys(wanted)))
        count = len(data[wanted[0]])
        m = _SPLIT_FILE.match(path.stem)
        attributes = {"split": m.group("split")} if m else {}
        for r in range(count):
            captions, problem = _captions([data[c][r] for c in cols.captions])
            label = data[cols.label][r] if cols.label else None
            if not captions and label is not None and names and 0 <= label < len(names):
                captions = [t.format(names[label]) for t in templates]
            ident = data[cols.id][r] if cols.id else start + r
            entries.append(
                Entry(
                    id=str(ident),
                    image=TableImage(str(path), r, cols.image),
                    captions=captions,
                    where=f"{path.name} row {r}",
                    label=label,
                    attributes={"split": data[split_col][r]} if split_col else dict(attributes),
                    problem=problem,
                )
            )
        start += count
    return RawProbe(str(root), root if root.is_dir() else root.parent, entries, names)
