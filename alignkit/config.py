"""The run configuration of ``rank_encoders`` / ``alignkit rank-encoders``, and config files.

A config file (TOML or YAML) uses the same keys as the command's options (dashes become
underscores), e.g. ``rank.toml``::

    probe = "flickr8k:test"
    n = 500
    metrics = ["linear_cka_unbiased", "mutual_knn"]
    permutations = 200
    vision = ["torchvision:mobilenet_v2",
              { spec = "timm:vit_small_patch14_dinov2", pooling = "cls" }]
    text = ["st:sentence-transformers/all-MiniLM-L6-v2"]

An encoder entry is a spec string, or a table with ``spec`` and the options
``create_encoder`` takes (``pooling``, ``layer``, backend options). Unknown keys are an error that
lists the valid ones. Options given on the command line override the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from alignkit.errors import AlignkitError

DEFAULT_METRICS: tuple[str, ...] = ("linear_cka_unbiased", "linear_cka", "mutual_knn")
DEFAULT_SET = "offline-small"
DEFAULT_N = 500
LAYER_MODES = ("last", "all")


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


@dataclass(frozen=True)
class RankConfig:
    """Everything that defines a ranking run. Defaults are the built-in default run.

    Attributes:
        vision, text: encoders given explicitly (:class:`EncoderEntry`).
        encoder_set: a key of ``alignkit.encoders.ENCODER_SETS`` whose vision, text and control
            encoders are added (controls go to the side their modality says). With no encoders
            and no set, ``"offline-small"`` is used.
        probe: a probe spec (``"flickr8k:test"``, ``"synthetic"``, a manifest path); ``None``
            means ``flickr8k:test`` when ``ALIGNKIT_DATA_DIR`` holds it, else ``synthetic``.
        n: probe rows (a seeded, stable subsample); ``None`` for all rows.
        metrics: keys of ``alignkit.metrics.METRICS``; the first one orders the ranking.
        permutations: permutations of the row pairing for the null (0 = no null).
        subsamples: row subsamples (without replacement) for the score intervals (0 = none).
        layers: ``"last"``, or ``"all"`` for the layer x layer analysis of every pair.
        k: neighbourhood size of the neighbourhood metrics (mutual-kNN, CKNNA).
        seed: seeds the probe subsample, permutations, subsamples and caption policy.
        batch_size, caption_policy, device, cache: passed to ``extract_features``.
        alpha: a pair counts as significantly above chance when its permutation p < alpha.
        keep_going: skip encoders that fail to load (recorded in ``run.json``) instead of stopping.
    """

    vision: tuple[EncoderEntry, ...] = ()
    text: tuple[EncoderEntry, ...] = ()
    encoder_set: str | None = None
    probe: str | None = None
    n: int | None = DEFAULT_N
    metrics: tuple[str, ...] = DEFAULT_METRICS
    permutations: int = 100
    subsamples: int = 10
    layers: str = "last"
    k: int = 10
    seed: int = 0
    batch_size: int = 64
    caption_policy: str = "first"
    device: str = "auto"
    cache: str | bool = True
    alpha: float = 0.05
    keep_going: bool = False

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
        for name, low in (("permutations", 0), ("subsamples", 0), ("k", 1), ("batch_size", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise AlignkitError(f"{name} must be an integer >= {low}: got {value!r}")
        if self.n is not None and (
            not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1
        ):
            raise AlignkitError(
                f"n must be a positive integer (or None for all rows): got {self.n!r}"
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
            out[_FILE_KEYS_BY_FIELD.get(f.name, f.name)] = value
        return json.loads(json.dumps(out, default=str))

    def replace(self, **changes: Any) -> RankConfig:
        return replace(self, **changes)


# A config file says ``set`` where the dataclass says ``encoder_set`` (``set`` is a builtin).
_FIELD_BY_FILE_KEY = {"set": "encoder_set"}
_FILE_KEYS_BY_FIELD = {v: k for k, v in _FIELD_BY_FILE_KEY.items()}
VALID_KEYS: tuple[str, ...] = tuple(
    sorted(_FILE_KEYS_BY_FIELD.get(f.name, f.name) for f in fields(RankConfig))
)


def config_from_mapping(data: Mapping[str, Any], *, source: str = "config") -> RankConfig:
    """Build a :class:`RankConfig` from file-style keys; an unknown key lists the valid ones."""
    if not isinstance(data, Mapping):
        raise AlignkitError(
            f"{source}: expected a table of settings at the top level, got {type(data).__name__}"
        )
    unknown = sorted(k for k in data if k not in VALID_KEYS)
    if unknown:
        raise AlignkitError(
            f"{source}: unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(VALID_KEYS)}"
        )
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = _FIELD_BY_FILE_KEY.get(key, key)
        if name in ("vision", "text", "metrics") and isinstance(value, (str, Mapping)):
            value = [value]
        if name in ("vision", "text", "metrics"):
            if not isinstance(value, Sequence):
                raise AlignkitError(f"{source}: {key} must be a list, got {type(value).__name__}")
            value = tuple(value)
        kwargs[name] = value
    try:
        return RankConfig(**kwargs)
    except AlignkitError as exc:
        raise AlignkitError(f"{source}: {exc}") from None
    except TypeError as exc:  # e.g. a list where a number belongs
        raise AlignkitError(f"{source}: {exc}") from None


def load_config(path: str | Path) -> RankConfig:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) run config. See the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise AlignkitError(f"config file not found: {path}")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10: the backport (a dependency there) has the same API
            import tomli as tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
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
    return config_from_mapping(data, source=str(path))


def merge(base: RankConfig, **overrides: Any) -> RankConfig:
    """``base`` with every override that is not ``None`` applied (command-line options win)."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    for key in ("vision", "text", "metrics"):
        if key in changes and not changes[key]:
            del changes[key]  # an empty repeated option means "not given"
    return replace(base, **changes) if changes else base


__all__ = [
    "DEFAULT_METRICS",
    "DEFAULT_N",
    "DEFAULT_SET",
    "EncoderEntry",
    "RankConfig",
    "VALID_KEYS",
    "config_from_mapping",
    "load_config",
    "merge",
]
