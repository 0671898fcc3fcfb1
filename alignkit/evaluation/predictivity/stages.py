"""The predictivity run as a list of named stages, each resumable from what the folder holds.

    set-up    check the folder and every probe (cheap: no model), then accept the run and
              write config.json (only now: a refused run leaves the folder as it was)
    scores    score_pairs of every vision x text pair on the scoring probe, with the permutation
              null (each metric also gets its calibrated z); scores.csv
    pairs     train one fixed recipe per pair and evaluate it, in pairs/<pair>/ (a finished pair
              folder is reused: train_projector returns a finished run as is); then each extra
              seed of the repeated pairs (``config.seeds``), in pairs/<pair>/seed-<s>/
    analysis  seeds.csv (one row per run), pairs.csv (seed means), noise.csv (the pooled seed
              noise), correlations.csv, decisions.csv (only with a measured noise) and
              predictivity.png, once every run is done

A pair's first run keeps the folder and stage key it had before seeds existed, so adding seeds
to a finished grid trains the new runs only; an extra seed's stage key is the first one's plus
``-seed-<s>``.

Each stage output carries a key of the fields it depends on; a changed field reruns that stage.
One run's training and evaluation, its folder and its key live in
:mod:`alignkit.evaluation.predictivity.pair_run`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from alignkit._files import atomic_write_text
from alignkit.encoders.base import check_trainable
from alignkit.errors import AlignkitError
from alignkit.evaluation.predictivity.config import FORMAT, PredictivityConfig
from alignkit.evaluation.predictivity.decisions import decisions_table, seed_noise
from alignkit.evaluation.predictivity.pair_run import (
    pair_folder,
    read_stage_json,
    run_folder,
    run_key,
)
from alignkit.evaluation.predictivity.pair_run import train_and_evaluate as _train_and_evaluate
from alignkit.evaluation.predictivity.plan import Plan, make_plan
from alignkit.evaluation.predictivity.tables import correlate, pair_table, seed_table
from alignkit.features.paired import check_disjoint

log = logging.getLogger(__name__)

SCORE_FIELDS = ("vision", "text", "score_probe", "score_n", "metrics", "permutations")
#: what a finished experiment folder holds besides config.json
OUTPUTS = (
    "scores.csv", "pairs", "seeds.csv", "pairs.csv", "noise.csv", "correlations.csv",
    "decisions.csv", "predictivity.png",
)  # fmt: skip


@dataclass
class PredictivityResult:
    """``pairs``: one row per pair (vision, text, control, n_seeds, ``pre/<metric>`` and
    ``pre/<metric>/z`` columns, ``post/<result>`` columns: means over the pair's seeds).
    ``correlations``: one row per (pre, post) with n_pairs, spearman (+ _low/_high), kendall
    (+ _low/_high), loeo_min, loeo_mean, rho_no_controls, n_no_controls. ``seeds``: one row per
    training run; ``noise``: the pooled single-run sd of each result
    (:func:`~.decisions.seed_noise`); ``decisions``: :func:`~.decisions.decisions_table`, None
    without a measured noise (no real pair trained with two or more seeds)."""

    pairs: pd.DataFrame
    correlations: pd.DataFrame
    config: PredictivityConfig
    out_dir: Path | None = None
    timings: dict[str, Any] = field(default_factory=dict)
    seeds: pd.DataFrame | None = None
    noise: pd.DataFrame | None = None
    decisions: pd.DataFrame | None = None

    def best(self, result: str, kind: str = "raw") -> pd.DataFrame:
        """The correlation rows of one post-training result, best Spearman first."""
        rows = self.correlations
        rows = rows[(rows["post"] == result) & (rows["kind"] == kind)]
        return rows.sort_values("spearman", ascending=False).reset_index(drop=True)


@dataclass
class _Run:
    """What the stages share: the experiment, its folder, and how models run."""

    config: PredictivityConfig
    out: Path
    cache: Any
    device: str
    progress: bool
    probes: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    encoders: dict[str, Any] = field(default_factory=dict)

    def encoder(self, spec: str) -> Any:
        """The encoder of ``spec``, built once per run (only for a pair that trains); one fitted
        on the texts it is given (``tfidf:``) is fitted on every caption of the training probe."""
        from alignkit.encoders import create_encoder
        from alignkit.features.extract import fit_to_probe

        if spec not in self.encoders:
            enc = create_encoder(spec, device=self.device)
            self.encoders[spec] = fit_to_probe(enc, self.probes["train"])
        return self.encoders[spec]

    def features(self, spec: str, probe: Any) -> torch.Tensor:
        """Features of ``spec`` on ``probe`` for training: those of an encoder fitted on its
        texts come from its training fit (:meth:`encoder`), never from a fit on ``probe``."""
        from alignkit.features import extract_features

        built = self.encoders.get(spec)
        # a spec, not a built encoder: a cache hit builds no model
        source = built if getattr(built, "needs_fit", False) else spec
        return extract_features(
            source, probe, cache=self.cache, device=self.device, progress=self.progress
        ).features


def run_predictivity(
    config: PredictivityConfig,
    out_dir: str | Path,
    *,
    cache: Any = None,
    device: str | None = None,
    progress: bool = False,
    stop_after: str | None = None,
    only: Sequence[tuple[str, str]] | None = None,
    skip_unfinished: bool = False,
    overwrite: bool = False,
    on_plan: Callable[[Plan], None] | None = None,
) -> PredictivityResult | None:
    """Run (or resume) the whole experiment into ``out_dir`` (stages: see the module docstring).

    Args:
        cache, device: default the config's (``config.cache``, ``config.device``).
        stop_after: ``"scores"`` stops once ``scores.csv`` is written (returns None).
        only: train and evaluate just these ``(vision, text)`` pairs and return None (several
            processes can share one grid; a last call without ``only`` writes the tables).
        skip_unfinished: analyse only the pairs already evaluated (the others are listed in
            ``result.timings["skipped_pairs"]``) instead of training them.
        overwrite: start over in a folder that holds an experiment with another recipe (its
            results are deleted).
        on_plan: called with the :class:`~.plan.Plan` once every check has passed, before the
            first extraction (the CLI prints it).

    Raises:
        AlignkitError: ``out_dir`` holds an experiment with another recipe or scoring probe (the
            message lists the fields; pass overwrite=True or choose another folder), bad config
            values, unknown probes, missing data.
    """
    if stop_after not in (None, "scores"):
        raise AlignkitError(f"stop_after must be None or 'scores': got {stop_after!r}")
    run = _Run(
        config,
        Path(out_dir),
        config.cache if cache is None else cache,
        config.device if device is None else device,
        progress,
    )
    _set_up(run, overwrite)
    if on_plan is not None:
        done = len(finished_runs(run.out, config))
        on_plan(make_plan(config, run.probes, done, run.device))
    t0 = time.perf_counter()
    scores = _scores(run) if only is None else None  # `only` runs train and evaluate only
    run.timings["scores_s"] = time.perf_counter() - t0
    if stop_after == "scores":
        return None
    t1 = time.perf_counter()
    rows = _pairs(run, only, skip_unfinished)
    run.timings["train_eval_s"] = time.perf_counter() - t1
    if only is not None:
        return None
    return _analysis(run, scores, rows)


# -- set-up ---------------------------------------------------------------------------------------
def saved_config(out: Path) -> dict[str, Any] | None:
    """The config of the experiment ``out`` holds, ``None`` when it holds none."""
    saved = out / "config.json"
    if not saved.is_file():
        return None
    try:
        body = json.loads(saved.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AlignkitError(
            f"{saved} is not readable JSON ({exc}); choose another out folder"
        ) from None
    if not isinstance(body, Mapping) or body.get("format") != FORMAT:
        raise AlignkitError(
            f"{out} holds a config.json that is not a predictivity experiment's; choose another "
            "out folder"
        )
    return dict(body.get("config", {}))


def _set_up(run: _Run, overwrite: bool) -> None:
    """Refuse a folder that holds another experiment, load and check every probe, then accept
    the run: only now is config.json written."""
    out, config = run.out, run.config
    if out.exists() and not out.is_dir():
        raise AlignkitError(f"the output folder {out} is a file; give a folder path")
    old = saved_config(out)
    if old is not None and not overwrite:
        changed = config.recipe_differences(old)
        if changed:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise AlignkitError(
                f"{out} holds an experiment with another recipe ({listed}); its trained pairs "
                "do not fit this one: choose another out folder, or pass overwrite=True to "
                "delete it and start over"
            )
    _load_probes(run)
    config.train_config()
    if old is not None and overwrite:
        for name in OUTPUTS:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    body = {"format": FORMAT, "config": config.to_dict()}
    atomic_write_text(out / "config.json", json.dumps(body, indent=2))


def _load_probes(run: _Run) -> None:
    from alignkit.evaluation.evaluate import check_retrieval_probe, check_zeroshot_probe
    from alignkit.probes import load_probe
    from alignkit.probes.containers import check_columns_apply, column_options

    config = run.config

    def eval_n(spec: str) -> int | None:
        return config.eval_n.get(spec) if isinstance(config.eval_n, Mapping) else config.eval_n

    def load(spec: str, n: int | None) -> Any:
        columns = column_options(spec, config)
        return load_probe(spec, n=n, progress=False, skip_bad=config.skip_bad, **columns)

    specs = [config.score_probe, config.train_probe, config.val_probe]
    check_columns_apply([*specs, *config.zeroshot, *config.retrieval], config)
    p = run.probes
    p["score"] = load(config.score_probe, config.score_n)
    p["train"] = load(config.train_probe, config.train_n)
    p["val"] = load(config.val_probe, config.val_n) if config.val_probe else None
    if p["val"] is not None:  # by id and captions, and by image content, as `train` checks
        check_disjoint(p["train"], p["val"])
    p["zeroshot"] = [load(s, eval_n(s)) for s in config.zeroshot]
    p["retrieval"] = [load(s, eval_n(s)) for s in config.retrieval]
    for probe in p["zeroshot"]:
        check_zeroshot_probe(probe)
    for probe in p["retrieval"]:
        check_retrieval_probe(probe)


# -- scores ---------------------------------------------------------------------------------------
def _scores(run: _Run) -> pd.DataFrame:
    """scores.csv: every pair's pre-training metrics with their permutation null."""
    from alignkit.features import extract_features
    from alignkit.metrics.pairs import score_pairs

    config, probe = run.config, run.probes["score"]
    path = run.out / "scores.csv"
    key = config.stage_key(*SCORE_FIELDS) + f"-{probe.fingerprint}-k{config.k}-s{config.seed}"
    scores = _read_stage_csv(path, key)
    if scores is not None:
        return scores

    def extract(spec: str) -> Any:
        return extract_features(
            spec, probe, cache=run.cache, device=run.device, progress=run.progress
        )

    scores = score_pairs(
        [extract(v) for v in config.vision],
        [extract(t) for t in config.text],
        list(config.metrics),
        n_permutations=config.permutations,
        seed=config.seed,
        progress=run.progress,
        **({"k": config.k} if any("knn" in m for m in config.metrics) else {}),
    )
    scores["stage_key"] = key
    atomic_write_text(path, scores.to_csv(index=False))
    return scores


def _read_stage_csv(path: Path, key: str) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    if "stage_key" not in frame or frame.empty or str(frame["stage_key"].iloc[0]) != key:
        return None
    return frame


# -- pairs ----------------------------------------------------------------------------------------
def finished_pairs(out: Path, config: PredictivityConfig) -> list[tuple[str, str]]:
    """The pairs of the grid whose first run's evaluation in ``out`` matches the config."""
    first = config.first_seed
    return [(v, t) for v, t, s in finished_runs(out, config) if s == first]


def finished_runs(out: Path, config: PredictivityConfig) -> list[tuple[str, str, int]]:
    """The (vision, text, seed) runs of :attr:`~.config.PredictivityConfig.runs` whose
    evaluation in ``out`` matches the config (resume skips them)."""
    return [
        (v, t, s)
        for v, t, s in config.runs
        if read_stage_json(run_folder(out, config, v, t, s) / "metrics.json", run_key(config, s))
        is not None
    ]


def _pairs(
    run: _Run, only: Sequence[tuple[str, str]] | None, skip_unfinished: bool
) -> list[dict[str, Any]]:
    """Train and evaluate every run of the grid (or of ``only`` these pairs): the first seed of
    every pair, then the extra seeds; reuse the finished ones. One row per run."""
    config, pairs = run.config, run.config.pairs
    if only is not None:
        unknown = [p for p in only if tuple(p) not in pairs]
        if unknown:
            raise AlignkitError(f"only names pairs outside the grid: {unknown}")
        pairs = [tuple(p) for p in only]
    extra = set(config.repeated_pairs)  # as config.runs, in the order of `only`
    todo = [(v, t, config.first_seed) for v, t in pairs]
    todo += [(v, t, s) for s in config.seeds for v, t in pairs if (v, t) in extra]
    if not skip_unfinished:  # before the first training run, not at the pair that cannot train
        done = set(finished_runs(run.out, config))
        specs = dict.fromkeys(s for v, t, seed in todo if (v, t, seed) not in done for s in (v, t))
        check_trainable([run.encoder(s) for s in specs], "its pairs are scored but cannot be "
                        "trained: leave it out of the grid")  # fmt: skip
    rows, skipped = [], []
    for v, t, seed in todo:
        key = run_key(config, seed)
        metrics = read_stage_json(run_folder(run.out, config, v, t, seed) / "metrics.json", key)
        if metrics is None and skip_unfinished:
            skipped.append(f"{v} x {t}" + ("" if seed == config.first_seed else f" seed {seed}"))
            continue
        if metrics is None:
            metrics = _train_and_evaluate(run, v, t, seed)
        rows.append({"vision": v, "text": t, "seed": seed, "metrics": metrics})
    if skipped:
        run.timings["skipped_pairs"] = skipped
        log.warning("%d unfinished runs left out: %s", len(skipped), "; ".join(skipped))
    return rows


# -- analysis -------------------------------------------------------------------------------------
def _analysis(run: _Run, scores: pd.DataFrame, rows: list[dict[str, Any]]) -> PredictivityResult:
    """seeds.csv, pairs.csv, noise.csv, correlations.csv, decisions.csv and the figure, from the
    scores and the runs' results."""
    config = run.config
    seeds = seed_table(rows, config)
    pairs = pair_table(scores, rows, config)
    noise = seed_noise(seeds)
    correlations = correlate(pairs, config)
    measured = noise[noise["sd"].notna()]
    decisions = None
    if len(measured):
        decisions = decisions_table(
            pairs,
            dict(zip(measured["result"], measured["sd"], strict=True)),
            results=list(measured["result"]),
            bootstrap=config.bootstrap,
            level=config.level,
            seed=config.seed,
        )
    for name, table in (("seeds", seeds), ("pairs", pairs), ("noise", noise),
                        ("correlations", correlations), ("decisions", decisions)):  # fmt: skip
        if table is not None:
            atomic_write_text(run.out / f"{name}.csv", table.to_csv(index=False))
    if decisions is None:  # an earlier run's table would describe other runs
        (run.out / "decisions.csv").unlink(missing_ok=True)
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from alignkit.evaluation.predictivity.plot import plot_predictivity

    fig = plot_predictivity(pairs, run.config, correlations=correlations)
    from alignkit._files import atomic_path

    with atomic_path(run.out / "predictivity.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return PredictivityResult(
        pairs, correlations, config, run.out, run.timings, seeds, noise, decisions
    )


__all__ = [
    "PredictivityResult",
    "finished_pairs",
    "finished_runs",
    "pair_folder",
    "run_folder",
    "run_key",
    "run_predictivity",
    "saved_config",
]
