"""Run configurations, declared once: the dataclass, the config file and the command line.

Each setting of a run is one field of a frozen dataclass, declared with
:func:`alignkit.options.option`: its default, its help text, its command-line flag and its
config-file key. From that one declaration come the API (``RankConfig(n=200)``), the config-file
reader (:func:`load_config`; an unknown key is an error that suggests the closest valid one) and
the command's options (:mod:`alignkit.cli._options` turns the fields into typer options). The
training and evaluation configs can declare their fields the same way (see alignkit/options.py).

A config file (TOML or YAML) uses the fields' keys, e.g. ``rank.toml``::

    probe = "flickr8k:test"
    n = 500
    metrics = ["linear_cka_unbiased", "mutual_knn"]
    permutations = 200
    vision = ["torchvision:mobilenet_v2",
              { spec = "timm:vit_small_patch14_dinov2", pooling = "cls" }]
    text = ["st:sentence-transformers/all-MiniLM-L6-v2"]

An encoder entry is a spec string, or a table with ``spec`` and the options ``create_encoder``
takes (``pooling``, ``layer``, backend options). Options given on the command line override the
file.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from alignkit import options
from alignkit.errors import AlignkitError
from alignkit.options import Option, declared, default_of, file_key, merge, option, valid_keys
from alignkit.vocabulary import shared

DEFAULT_METRICS: tuple[str, ...] = ("mutual_knn", "linear_cka_unbiased", "linear_cka")
"""The pre-training metrics every scorer computes by default (``rank-encoders``,
:func:`alignkit.score_pairs`, ``predictivity``), the first one ranking: in the 42-pair study
(docs/evaluation.md, "Which metric picks the better pair?") mutual-kNN picks the pair that trains
better in 0.99 of decisions on image->text R@5 (0.97 at n = 500) against unbiased CKA's 0.87."""
DEFAULT_SET = "offline-small"
DEFAULT_N = 500
LAYER_MODES = ("last", "all")
NULL_METHODS = ("analytic", "permutation", "none")  # as alignkit.metrics.score_pairs takes them
CAPTION_POLICIES = ("first", "mean", "random")  # as alignkit.probes.ProbeSet.captions takes them

C = TypeVar("C")


# ----------------------------------------------------------------------------------------------
# encoder entries
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderEntry:
    """One encoder to rank: a spec string plus the options passed to ``create_encoder``.

    ``options`` is a sorted tuple of ``(key, value)`` so the entry stays hashable and frozen.
    """

    spec: str
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(
        cls, value: str | EncoderEntry | Mapping[str, Any], where: str = "encoder"
    ) -> EncoderEntry:
        """A spec string, an ``EncoderEntry``, or a mapping ``{"spec": ..., **options}``."""
        if isinstance(value, EncoderEntry):
            return value
        if isinstance(value, str):
            if not value.strip():
                raise AlignkitError(
                    f"{where}: expected an encoder spec such as 'torchvision:mobilenet_v2', got ''"
                )
            return cls(value.strip())
        if isinstance(value, Mapping):
            if "spec" not in value:
                raise AlignkitError(
                    f"{where}: an encoder table needs a 'spec' key, got keys {sorted(value)}"
                )
            options = {k: v for k, v in value.items() if k != "spec"}
            if "device" in options:
                raise AlignkitError(
                    f"{where}: set the device for the whole run (device = ...), not per encoder"
                )
            return cls(str(value["spec"]), tuple(sorted(options.items())))
        raise AlignkitError(
            f"{where}: expected a spec string or a table with 'spec', got {type(value).__name__}"
        )

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def label(self) -> str:
        """The name this encoder has in tables: the spec, plus its options when it has any."""
        if not self.options:
            return self.spec
        opts = ",".join(f"{k}={v}" for k, v in self.options)
        return f"{self.spec}[{opts}]"


