"""Run configurations, declared once: the dataclass, the config file and the command line.

Each setting of a run is one field of a frozen dataclass, declared with :func:`option`: its
default, its help text, its command-line flag and its config-file key. From that one declaration
come the API (``RankConfig(n=200)``), the config-file reader (:func:`load_config`; an unknown key
is an error that suggests the closest valid one) and the command's options
(:mod:`alignkit.cli._options` turns the fields into typer options). The training and evaluation
configs declare their fields the same way.

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

import difflib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from alignkit.errors import AlignkitError

DEFAULT_METRICS: tuple[str, ...] = ("linear_cka_unbiased", "linear_cka", "mutual_knn")
DEFAULT_SET = "offline-small"
DEFAULT_N = 500
LAYER_MODES = ("last", "all")
NULL_METHODS = ("analytic", "permutation", "none")  # as alignkit.metrics.score_pairs takes them
CAPTION_POLICIES = ("first", "mean", "random")  # as alignkit.probes.ProbeSet.captions takes them

C = TypeVar("C")


# ----------------------------------------------------------------------------------------------
# declaring options
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """How one config field appears outside Python (kept in the field's ``metadata``).

    Attributes:
        help: one or two sentences for ``--help`` (the default is appended automatically).
        flag: the long command-line flag (default ``--`` + the field name with dashes).
        short: a one-letter alias such as ``-v``.
        metavar: the placeholder in ``--help`` (``SPEC``, ``ROWS``).
        key: the config-file key (default the field name).
        aliases: other config-file keys accepted for it (e.g. ``metric`` for ``metrics``).
        type: the command-line value type when the default's type does not say it.
        from_cli: converts the parsed command-line value to the field's value.
        repeat: a repeatable flag whose values form the field's tuple.
        cli: ``False`` keeps the field out of the command line.
    """

    help: str
    flag: str | None = None
    short: str | None = None
    metavar: str | None = None
    key: str | None = None
    aliases: tuple[str, ...] = ()
    type: type | None = None
    from_cli: Callable[[Any], Any] | None = None
    repeat: bool = False
    cli: bool = True


def option(default: Any, help: str, **how: Any) -> Any:
    """A dataclass field with its :class:`Option` (see there for ``how``)."""
    return field(default=default, metadata={"option": Option(help, **how)})


def declared(cls: type) -> list[tuple[Field[Any], Option]]:
    """The fields of a config dataclass that carry an :class:`Option`, in declaration order."""
    return [(f, f.metadata["option"]) for f in fields(cls) if "option" in f.metadata]


def file_key(f: Field[Any]) -> str:
    opt = f.metadata.get("option")
    return (opt.key if opt is not None and opt.key else None) or f.name


def valid_keys(cls: type) -> tuple[str, ...]:
    """The config-file keys of ``cls`` (aliases left out), sorted."""
    return tuple(sorted(file_key(f) for f in fields(cls)))


def _field_by_key(cls: type) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in fields(cls):
        out[file_key(f)] = f.name
        opt = f.metadata.get("option")
        for alias in opt.aliases if opt is not None else ():
            out[alias] = f.name
    return out


def default_of(f: Field[Any]) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]


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


def _cache_from_cli(value: str) -> str | bool:
    return False if value.lower() in ("off", "no", "false", "0") else value


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
    (the default cache folder), a folder, or ``False`` (no cache).
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
        "Probe set: flickr8k[:train|dev|test], imagenet-samples, coco-val2017, synthetic, or a "
        "manifest path. Default flickr8k:test when ALIGNKIT_DATA_DIR holds it, else synthetic.",
        short="-p",
        metavar="SPEC",
        type=str,
    )
    n: int | None = option(
        None,
        f"Probe rows: a seeded, stable subsample; 0 = all rows. Not given: all rows up to "
        f"{DEFAULT_N} (the same rows n={DEFAULT_N} picks).",
        metavar="ROWS",
        type=int,
    )
    metrics: tuple[str, ...] = option(
        DEFAULT_METRICS,
        "Metric, repeatable; the first orders the ranking. Choices: linear_cka_unbiased, "
        "linear_cka (biased, as in the reference code), rbf_cka, mutual_knn, cknna, svcca.",
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
    seed: int = option(0, "Seed of the probe subsample, permutations and subsamples.")
    batch_size: int = option(64, "Extraction batch size.", metavar="B")
    caption_policy: str = option(
        "first",
        "Which caption a text encoder sees for a row with several: the first, the mean of all "
        "caption embeddings (as the reference code), or a seeded random one.",
        metavar="first|mean|random",
    )
    device: str = option("auto", "auto (CUDA when available), cpu, cuda, cuda:N.")
    cache: str | bool = option(
        True,
        "Feature cache folder, or 'off' to recompute. Default ALIGNKIT_CACHE_DIR "
        "(~/.cache/alignkit).",
        metavar="DIR|off",
        type=str,
        from_cli=_cache_from_cli,
    )
    alpha: float = option(
        0.05, "A pair is significantly above chance when its permutation p < alpha.", metavar="A"
    )
    keep_going: bool = option(
        False,
        "Skip encoders that fail to load (reported, and listed in run.json) instead of stopping.",
    )
    skip_bad: bool = option(
        False,
        "Skip probe rows with a missing or unreadable image or an empty caption (listed in "
        "run.json and summary.md) instead of stopping at the first.",
    )

    def __post_init__(self) -> None:
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
        for name, low in (("permutations", 0), ("subsamples", 0), ("k", 1), ("batch_size", 1)):
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
# config files
# ----------------------------------------------------------------------------------------------
def config_from_mapping(
    data: Mapping[str, Any], *, source: str = "config", cls: type[C] = RankConfig
) -> C:
    """Build a ``cls`` (default :class:`RankConfig`) from file-style keys.

    An unknown key is an error that suggests the closest valid key and lists them all.
    """
    if not isinstance(data, Mapping):
        raise AlignkitError(
            f"{source}: expected a table of settings at the top level, got {type(data).__name__}"
        )
    by_key = _field_by_key(cls)
    unknown = sorted(k for k in data if k not in by_key)
    if unknown:
        valid = valid_keys(cls)
        close = {k: difflib.get_close_matches(k, list(by_key), n=1) for k in unknown}
        hints = "".join(f" (did you mean {c[0]!r}?)" for k, c in close.items() if c)
        raise AlignkitError(
            f"{source}: unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}{hints}; valid keys: {', '.join(valid)}"
        )
    names = [by_key[k] for k in data]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise AlignkitError(f"{source}: {', '.join(twice)} given twice (under an alias)")
    repeated = {f.name for f, opt in declared(cls) if opt.repeat}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = by_key[key]
        if name in repeated:
            if isinstance(value, (str, Mapping)):
                value = [value]
            if not isinstance(value, Sequence):
                raise AlignkitError(f"{source}: {key} must be a list, got {type(value).__name__}")
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except AlignkitError as exc:
        raise AlignkitError(f"{source}: {exc}") from None
    except TypeError as exc:  # e.g. a list where a number belongs
        raise AlignkitError(f"{source}: {exc}") from None


def _toml_loads(text: str) -> Any:
    try:
        import tomllib
    except ImportError:  # Python 3.10: the tomli backport (a dependency there) has the same API
        try:
            import tomli as tomllib
        except ImportError as exc:
            raise AlignkitError(
                "reading a .toml config on Python 3.10 needs the tomli package "
                "(pip install tomli), or use a .yaml config"
            ) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(str(exc)) from None


def load_config(path: str | Path, cls: type[C] = RankConfig) -> C:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) run config into ``cls``."""
    path = Path(path)
    if not path.is_file():
        raise AlignkitError(f"config file not found: {path}")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix == ".toml":
        try:
            data = _toml_loads(text)
        except ValueError as exc:
            raise AlignkitError(f"{path}: not valid TOML: {exc}") from None
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise AlignkitError(f"{path}: not valid YAML: {first}") from None
        if data is None:
            data = {}
    else:
        raise AlignkitError(f"config file must end in .toml, .yaml or .yml: got {path.name!r}")
    return config_from_mapping(data, source=str(path), cls=cls)


def merge(base: C, **overrides: Any) -> C:
    """``base`` with every override that is not ``None`` applied (command-line options win).

    An empty tuple for a repeated option means "not given", as does ``False`` for a flag.
    """
    changes = {k: v for k, v in overrides.items() if v is not None}
    for f, opt in declared(type(base)):
        if f.name not in changes:
            continue
        if opt.repeat and not changes[f.name]:
            del changes[f.name]
        elif opt.type is None and isinstance(default_of(f), bool) and changes[f.name] is False:
            del changes[f.name]
    return replace(base, **changes) if changes else base  # type: ignore[type-var]


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
    "load_config",
    "merge",
    "option",
]
