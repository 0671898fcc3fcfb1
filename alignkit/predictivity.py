"""Did the ranking predict the result? Score a grid of pairs, train each, evaluate, correlate.

    from alignkit.predictivity import PredictivityConfig, run_predictivity
    result = run_predictivity(PredictivityConfig(vision=[...], text=[...]), "runs/pred")
    result.correlations      # one row per (pre-training metric, raw|z, post-training result)

Stages, each cached or resumable so an interrupted experiment continues where it stopped:

1. **features**: :func:`alignkit.extract_features` on the scoring, training, validation and
   evaluation probes (the content-addressed feature cache);
2. **scores**: :func:`alignkit.score_pairs` of every vision x text pair on the scoring probe, with
   the permutation null (so each metric also has its calibrated z); ``scores.csv``;
3. **training**: one fixed recipe (:class:`alignkit.training.TrainConfig`) per pair on the
   training probe, early-stopped on the validation probe, in ``pairs/<pair>/``; a finished pair
   folder is reused (``train_projector`` returns a finished run as is);
4. **evaluation**: :func:`alignkit.evaluation.evaluate_pair` (zero-shot, retrieval) per pair,
   ``pairs/<pair>/metrics.json``, reused when its stage key matches;
5. **analysis**: for every pre-training metric (raw score and calibrated z) against every
   post-training result: Spearman rho and Kendall tau-b over pairs, percentile bootstrap
   intervals over pairs (pairs resampled with replacement), and leave-one-encoder-out rho.

Leave-one-encoder-out: nothing is fitted in a rank correlation, so "held out" means this: for
each encoder E of the grid, rho over the pairs that do *not* contain E. ``loeo_min`` is the
smallest of these (does the correlation survive dropping any one encoder, the controls
included?) and ``rho_no_controls`` is rho over the pairs without any control encoder (does the
metric order real pairs, or only separate real pairs from random-init ones?).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from alignkit.errors import AlignkitError

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class PredictivityConfig:
    """The experiment: which encoders, which splits, which recipe, which statistics.

    Attributes:
        vision, text: encoder specs (the grid is their product).
        controls: specs to mark as controls; specs starting ``random-init:``/``random:`` always are.
        score_probe, score_n: where the pre-training metrics are computed (``n`` rows, seeded
            stable subsample; None = all).
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
        results: post-training result keys to correlate (``fnmatch`` patterns over metric keys).
        bootstrap: bootstrap resamples of pairs; level: interval coverage; seed: all randomness.
    """

    vision: tuple[str, ...]
    text: tuple[str, ...]
    controls: tuple[str, ...] = ()
    score_probe: str = "flickr8k:dev"
    score_n: int | None = 500
    train_probe: str = "flickr8k:train"
    train_n: int | None = None
    val_probe: str | None = "flickr8k:dev"
    val_n: int | None = 500
    train_captions: str = "first"
    zeroshot: tuple[str, ...] = ("imagenet-samples",)
    retrieval: tuple[str, ...] = ("flickr8k:test",)
    eval_n: int | None | Mapping[str, int | None] = None
    templates: str = "single"
    metrics: tuple[str, ...] = ("linear_cka_unbiased", "linear_cka", "mutual_knn")
    permutations: int = 100
    k: int = 10
    train: Mapping[str, Any] = field(default_factory=dict)
    results: tuple[str, ...] = DEFAULT_RESULTS
    bootstrap: int = 2000
    level: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("vision", "text", "controls", "zeroshot", "retrieval", "metrics", "results"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "train", dict(self.train))
        if isinstance(self.eval_n, Mapping):
            object.__setattr__(self, "eval_n", dict(self.eval_n))
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

    def is_control(self, spec: str) -> bool:
        return spec in self.controls or spec.startswith(CONTROL_PREFIXES)

    def train_config(self) -> Any:
        try:
            from alignkit.training import TrainConfig
        except ImportError as exc:  # pragma: no cover - part of alignkit once merged
            raise AlignkitError(f"training needs alignkit.training: {exc}") from exc
        return TrainConfig.from_dict(dict(self.train))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def stage_key(self, *names: str) -> str:
        """A hash of the fields a stage depends on (a changed field reruns that stage)."""
        d = self.to_dict()
        blob = json.dumps({n: d[n] for n in names}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "grid") -> PredictivityConfig:
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - names)
        if unknown:
            raise AlignkitError(
                f"{source}: unknown key(s) {unknown}; expected some of: {', '.join(sorted(names))}"
            )
        missing = [k for k in ("vision", "text") if k not in data]
        if missing:
            raise AlignkitError(f"{source}: missing key(s) {missing}; a grid needs vision and text")
        return cls(**dict(data))


def read_grid(path: str | Path) -> PredictivityConfig:
    """A :class:`PredictivityConfig` from a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file."""
    path = Path(path)
    if not path.is_file():
        raise AlignkitError(f"grid config file not found: {path}; give --grid a TOML/YAML file")
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
    return PredictivityConfig.from_mapping(data, source=str(path))


# -- the result -----------------------------------------------------------------------------------
@dataclass
class PredictivityResult:
    """``pairs``: one row per pair (vision, text, control, ``pre/<metric>`` and
    ``pre/<metric>/z`` columns, ``post/<result>`` columns). ``correlations``: one row per
    (pre, post) with n_pairs, spearman (+ _low/_high), kendall (+ _low/_high), loeo_min,
    loeo_mean, rho_no_controls, n_no_controls."""

    pairs: pd.DataFrame
    correlations: pd.DataFrame
    config: PredictivityConfig
    out_dir: Path | None = None
    timings: dict[str, Any] = field(default_factory=dict)

    def best(self, result: str, kind: str = "z") -> pd.DataFrame:
        """The correlation rows of one post-training result, best Spearman first."""
        rows = self.correlations
        rows = rows[(rows["post"] == result) & (rows["kind"] == kind)]
        return rows.sort_values("spearman", ascending=False).reset_index(drop=True)


def _slug(vision: str, text: str) -> str:
    def s(x: str) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in x)

    return f"{s(vision)}__{s(text)}"


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _atomic_csv(path: Path, frame: pd.DataFrame) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


# -- the experiment -------------------------------------------------------------------------------
def run_predictivity(
    config: PredictivityConfig,
    out_dir: str | Path,
    *,
    cache: Any = True,
    device: str = "cpu",
    progress: bool = False,
    stop_after: str | None = None,
    only: Sequence[tuple[str, str]] | None = None,
    skip_unfinished: bool = False,
) -> PredictivityResult | None:
    """Run (or resume) the whole experiment into ``out_dir``; see the module docstring.

    ``stop_after="scores"`` stops once ``scores.csv`` is written (returns None): score a grid
    while the training features are still being extracted elsewhere. ``only``: train and
    evaluate just these ``(vision, text)`` pairs and return None (several processes can share
    one grid this way; a last call without ``only`` reuses their folders and writes the tables).
    ``skip_unfinished``: analyse only the pairs already evaluated (the others are listed in
    ``result.timings["skipped_pairs"]``) instead of training them.

    Writes ``config.json``, ``scores.csv``, ``pairs/<pair>/`` (training run + ``metrics.json``),
    then ``pairs.csv`` and ``correlations.csv`` (atomically, only once every pair is done) and
    ``predictivity.png``.

    Raises:
        AlignkitError: ``out_dir`` holds an experiment with a different grid/probes (choose another
            folder), bad config values, unknown probes, missing data.
    """
    import time

    import alignkit as ak
    from alignkit.evaluation.evaluate import check_retrieval_probe, check_zeroshot_probe

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.json"
    if saved.is_file():
        old = json.loads(saved.read_text(encoding="utf-8")).get("config", {})
        if old.get("vision") is not None and (
            old.get("score_probe") != config.score_probe or old.get("score_n") != config.score_n
        ):
            raise AlignkitError(
                f"{out} holds an experiment scored on {old.get('score_probe')} "
                f"(n={old.get('score_n')}), not {config.score_probe} (n={config.score_n}); "
                "choose another out folder"
            )
    _atomic_text(saved, json.dumps({"format": FORMAT, "config": config.to_dict()}, indent=2))
    timings: dict[str, Any] = {}

    def load(spec: str, n: int | None) -> Any:
        return ak.load_probe(spec, n=n, progress=False)

    # cheap checks before any model work
    t0 = time.perf_counter()
    score_probe = load(config.score_probe, config.score_n)
    train_probe = load(config.train_probe, config.train_n)
    val_probe = load(config.val_probe, config.val_n) if config.val_probe else None
    if val_probe is not None and set(val_probe.ids) & set(train_probe.ids):
        raise AlignkitError(
            f"the validation probe {val_probe.name} shares rows with the training probe "
            f"{train_probe.name}; choose disjoint splits"
        )

    def eval_n(spec: str) -> int | None:
        return config.eval_n.get(spec) if isinstance(config.eval_n, Mapping) else config.eval_n

    zs_probes = [load(spec, eval_n(spec)) for spec in config.zeroshot]
    rt_probes = [load(spec, eval_n(spec)) for spec in config.retrieval]
    for probe in zs_probes:
        check_zeroshot_probe(probe)
    for probe in rt_probes:
        check_retrieval_probe(probe)
    train_cfg = config.train_config()

    encoders: dict[str, Any] = {}

    def encoder(spec: str) -> Any:
        if spec not in encoders:
            encoders[spec] = ak.create_encoder(spec, device=device)
        return encoders[spec]

    def features(spec: str, probe: Any) -> torch.Tensor:
        # a spec, not a built encoder: a cache hit builds no model
        return ak.extract_features(
            spec, probe, cache=cache, device=device, progress=progress
        ).features

    # 2. scores
    scores_path = out / "scores.csv"
    key = config.stage_key("vision", "text", "score_probe", "score_n", "metrics", "permutations")
    key += f"-{score_probe.fingerprint}-k{config.k}-s{config.seed}"
    scores = _read_stage_csv(scores_path, key)
    if scores is None and only is None:  # `only` runs train and evaluate, nothing else
        vis = [
            ak.extract_features(v, score_probe, cache=cache, device=device, progress=progress)
            for v in config.vision
        ]
        txt = [
            ak.extract_features(t, score_probe, cache=cache, device=device, progress=progress)
            for t in config.text
        ]
        scores = ak.score_pairs(
            vis,
            txt,
            list(config.metrics),
            n_permutations=config.permutations,
            seed=config.seed,
            progress=progress,
            **({"k": config.k} if any("knn" in m for m in config.metrics) else {}),
        )
        scores["stage_key"] = key
        _atomic_csv(scores_path, scores)
    timings["scores_s"] = time.perf_counter() - t0
    if stop_after == "scores":
        return None
    if stop_after is not None:
        raise AlignkitError(f"stop_after must be None or 'scores': got {stop_after!r}")

    # 3 + 4. train and evaluate every pair
    from alignkit.evaluation.evaluate import AlignedPair, evaluate_pair
    from alignkit.evaluation.prompts import caption_probe
    from alignkit.evaluation.runs import write_run_config
    from alignkit.training import train_projector

    t1 = time.perf_counter()
    eval_key = config.stage_key(
        "zeroshot",
        "retrieval",
        "eval_n",
        "templates",
        "train",
        "train_probe",
        "train_n",
        "val_probe",
        "val_n",
        "train_captions",
        "seed",
    )
    rows = []
    skipped: list[str] = []
    todo = [(v, t) for v in config.vision for t in config.text]
    if only is not None:
        unknown = [p for p in only if tuple(p) not in todo]
        if unknown:
            raise AlignkitError(f"only names pairs outside the grid: {unknown}")
        todo = [tuple(p) for p in only]
    for v, t in todo:
        folder = out / "pairs" / _slug(v, t)
        metrics_path = folder / "metrics.json"
        metrics = _read_stage_json(metrics_path, eval_key)
        if metrics is None and skip_unfinished:
            skipped.append(f"{v} x {t}")
            continue
        if metrics is None:
            train = _paired(config, train_probe, v, t, features, caption_probe)
            val = _paired(config, val_probe, v, t, features, caption_probe) if val_probe else None
            folder.mkdir(parents=True, exist_ok=True)
            result = train_projector(
                train_cfg, train, val, out_dir=folder, device=device, progress=progress
            )
            model = result.model.to("cpu").eval()
            write_run_config(
                folder,
                encoder(v),
                encoder(t),
                dims=(train.image_dim, train.text_dim),
                train_config=train_cfg.to_dict(),
            )
            pair = AlignedPair(
                encoder(v), encoder(t), model.encode_image, model.encode_text, name=f"{v} x {t}"
            )
            metrics = evaluate_pair(
                pair,
                zeroshot_probes=zs_probes,
                retrieval_probes=rt_probes,
                templates=config.templates,
                cache=cache,
                device=device,
                progress=progress,
            )
            _atomic_text(
                metrics_path,
                json.dumps(
                    {
                        "stage_key": eval_key,
                        "vision": v,
                        "text": t,
                        "train_steps": result.steps,
                        "metrics": metrics,
                    },
                    indent=2,
                ),
            )
        rows.append({"vision": v, "text": t, "metrics": metrics})
    timings["train_eval_s"] = time.perf_counter() - t1
    if skipped:
        timings["skipped_pairs"] = skipped
        log.warning("%d unfinished pairs left out: %s", len(skipped), "; ".join(skipped))
    if only is not None:
        return None

    pairs = pair_table(scores, rows, config)
    correlations = correlate(pairs, config)
    _atomic_csv(out / "pairs.csv", pairs)
    _atomic_csv(out / "correlations.csv", correlations)
    result = PredictivityResult(pairs, correlations, config, out, timings)
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        fig = plot_predictivity(pairs, config)
        fig.savefig(out / "predictivity.png", dpi=120, bbox_inches="tight")
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        log.warning("matplotlib missing: no predictivity.png")
    return result


def _read_stage_csv(path: Path, key: str) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    if "stage_key" not in frame or frame.empty or str(frame["stage_key"].iloc[0]) != key:
        return None
    return frame


def _read_stage_json(path: Path, key: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return data["metrics"] if data.get("stage_key") == key else None


def _paired(config, probe, v, t, features, caption_probe) -> Any:  # noqa: ANN001
    from alignkit.training import PairedFeatures

    image = features(v, probe)
    if config.train_captions == "all":
        captions, index = caption_probe(probe)
        text = features(t, captions)
        t2i = torch.tensor(index, dtype=torch.long)
    else:
        text = features(t, probe)
        t2i = torch.arange(len(probe), dtype=torch.long)
    return PairedFeatures(image, text, t2i, list(probe.ids))


# -- tables and statistics ------------------------------------------------------------------------
def pair_table(
    scores: pd.DataFrame, rows: Sequence[Mapping[str, Any]], config: PredictivityConfig
) -> pd.DataFrame:
    """One row per pair: pre-training scores (raw and z) and post-training results."""
    import fnmatch

    last = scores
    if "vision_layer" in scores:
        last = scores[(scores["vision_layer"] == -1) & (scores["text_layer"] == -1)]
    table = []
    for row in rows:
        v, t = row["vision"], row["text"]
        rec: dict[str, Any] = {
            "vision": v,
            "text": t,
            "control": config.is_control(v) or config.is_control(t),
        }
        mine = last[(last["vision"] == v) & (last["text"] == t)]
        for _, s in mine.iterrows():
            rec[f"pre/{s['metric']}"] = float(s["score"])
            rec[f"pre/{s['metric']}/z"] = float(s["z"])
        for key, value in row["metrics"].items():
            if any(fnmatch.fnmatchcase(key, pat) for pat in config.results):
                rec[f"post/{key}"] = float(value["value"])
        table.append(rec)
    return pd.DataFrame(table)


def correlate(pairs: pd.DataFrame, config: PredictivityConfig) -> pd.DataFrame:
    """Spearman rho and Kendall tau-b of each pre-training column against each post-training
    column, with percentile bootstrap intervals over pairs and leave-one-encoder-out rho."""
    from scipy import stats

    pre_cols = [c for c in pairs if c.startswith("pre/")]
    post_cols = [c for c in pairs if c.startswith("post/")]
    rng = np.random.default_rng(config.seed)
    n = len(pairs)
    boot = rng.integers(0, n, size=(config.bootstrap, n))  # the same resamples for every cell
    alpha = (1 - config.level) / 2
    encoders = list(dict.fromkeys([*pairs["vision"], *pairs["text"]]))
    real = ~pairs["control"].to_numpy(bool)
    out = []
    for pre in pre_cols:
        x = pairs[pre].to_numpy(float)
        for post in post_cols:
            y = pairs[post].to_numpy(float)
            rho = _spearman(x, y)
            tau = float(stats.kendalltau(x, y, variant="b").statistic)
            b_rho = np.array([_spearman(x[i], y[i]) for i in boot])
            b_tau = np.array([stats.kendalltau(x[i], y[i], variant="b").statistic for i in boot])
            loeo = []
            for e in encoders:
                keep = ((pairs["vision"] != e) & (pairs["text"] != e)).to_numpy(bool)
                if keep.sum() >= 3:
                    loeo.append(_spearman(x[keep], y[keep]))
            loeo_arr = np.array(loeo, float)
            metric = pre.removeprefix("pre/")
            out.append(
                {
                    "pre": metric.removesuffix("/z"),
                    "kind": "z" if metric.endswith("/z") else "raw",
                    "post": post.removeprefix("post/"),
                    "n_pairs": n,
                    "spearman": rho,
                    "spearman_low": float(np.nanquantile(b_rho, alpha)),
                    "spearman_high": float(np.nanquantile(b_rho, 1 - alpha)),
                    "kendall": tau,
                    "kendall_low": float(np.nanquantile(b_tau, alpha)),
                    "kendall_high": float(np.nanquantile(b_tau, 1 - alpha)),
                    "loeo_min": float(np.nanmin(loeo_arr)) if loeo_arr.size else float("nan"),
                    "loeo_mean": float(np.nanmean(loeo_arr)) if loeo_arr.size else float("nan"),
                    "rho_no_controls": _spearman(x[real], y[real]) if real.sum() >= 3 else np.nan,
                    "n_no_controls": int(real.sum()),
                }
            )
    return pd.DataFrame(out)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rho (average ranks for ties); NaN when either side is constant."""
    from scipy import stats

    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def _short(spec: str) -> str:
    control = spec.startswith(CONTROL_PREFIXES)
    base = spec.split(":", 1)[1] if not control else spec.split(":", 2)[-1]
    base = base.rsplit("/", 1)[-1].split(":")[-1]
    return ("rand-init " if control else "") + base


