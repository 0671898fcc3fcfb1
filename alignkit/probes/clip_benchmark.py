"""CLIP_benchmark's webdataset evaluation folders (``clip-benchmark/wds_*`` as published), read as
they are::

    wds_imagenet1k/
        classnames.txt                          # one class name a line, in label order
        zeroshot_classification_templates.txt   # one prompt a line, "{c}" for the class name
        dataset_type.txt                        # "retrieval" for caption sets (optional)
        test/  nshards.txt  0.tar 1.tar ...     # samples: <key>.webp|jpg|png + .cls or .txt

Classification samples carry a ``.cls`` label; retrieval samples a ``.txt`` with one caption a
line. The class names and templates are the probe's ``class_names`` and ``templates`` (with
``{c}`` written as alignkit's ``{}``) unless the caller gives its own; a labelled sample without
a ``.txt`` gets one caption per template, as a labelled manifest does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.probes.formats import DEFAULT_TEMPLATES, RawProbe, resolve_class_names
from alignkit.probes.shards import read_shard_list, samples_to_entries

CLASS_NAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
_MARKERS = (CLASS_NAMES_FILE, TEMPLATES_FILE, "dataset_type.txt")


def _split_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("*.tar")))


def is_clip_benchmark(root: Path) -> bool:
    """A folder with a split folder of ``.tar`` shards and CLIP_benchmark's marker files, or a
    split folder's ``nshards.txt`` (a retrieval set downloaded without its root files)."""
    splits = _split_dirs(root) if root.is_dir() else []
    markers = [root / m for m in _MARKERS] + [s / "nshards.txt" for s in splits]
    return bool(splits) and any(p.is_file() for p in markers)


def read_templates(path: Path) -> tuple[str, ...]:
    """Prompt templates of a CLIP_benchmark templates file, ``{c}`` written as ``{}``.

    Raises:
        AlignkitError: the file is empty, or a template lacks exactly one ``{c}``.
    """
    lines = [line.strip() for line in path.read_text("utf-8").splitlines() if line.strip()]
    if not lines:
        raise AlignkitError(f"{path} holds no templates; expected one prompt a line with {{c}}")
    for line in lines:
        if line.count("{c}") != 1 or re.search(r"\{(?!c\})", line):
            raise AlignkitError(
                f"{path}: each template needs exactly one '{{c}}' for the class name: got {line!r}"
            )
    return tuple(line.replace("{c}", "{}") for line in lines)


def _shards_of(split_dir: Path) -> list[Path]:
    """The split's shards in number order (``0.tar 1.tar ... 10.tar``), as ``nshards.txt`` counts
    them when it is there."""
    tars = [p for p in split_dir.glob("*.tar") if p.is_file()]
    tars.sort(key=lambda p: (int(p.stem), p.name) if p.stem.isdigit() else (-1, p.name))
    count = split_dir / "nshards.txt"
    if count.is_file():
        text = count.read_text("utf-8").strip()
        if text.isdigit() and int(text) != len(tars):
            raise AlignkitError(
                f"{split_dir}: nshards.txt says {text} shards, found {len(tars)} .tar files; "
                "a download is incomplete"
            )
    return tars


def read_clip_benchmark(
    root: Path,
    *,
    class_names: Sequence[str] | str | Path | None = None,
    templates: Sequence[str] | None = None,
) -> RawProbe:
    """A CLIP_benchmark webdataset folder: every split folder's shards, each row's ``split``
    attribute naming its folder (``load_probe(..., split="test")`` keeps one). Row ids are the
    sample keys; when the folder has several splits, ``<split>/<key>`` (their keys repeat).
    ``class_names`` and ``templates`` override the folder's files.

    Raises:
        AlignkitError: a damaged shard, a templates file without ``{c}`` placeholders, a split
            folder whose shard count disagrees with its ``nshards.txt``.
    """
    splits = _split_dirs(root)
    names = resolve_class_names(class_names, root)
    own = root / TEMPLATES_FILE
    if templates is None:
        shipped = read_templates(own) if own.is_file() else None
    else:
        shipped = tuple(templates)
    entries = []
    for folder in splits:
        samples = read_shard_list(_shards_of(folder))
        if len(splits) > 1:
            for s in samples:
                s.key = f"{folder.name}/{s.key}"
        prompts = shipped or DEFAULT_TEMPLATES
        entries += samples_to_entries(samples, names, prompts, {"split": folder.name})
    return RawProbe(str(root), root, entries, names, templates=shipped)
