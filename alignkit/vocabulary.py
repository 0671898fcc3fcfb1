"""One vocabulary for every command: the options several commands share, declared once.

A concept that appears on more than one command (the device, the feature cache, the extraction
batch, bad probe rows, CPU threads, the seed, a row count) has one flag, one short flag, one
default and one meaning everywhere. Config dataclasses declare such a field with
:func:`shared` instead of :func:`alignkit.options.option`::

    @dataclass(frozen=True)
    class ExtractConfig:
        device: str = shared("device")
        skip_bad: bool = shared("skip_bad")

``tests/test_vocabulary.py`` holds every command's options to this table: a command that spells
a shared concept another way, or gives it another default, fails there.

The words a user sees that are not config fields (``--out``, ``--quiet``, ``--config``,
``--overwrite``) are the typer aliases of :mod:`alignkit.cli._common`.
"""

from __future__ import annotations

from dataclasses import field, replace
from typing import Any

from alignkit.options import Option


def cache_from_cli(value: str) -> str | bool:
    """``--cache off`` (or no/none/false/0) -> False; anything else is the cache root."""
    return False if value.lower() in ("off", "no", "none", "false", "0") else value


#: name -> (default, how it appears). The help says what the option means on every command.
SHARED: dict[str, tuple[Any, Option]] = {
    "device": (
        "auto",
        Option("auto (CUDA when available), cpu, cuda, cuda:N.", metavar="DEVICE"),
    ),
    "cache": (
        True,
        Option(
            "Cache root (the same folder as ALIGNKIT_CACHE_DIR; features are kept in "
            "DIR/features), or 'off' to recompute. Default ALIGNKIT_CACHE_DIR, else "
            "~/.cache/alignkit.",
            metavar="DIR|off",
            type=str,
            from_cli=cache_from_cli,
        ),
    ),
    "extract_batch": (
        64,
        Option(
            "Images or texts per encoder forward pass during feature extraction.",
            flag="--extract-batch",
            metavar="B",
            aliases=("extract_batch_size",),
        ),
    ),
    "skip_bad": (
        False,
        Option(
            "Skip probe rows with a missing or unreadable image or an empty caption (counted "
            "and reported) instead of stopping at the first.",
        ),
    ),
    "threads": (
        None,
        Option(
            "CPU threads for torch. Default: ALIGNKIT_THREADS, else chosen by the work's size "
            "and the CPUs free now.",
            metavar="N",
            type=int,
        ),
    ),
    "class_names": (
        None,
        Option(
            "Class names of a labelled probe, one a line in label order, or 'imagenet'; a "
            "manifest with labels and no captions gets its captions from them. Default: "
            "classnames.txt beside the manifest.",
            metavar="FILE|imagenet",
            type=str,
        ),
    ),
    "image_column": (
        None,
        Option(
            "HF dataset probes (parquet files or a save_to_disk folder): the image column. "
            "Default: detected (an HF Image or binary column). Other probes have no columns.",
            metavar="NAME",
            type=str,
        ),
    ),
    "caption_columns": (
        (),
        Option(
            "HF dataset probes: a caption column (a string or a list of strings a row), "
            "repeatable. Default: detected (caption, captions, text, sentences, raw).",
            flag="--caption-column",
            metavar="NAME",
            aliases=("caption_column",),
            repeat=True,
        ),
    ),
    "id_column": (
        None,
        Option(
            "HF dataset probes: the row id column. Default: id, key, image_id or img_id, "
            "else the row's position.",
            metavar="NAME",
            type=str,
        ),
    ),
    "label_column": (
        None,
        Option(
            "HF dataset probes: the integer label column (an HF ClassLabel's names become the "
            "class names). Default: label, when it holds integers.",
            metavar="NAME",
            type=str,
        ),
    ),
    "store_dtype": (
        "float32",
        Option(
            "How features are stored in the feature cache: float32, or float16 (half the disk "
            "and memory; the float32 features rounded, read back upcast a batch at a time). "
            "Part of the cache key: the two never mix.",
            metavar="float32|float16",
        ),
    ),
    "seed": (0, Option("Seed of every random choice of the run (subsamples, shuffles, init).")),
    "n": (
        None,
        Option(
            "Probe rows: a seeded, stable subsample of ROWS rows; 0 = all rows.",
            short="-n",
            metavar="ROWS",
            type=int,
        ),
    ),
}


def shared(
    name: str, *, default: Any = ..., help_extra: str = "", deprecated: tuple[str, ...] = ()
) -> Any:
    """A dataclass field declared from :data:`SHARED`.

    Args:
        name: a key of :data:`SHARED`.
        default: only for ``n``, whose unset value means "all rows" on most commands and "all
            rows up to 500" on ``rank-encoders``; every other shared default is fixed.
        help_extra: a sentence appended to the shared help (what the default means here).
        deprecated: this command's old names for the concept, still accepted with a note as a
            config-file key and a hidden flag (``batch_size``: ``--batch-size`` on rank-encoders
            and extract, from before ``--extract-batch``).

    Raises:
        KeyError: ``name`` is not a shared concept (the message lists them).
    """
    if name not in SHARED:
        raise KeyError(f"{name!r} is not a shared option: choose from {', '.join(SHARED)}")
    value, how = SHARED[name]
    if default is not ... and name != "n":
        raise ValueError(f"the shared option {name!r} has one default on every command: {value!r}")
    if help_extra:
        how = replace(how, help=f"{how.help} {help_extra}")
    if deprecated:
        how = replace(how, deprecated=tuple(deprecated))
    return field(default=value if default is ... else default, metadata={"option": how})


__all__ = ["SHARED", "cache_from_cli", "shared"]