def plot_predictivity(
    pairs: pd.DataFrame,
    config: PredictivityConfig | None = None,
    *,
    pre: Sequence[str] | None = None,
    post: Sequence[str] | None = None,
    kind: str = "z",
) -> Any:
    """Scatter plots, pre-training metric (x) against post-training result (y), every pair
    labelled ``vision x text`` (short names); pairs with a control encoder are hollow red
    squares. Returns the matplotlib Figure (one Axes per (pre, post))."""
    import matplotlib.pyplot as plt

    suffix = "/z" if kind == "z" else ""
    pre = (
        list(pre)
        if pre
        else sorted(
            {c.removeprefix("pre/").removesuffix("/z") for c in pairs if c.startswith("pre/")}
        )
    )
    post = list(post) if post else [c.removeprefix("post/") for c in pairs if c.startswith("post/")]
    fig, axes = plt.subplots(
        len(post), len(pre), figsize=(4.2 * len(pre), 3.4 * len(post)), squeeze=False
    )
    for r, res in enumerate(post):
        for c, met in enumerate(pre):
            ax = axes[r][c]
            x = pairs[f"pre/{met}{suffix}"]
            y = pairs[f"post/{res}"]
            ctrl = pairs["control"].astype(bool)
            ax.scatter(x[~ctrl], y[~ctrl], s=22, color="tab:blue", label="pair")
            ax.scatter(
                x[ctrl],
                y[ctrl],
                s=30,
                marker="s",
                facecolors="none",
                edgecolors="tab:red",
                label="control (random-init)",
            )
            for xi, yi, v, t in zip(x, y, pairs["vision"], pairs["text"], strict=True):
                ax.annotate(
                    f"{_short(v)} x {_short(t)}",
                    (xi, yi),
                    fontsize=5,
                    xytext=(2, 2),
                    textcoords="offset points",
                )
            rho = _spearman(x.to_numpy(float), y.to_numpy(float))
            ax.set_title(f"rho={rho:.2f}", fontsize=8)
            ax.set_xlabel(f"{met}{' (z)' if kind == 'z' else ''}", fontsize=8)
            ax.set_ylabel(res, fontsize=7)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6, loc="best")
    fig.tight_layout()
    return fig
