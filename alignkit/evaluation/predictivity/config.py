"""The predictivity experiment's settings: :class:`PredictivityConfig`, read from a grid file.

Each field is declared once with its help, flag and file key (:func:`alignkit.options.option`);
``alignkit predictivity`` builds its options from them. The grid file uses the same keys as
``rank-encoders`` where they mean the same thing: ``probe`` and ``n`` (where the pre-training
metrics are computed; the old keys ``score_probe`` and ``score_n`` are still read).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from alignkit.config import DEFAULT_METRICS
from alignkit.errors import AlignkitError
from alignkit.options import Option, _field_by_key, option
from alignkit.vocabulary import shared

CONTROL_PREFIXES = ("random-init:", "random:")
DEFAULT_RESULTS = (
    "zeroshot/*/top1",
    "zeroshot/*/top5",
    "retrieval/*/image_to_text_R@1",
    "retrieval/*/image_to_text_R@5",
    "retrieval/*/text_to_image_R@1",
    "retrieval/*/text_to_image_R@5",
)
FORMAT = "alignkit.predictivity/1"
#: fields whose change makes the pairs already trained in a folder another experiment
RECIPE_FIELDS = (
    "score_probe",
    "score_n",
    "train_probe",
    "train_n",
    "val_probe",
    "val_n",
    "train_captions",
    "train",
    "seed",
)


def _renamed(f: Any, **how: Any) -> Any:
    """A shared field (:func:`alignkit.vocabulary.shared`) under this config's own field name,
    with the shared flag and file key (``how``: the :class:`~alignkit.options.Option` fields)."""
    opt = replace(f.metadata["option"], **how)
    return field(default=f.default, metadata={"option": opt})


@dataclass(frozen=True)
class PredictivityConfig:
    """The experiment: which encoders, which splits, which recipe, which statistics.

    Attributes:
        vision, text: encoder specs (the grid is their product; 3 or more pairs).
        controls: specs to mark as controls; specs starting ``random-init:``/``random:`` always are.
        score_probe, score_n: where the pre-training metrics are computed (file keys ``probe``
            and ``n``; ``n`` rows, seeded stable subsample; None or 0 = all).
        train_probe, train_n: the training split (and its subsample size).
        val_probe, val_n: early-stopping split (None: no validation; train for all epochs).
        train_captions: ``first`` (one caption per image) or ``all`` (every caption, as positives
            of its image).
        zeroshot, retrieval: evaluation probes; eval_n: a seeded subsample
            of each (None: all; or ``{probe: n}`` per probe).
        templates: zero-shot prompt templates (``imagenet80``, ``imagenet7``, ``single``, a file).
        metrics: pre-training metrics (``alignkit.METRICS`` keys); permutations: null size (for z);
            k: neighbourhood size.
        train: :class:`alignkit.training.TrainConfig` fields of the fixed recipe.
        seeds: extra training seeds (seed noise is measured, not assumed): every repeated pair
            is trained again with each, the recipe's ``seed`` replaced. The first run of every
            pair keeps the recipe's own training seed (:attr:`first_seed`: ``train.seed``,
            TrainConfig's default 0) in ``pairs/<pair>/``; seed ``s`` goes to
            ``pairs/<pair>/seed-<s>/``. ``seed`` below seeds the subsamples, the null and the
            bootstrap, not training. Neither ``seeds`` nor ``repeat_pairs`` changes the
            experiment: adding them to a finished grid trains only the new runs.
        repeat_pairs: None (every pair of the grid gets the extra seeds) or k: k real pairs,
            spread over the grid (:func:`spread_pairs`).
        results: post-training result keys to correlate (``fnmatch`` patterns over metric keys).
        bootstrap: bootstrap resamples of pairs; level: interval coverage; seed: all randomness.
        device, cache: where models run and where features are cached (not part of the
            experiment's identity: a resume may use another device).
    """

    vision: tuple[str, ...] = option(
        (), "Vision encoder spec (repeatable).", metavar="SPEC", repeat=True
    )
    text: tuple[str, ...] = option(
        (), "Text encoder spec (repeatable).", metavar="SPEC", repeat=True
    )
    controls: tuple[str, ...] = option(
        (),
        "Specs to mark as controls (repeatable); random-init: and random: specs always are.",
        metavar="SPEC",
        repeat=True,
    )
    score_probe: str = option(
        "flickr8k:dev",
        "Probe on which the pre-training metrics are computed.",
        flag="--probe",
        key="probe",
        aliases=("score_probe",),
        metavar="PROBE",
    )
    score_n: int | None = _renamed(
        shared("n", default=500, help_extra="Here: rows of --probe."),
        flag="--n",
        key="n",
        aliases=("score_n",),
    )
    train_probe: str = option("flickr8k:train", "Training probe of every pair.", metavar="PROBE")
    train_n: int | None = option(
        None, "Training rows (seeded subsample); default all.", metavar="ROWS", type=int
    )
    val_probe: str | None = option(
        "flickr8k:dev",
        "Early-stopping probe ('none': train for all epochs).",
        metavar="PROBE",
        type=str,
        from_cli=lambda v: None if v.lower() == "none" else v,
    )
    val_n: int | None = option(500, "Validation rows (seeded subsample).", metavar="ROWS", type=int)
    train_captions: str = option(
        "first",
        "first (one caption per image) or all (every caption as a positive).",
        metavar="WHICH",
    )
    zeroshot: tuple[str, ...] = option(
        ("imagenet-samples",),
        "Labelled probe for zero-shot (repeatable).",
        metavar="PROBE",
        repeat=True,
    )
    retrieval: tuple[str, ...] = option(
        ("flickr8k:test",),
        "Captioned probe for retrieval (repeatable).",
        metavar="PROBE",
        repeat=True,
    )
    eval_n: int | None | Mapping[str, int | None] = option(
        None,
        "Rows of each evaluation probe (seeded subsample; a file may give {probe = n}); "
        "default all.",
        metavar="ROWS",
        type=int,
    )
    templates: str = option(
        "single",
        "Zero-shot prompt templates: imagenet80, imagenet7, single, or a file.",
        metavar="NAME",
    )
    metrics: tuple[str, ...] = option(
        DEFAULT_METRICS,
        "Pre-training metric (repeatable).",
        metavar="METRIC",
        repeat=True,
    )
    permutations: int = option(100, "Permutation-null size (for each metric's z).", metavar="P")
    k: int = option(10, "Neighbours for mutual_knn and cknna.", metavar="K")
    train: Mapping[str, Any] = field(
        default_factory=dict,
        metadata={
            "option": Option("TrainConfig fields of the fixed recipe (a [train] table).", cli=False)
        },
    )
    seeds: tuple[int, ...] = option(
        (),
        "Extra training seed (repeatable): the repeated pairs are trained again with it, to "
        "measure seed noise; the first run keeps the recipe's seed.",
        metavar="SEED",
        repeat=True,
    )
    repeat_pairs: int | None = option(
        None,
        "Real pairs trained again with --seeds, spread evenly over the encoders; default every "
        "pair.",
        metavar="K",
        type=int,
    )
    results: tuple[str, ...] = option(
        DEFAULT_RESULTS,
        "Post-training result keys to correlate (fnmatch patterns; repeatable).",
        metavar="PATTERN",
        repeat=True,
    )
    bootstrap: int = option(2000, "Bootstrap resamples of pairs for the intervals.", metavar="B")
    level: float = option(0.95, "Coverage of the bootstrap intervals.", metavar="L")
    seed: int = shared("seed")
    skip_bad: bool = shared("skip_bad")
    image_column: str | None = shared("image_column")
    caption_columns: tuple[str, ...] = shared("caption_columns")
    id_column: str | None = shared("id_column")
    label_column: str | None = shared("label_column")
    device: str = shared("device")
    cache: str | bool = shared("cache")

    def __post_init__(self) -> None:
        for name in ("vision", "text", "controls", "zeroshot", "retrieval", "metrics", "results"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "train", dict(self.train))
        object.__setattr__(self, "seeds", _int_seeds(self.seeds))
        if isinstance(self.eval_n, Mapping):
            object.__setattr__(self, "eval_n", dict(self.eval_n))
        for name in ("score_n", "train_n", "val_n"):
            if getattr(self, name) == 0:  # the shared vocabulary: 0 = all rows
                object.__setattr__(self, name, None)
        self._check()

    def _check(self) -> None:
        if len(self.vision) < 1 or len(self.text) < 1 or len(self.vision) * len(self.text) < 3:
            raise AlignkitError(
                "a predictivity grid needs 3 or more pairs to correlate: got "
                f"{len(self.vision)} vision x {len(self.text)} text encoders"
            )
        if self.train_captions not in ("first", "all"):
            raise AlignkitError(
                f"train_captions must be 'first' or 'all': got {self.train_captions!r}"
            )
        if not self.zeroshot and not self.retrieval:
            raise AlignkitError("give one or more zeroshot or retrieval probes to evaluate on")
        if self.permutations < 2:
            raise AlignkitError(
                f"permutations must be >= 2 so that every metric has a calibrated z: got "
                f"{self.permutations}"
            )
        if self.bootstrap < 100:
            raise AlignkitError(f"bootstrap must be >= 100 resamples: got {self.bootstrap}")
        from alignkit.metrics import METRICS

        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise AlignkitError(
                f"unknown metric(s) {unknown}; expected some of: {', '.join(sorted(METRICS))}"
            )
        if self.train:
            self.train_config()  # fails now, listing the valid keys, not after scoring
        self._check_seeds()
        if self.zeroshot:  # a template that cannot be filled: now, not after training
            from alignkit.evaluation.prompts import load_templates

            load_templates(self.templates)

    def _check_seeds(self) -> None:
        first = self.first_seed
        if first in self.seeds:
            raise AlignkitError(
                f"seeds must be extra training seeds besides the first run's seed {first} (the "
                f"recipe's train.seed): got seeds {list(self.seeds)}; leave {first} out"
            )
        twice = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if twice:
            raise AlignkitError(f"seeds must differ: got {twice} more than once")
        if self.repeat_pairs is None:
            return
        if not self.seeds:
            raise AlignkitError(
                "repeat_pairs must come with the extra seeds to train those pairs with: got "
                f"repeat_pairs {self.repeat_pairs} and no seeds; give the seeds too"
            )
        real = len(self.real_pairs)
        k = self.repeat_pairs
        if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= real:
            raise AlignkitError(
                f"repeat_pairs must be between 2 (a noise pooled over pairs) and the grid's {real} "
                f"real pairs: got {self.repeat_pairs!r}; or None to repeat every pair"
            )

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """Every (vision, text) pair of the grid, vision-major."""
        return [(v, t) for v in self.vision for t in self.text]

    @property
    def real_pairs(self) -> list[tuple[str, str]]:
        """The pairs without a control encoder, vision-major."""
        return [(v, t) for v, t in self.pairs if not (self.is_control(v) or self.is_control(t))]

    @property
    def first_seed(self) -> int:
        """The training seed of every pair's first run: the recipe's ``seed``."""
        return int(self.train_config().seed)

    @property
    def repeated_pairs(self) -> list[tuple[str, str]]:
        """The pairs trained again with each of :attr:`seeds` (none without seeds)."""
        if not self.seeds:
            return []
        if self.repeat_pairs is None:
            return self.pairs
        vision = [v for v in self.vision if not self.is_control(v)]
        text = [t for t in self.text if not self.is_control(t)]
        return spread_pairs(vision, text, self.repeat_pairs)

    @property
    def runs(self) -> list[tuple[str, str, int]]:
        """Every training run as (vision, text, seed): the first seed of every pair, then each
        extra seed of the repeated pairs (seed-major, so that an interrupted grid has measured
        the noise on as many pairs as it could)."""
        first = [(v, t, self.first_seed) for v, t in self.pairs]
        return first + [(v, t, s) for s in self.seeds for v, t in self.repeated_pairs]

    def is_control(self, spec: str) -> bool:
        return spec in self.controls or spec.startswith(CONTROL_PREFIXES)

    def train_config(self) -> Any:
        from alignkit.training import TrainConfig

        return TrainConfig.from_dict(dict(self.train))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def stage_key(self, *names: str) -> str:
        """A hash of the fields a stage depends on (a changed field reruns that stage)."""
        d = self.to_dict()
        blob = json.dumps({n: d[n] for n in names}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def recipe_differences(self, saved: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """``{field: (saved, now)}`` for the :data:`RECIPE_FIELDS` that differ from ``saved`` (a
        ``to_dict()`` of an earlier run; its missing fields count as the defaults)."""
        now = self.to_dict()
        defaults = {n: f.default for n, f in self.__dataclass_fields__.items()}
        defaults["train"] = {}
        out = {}
        for name in RECIPE_FIELDS:
            old = saved.get(name, json.loads(json.dumps(defaults[name])))
            if old != now[name]:
                out[name] = (old, now[name])
        return out

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "grid") -> PredictivityConfig:
        """A config from file-style keys (``probe``/``n``; the old ``score_probe``/``score_n``
        are read too)."""
        by_key = _field_by_key(cls)
        unknown = sorted(set(data) - set(by_key))
        if unknown:
            raise AlignkitError(
                f"{source}: unknown key(s) {unknown}; expected some of: {', '.join(sorted(by_key))}"
            )
        names = [by_key[k] for k in data]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise AlignkitError(f"{source}: {', '.join(twice)} given twice (under an old name)")
        missing = [k for k in ("vision", "text") if k not in data]
        if missing:
            raise AlignkitError(f"{source}: missing key(s) {missing}; a grid needs vision and text")
        try:
            return cls(**{by_key[k]: v for k, v in data.items()})
        except TypeError as exc:
            raise AlignkitError(f"{source}: {exc}") from None


def spread_pairs(vision: Sequence[str], text: Sequence[str], k: int) -> list[tuple[str, str]]:
    """``k`` distinct (vision, text) pairs spread over the ``vision`` x ``text`` grid, so that
    every vision and every text encoder appears as evenly as possible: counts differ by at most
    one, for every ``k``.

    The i-th pair is ``(vision[i % V], text[(i + i // L) % T])`` with ``L = lcm(V, T)``: the
    vision index cycles through every encoder; the text index cycles too, shifted by one after
    every ``L`` pairs, when the plain diagonal would return to a pair it already took (the b-th
    block of ``L`` takes the pairs with ``text - vision = b (mod gcd(V, T))``). Every block holds
    whole cycles of text encoders, so any prefix is a run of consecutive text indices on top of
    equal counts. Deterministic: it depends on the order of the encoders only.
    """
    n_v, n_t = len(vision), len(text)
    if not 0 <= k <= n_v * n_t:
        raise AlignkitError(f"k must be between 0 and {n_v * n_t} pairs: got {k}")
    period = math.lcm(n_v, n_t)
    return [(vision[i % n_v], text[(i + i // period) % n_t]) for i in range(k)]


def _int_seeds(seeds: Any) -> tuple[int, ...]:
    """``seeds`` as a tuple of ints (the command line gives strings)."""
    if isinstance(seeds, (str, int)):
        seeds = (seeds,)
    out = []
    for s in seeds:
        try:
            if isinstance(s, bool) or float(s) != int(s):
                raise ValueError
            out.append(int(s))
        except (TypeError, ValueError):
            raise AlignkitError(f"seeds must be integers: got {s!r}") from None
    return tuple(out)


def _read_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise AlignkitError(f"grid config file not found: {path}; give --config a TOML/YAML file")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise AlignkitError(
                f"grid config must end in .toml, .yaml, .yml or .json: got {path.name!r}"
            )
    except (ValueError, ImportError) as exc:  # TOMLDecodeError, JSONDecodeError are ValueErrors
        raise AlignkitError(f"{path}: cannot parse: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # yaml.YAMLError
        if type(exc).__module__.startswith("yaml"):
            raise AlignkitError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
        raise
    if not isinstance(data, Mapping):
        raise AlignkitError(f"{path}: expected a mapping of keys at the top level")
    return dict(data)


def read_grid(path: str | Path, **overrides: Any) -> PredictivityConfig:
    """A :class:`PredictivityConfig` from a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file;
    ``overrides`` (field names, e.g. from the command line) replace the file's values."""
    path = Path(path)
    data = _read_mapping(path)
    if overrides:
        by_key = _field_by_key(PredictivityConfig)
        data = {k: v for k, v in data.items() if by_key.get(k) not in overrides}
        data.update({_file_key(name): v for name, v in overrides.items()})
    return PredictivityConfig.from_mapping(data, source=str(path))


def _file_key(name: str) -> str:
    opt = PredictivityConfig.__dataclass_fields__[name].metadata["option"]
    return opt.key or name


__all__ = [
    "CONTROL_PREFIXES",
    "DEFAULT_RESULTS",
    "FORMAT",
    "RECIPE_FIELDS",
    "PredictivityConfig",
    "read_grid",
    "spread_pairs",
]
