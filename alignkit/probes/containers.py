"""Probes stored in container files, read where they lie: webdataset shards
(:mod:`alignkit.probes.shards`), CLIP_benchmark's webdataset folders
(:mod:`alignkit.probes.clip_benchmark`) and HF datasets on disk (:mod:`alignkit.probes.hfdata`).

:func:`read_container` is the one place :func:`alignkit.probes.load_probe` asks about them: it
reads a spec that names one (detected, or chosen with ``format=``) and returns ``None`` for every
other spec, which then goes to the file formats of :mod:`alignkit.probes.formats`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from alignkit.errors import AlignkitError
from alignkit.probes.clip_benchmark import is_clip_benchmark, read_clip_benchmark
from alignkit.probes.formats import RawProbe
from alignkit.probes.hfdata import is_hf_dataset, read_hf
from alignkit.probes.shards import is_shard_spec, read_shards

CONTAINER_FORMATS: dict[str, Callable[..., RawProbe]] = {
    "webdataset": read_shards,
    "clip_benchmark": read_clip_benchmark,
    "hf": read_hf,
}
_OPTIONS = {
    "webdataset": {"class_names", "templates"},
    "clip_benchmark": {"class_names", "templates"},
    "hf": {
        "image_column",
        "caption_columns",
        "id_column",
        "label_column",
        "class_names",
        "templates",
    },
}

#: the options that name an HF dataset's columns (:func:`alignkit.probes.hfdata.read_hf`)
COLUMN_OPTIONS = ("image_column", "caption_columns", "id_column", "label_column")


def column_options(spec: Any, given: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The column options set in ``given`` (a mapping, or a config with those attributes; unset
    is ``None`` or empty) when ``spec`` names an HF dataset, or ``PATH:SPLIT`` of one: ``{}``
    for every other probe, which has no columns to name, so that one command can read an HF
    dataset beside a named probe or a CLIP_benchmark folder."""
    get = given.get if isinstance(given, Mapping) else lambda k: getattr(given, k, None)
    chosen = {k: get(k) for k in COLUMN_OPTIONS if get(k) not in (None, (), [], "")}
    if not chosen or not isinstance(spec, (str, os.PathLike)):
        return {}
    base = str(spec).rpartition(":")[0]
    if detect_container(spec) == "hf" or (base and detect_container(base) == "hf"):
        return chosen
    return {}


def check_columns_apply(specs: Sequence[Any], given: Mapping[str, Any] | Any) -> None:
    """Refuse column options (see :func:`column_options`) when none of a command's probe
    ``specs`` is an HF dataset: they would be ignored without a word.

    Raises:
        AlignkitError: a column option set and no HF dataset among ``specs``.
    """
    get = given.get if isinstance(given, Mapping) else lambda k: getattr(given, k, None)
    named = [k for k in COLUMN_OPTIONS if get(k) not in (None, (), [], "")]
    if named and not any(column_options(s, given) for s in specs if s is not None):
        shown = ", ".join(str(s) for s in specs if s is not None) or "none given"
        raise AlignkitError(
            f"option(s) {named[0]} name(s) the columns of an HF dataset probe (parquet files or "
            f"a save_to_disk folder), and no probe here is one (got: {shown}); drop it"
        )


def detect_container(spec: Any) -> str | None:
    """The container format a probe spec names, or ``None``: a shard pattern, ``.tar`` file or
    list of them; a folder with CLIP_benchmark's files; a folder of ``.tar`` shards; a parquet or
    arrow file, a ``save_to_disk`` folder or a folder of parquet files."""
    if is_shard_spec(spec):
        return "webdataset"
    if isinstance(spec, (list, tuple)) or not isinstance(spec, (str, os.PathLike)):
        return None
    path = Path(spec).expanduser()
    if path.is_dir():
        if any(p.suffix.lower() in (".jsonl", ".csv") for p in path.iterdir()):
            return None  # a manifest beside other files is read as before
        if is_clip_benchmark(path):
            return "clip_benchmark"
        if any(p.suffix == ".tar" for p in path.iterdir()):
            return "webdataset"
    return "hf" if is_hf_dataset(path) else None


def read_container(spec: Any, options: dict[str, Any]) -> RawProbe | None:
    """Candidate rows of a container spec (``options["format"]`` chooses one of
    :data:`CONTAINER_FORMATS`, else it is detected); ``None`` when the spec is not one.

    Raises:
        AlignkitError: an option that does not apply to the format (listing those that do),
            and whatever the format's reader raises.
    """
    fmt = options.get("format") or detect_container(spec)
    if fmt not in CONTAINER_FORMATS:
        return None
    rest = {k: v for k, v in options.items() if k != "format"}
    extra = sorted(set(rest) - _OPTIONS[fmt])
    if extra:
        raise AlignkitError(
            f"option(s) {', '.join(extra)} do not apply to {fmt} probes; expected: "
            f"{', '.join(sorted(_OPTIONS[fmt]))}"
        )
    if fmt == "webdataset":
        return read_shards(spec, **rest)  # named by the spec: the pattern, folder or list
    raw = CONTAINER_FORMATS[fmt](Path(spec).expanduser().absolute(), **rest)
    # named as given, as a manifest is: metric keys read zeroshot/wds_imagenet1k/top1
    raw.name = str(spec).rstrip("/") or str(spec)
    return raw
