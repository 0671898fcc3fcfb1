"""Class names of labelled probes: the built-in ImageNet-1k names and WordNet ids, names given as
a list or a text file, the prompt-template captions made from them, and the label range check."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.probes.labels import check_class_names, fill_template

DEFAULT_TEMPLATES = ("a photo of a {}.",)
_CLASS_NAME_FILES = ("classnames.txt", "class_names.txt")


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
    class_names: Sequence[str] | str | Path | None,
    search_dir: Path | None,
    allow_duplicates: bool = False,
) -> tuple[str, ...] | None:
    """``class_names`` as given: a sequence, ``"imagenet"`` (the built-in list), a path to a text
    file (one name a line); else a ``classnames.txt`` beside the data; else ``None``. A repeated
    name is an error naming both labels unless ``allow_duplicates``
    (:func:`~alignkit.probes.labels.check_class_names`)."""
    if isinstance(class_names, str) and class_names == "imagenet":
        return imagenet_class_names()
    if isinstance(class_names, (str, Path)):
        path = Path(class_names).expanduser()
        if not path.is_file():
            raise AlignkitError(
                f"class_names must be a list, 'imagenet' or a text file: got {str(class_names)!r}"
                " (no such file)"
            )
        names = [line.strip() for line in path.read_text("utf-8").splitlines() if line.strip()]
        return check_class_names(names, str(path), allow_duplicates=allow_duplicates)
    if class_names is not None:
        return check_class_names(class_names, "class_names", allow_duplicates=allow_duplicates)
    if search_dir is not None:
        for fname in _CLASS_NAME_FILES:
            if (search_dir / fname).is_file():
                return resolve_class_names(search_dir / fname, None, allow_duplicates)
    return None


def template_captions(
    label: int | None, class_names: tuple[str, ...] | None, templates: Sequence[str]
) -> list[str]:
    """The captions of a row labelled ``label``: each template filled with its class name; none
    when the row has no label or the label is out of range (:func:`check_label` reports it)."""
    if label is None or class_names is None or not 0 <= label < len(class_names):
        return []
    return [fill_template(t, class_names[label]) for t in templates]


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