# ----------------------------------------------------------------------------------------------
# the ranking run
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RankConfig:
    """Everything that defines a ranking run (``rank_encoders``, ``alignkit rank-encoders``).

    Defaults are the built-in default run. Each field's help text (``alignkit rank-encoders
    --help``) is its documentation; the notes here are for Python callers:
    ``vision``/``text`` hold :class:`EncoderEntry` s (strings and ``{"spec": ...}`` mappings are
    converted); ``n=None`` means all rows up to 500, ``n=0`` all rows; ``cache`` is ``True``
    (the default cache folder), a folder, or ``False`` (no cache); ``threads=None`` lets
    alignkit choose by the work's size and the free CPUs (``ALIGNKIT_THREADS`` wins).
    ``batch_size=`` is the deprecated name of ``extract_batch`` (a ``DeprecationWarning``).
    """

    vision: tuple[EncoderEntry, ...] = option(
        (),
        "Vision encoder spec, repeatable (e.g. torchvision:mobilenet_v2); "
        "`alignkit list-encoders` lists them.",
        short="-v",
        metavar="SPEC",
        repeat=True,
    )
    text: tuple[EncoderEntry, ...] = option(
        (),
        "Text encoder spec, repeatable (e.g. st:sentence-transformers/all-MiniLM-L6-v2).",
        short="-t",
        metavar="SPEC",
        repeat=True,
    )
    encoder_set: str | None = option(
        None,
        "Named encoder set (offline-small, offline-all) whose vision, text and control encoders "
        "are added. With no encoder given, offline-small.",
        flag="--set",
        key="set",
        metavar="NAME",
        type=str,
    )
    probe: str | None = option(
        None,
        "Probe set: flickr8k[:train|dev|test], imagenet-samples, coco-val2017, synthetic, a "
        "manifest path, webdataset shards ('dir/{00000..00009}.tar' or a folder of .tar), a "
        "CLIP_benchmark folder or HF parquet files. Default flickr8k:test when ALIGNKIT_DATA_DIR "
        "holds it, else synthetic.",
        short="-p",
        metavar="SPEC",
        type=str,
    )
    class_names: str | None = shared("class_names")
    image_column: str | None = shared("image_column")
    caption_columns: tuple[str, ...] = shared("caption_columns")
    id_column: str | None = shared("id_column")
    label_column: str | None = shared("label_column")
    n: int | None = shared(
        "n",
        default=None,
        help_extra=f"Not given: all rows up to {DEFAULT_N} (the same rows --n {DEFAULT_N} picks).",
    )
    metrics: tuple[str, ...] = option(
        DEFAULT_METRICS,
        "Metric, repeatable; the first orders the ranking. Choices: linear_cka_unbiased, "
        "linear_cka (biased, as in the reference code), rbf_cka, mutual_knn, cknna, svcca, "
        "ridge_alignability, procrustes_alignability, cca_alignability (held-out retrieval MRR).",
        flag="--metric",
        short="-m",
        metavar="NAME",
        aliases=("metric",),
        repeat=True,
    )
    permutations: int = option(
        100,
        "Permutations of the image-caption pairing for the null (null mean, z, p); 0 = none. "
        "The smallest possible p is 1/(B+1).",
        metavar="B",
    )
    null: str = option(
        "analytic",
        "How each score's null (mean, z, p) is found: analytic = exact permutation moments for the "
        "CKA family (p far below 1/(B+1) resolvable), the B permutations for the other metrics; "
        "permutation = B permutations for every metric; none.",
        metavar="analytic|permutation|none",
    )
    subsamples: int = option(
        10, "Row subsamples (without replacement) for the score intervals; 0 = none.", metavar="S"
    )
    layers: str = option(
        "last",
        "'all': also score every vision layer x text layer under the first metric, draw a layer "
        "heatmap per pair and give the best layer pair with a p corrected for picking the maximum.",
        metavar="last|all",
    )
    k: int = option(10, "Neighbours for mutual_knn and cknna.", metavar="K")
    seed: int = shared("seed")
    extract_batch: int = shared("extract_batch", deprecated=("batch_size",))
    caption_policy: str = option(
        "first",
        "Which caption a text encoder sees for a row with several: the first, the mean of all "
        "caption embeddings (as the reference code), or a seeded random one.",
        metavar="first|mean|random",
    )
    device: str = shared("device")
    threads: int | None = shared("threads")
    cache: str | bool = shared("cache")
    alpha: float = option(
        0.05, "A pair is significantly above chance when its permutation p < alpha.", metavar="A"
    )
    keep_going: bool = option(
        False,
        "Skip encoders that fail to load (reported, and listed in run.json) instead of stopping.",
    )
    skip_bad: bool = shared("skip_bad", help_extra="They are listed in run.json and summary.md.")
    svg: bool = option(
        False,
        "Also write each metric's heatmap as SVG (vector, for papers) beside its PNG.",
    )
    # RankConfig(batch_size=...) from before extract_batch: still works, with a warning
    batch_size: InitVar[int | None] = None

    def __post_init__(self, batch_size: int | None = None) -> None:
        if batch_size is not None:
            warnings.warn(
                "RankConfig(batch_size=...) is deprecated: use extract_batch=...",
                DeprecationWarning,
                stacklevel=3,
            )
            object.__setattr__(self, "extract_batch", batch_size)
        object.__setattr__(
            self, "vision", tuple(EncoderEntry.parse(v, "vision") for v in self.vision)
        )
        object.__setattr__(self, "text", tuple(EncoderEntry.parse(t, "text") for t in self.text))
        if isinstance(self.metrics, str):
            object.__setattr__(self, "metrics", (self.metrics,))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if not self.metrics:
            raise AlignkitError("metrics: expected at least one metric, got none")
        if len(set(self.metrics)) != len(self.metrics):
            raise AlignkitError(f"metrics: each metric once, got {list(self.metrics)}")
        if self.layers not in LAYER_MODES:
            raise AlignkitError(
                f"layers must be one of {', '.join(LAYER_MODES)}: got {self.layers!r}"
            )
        if self.null not in NULL_METHODS:
            raise AlignkitError(f"null must be one of {', '.join(NULL_METHODS)}: got {self.null!r}")
        for name, low in (("permutations", 0), ("subsamples", 0), ("k", 1), ("extract_batch", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise AlignkitError(f"{name} must be an integer >= {low}: got {value!r}")
        if self.n is not None and (
            not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 0
        ):
            raise AlignkitError(
                f"n must be a number of rows (0 = all; None = all up to {DEFAULT_N}): "
                f"got {self.n!r}"
            )
        if self.threads is not None and (
            not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 1
        ):
            raise AlignkitError(f"threads must be an integer >= 1: got {self.threads!r}")
        if self.caption_policy not in CAPTION_POLICIES:
            raise AlignkitError(
                f"caption_policy must be one of {', '.join(CAPTION_POLICIES)}: "
                f"got {self.caption_policy!r}"
            )
        if not 0.0 < float(self.alpha) < 1.0:
            raise AlignkitError(f"alpha must be in (0, 1): got {self.alpha!r}")

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, as a config file has it (encoders as spec strings or tables)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("vision", "text"):
                value = [e.spec if not e.options else {"spec": e.spec, **e.kwargs} for e in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[file_key(f)] = value
        return json.loads(json.dumps(out, default=str))

    def replace(self, **changes: Any) -> RankConfig:
        return replace(self, **changes)


VALID_KEYS: tuple[str, ...] = valid_keys(RankConfig)


# ----------------------------------------------------------------------------------------------
# config files (the generic reader is alignkit.options)
# ----------------------------------------------------------------------------------------------
def config_from_mapping(
    data: Mapping[str, Any], *, source: str = "config", cls: type[C] = RankConfig
) -> C:
    """Build a ``cls`` (default :class:`RankConfig`) from file-style keys; an unknown key is an
    error that suggests the closest valid key and lists them all."""
    return options.config_from_mapping(data, source=source, cls=cls)


def load_config(path: str | Path, cls: type[C] = RankConfig) -> C:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) run config into ``cls``."""
    return options.load_config(path, cls)


__all__ = [
    "DEFAULT_METRICS",
    "DEFAULT_N",
    "DEFAULT_SET",
    "EncoderEntry",
    "Option",
    "RankConfig",
    "VALID_KEYS",
    "config_from_mapping",
    "declared",
    "default_of",
    "file_key",
    "load_config",
    "merge",
    "option",
    "valid_keys",
]
