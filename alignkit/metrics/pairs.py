"""All-pairs scoring of vision x text encoders: :func:`score_pairs` and :func:`score_layers`.

It drives the metrics through their engines (per-representation ``prepare`` once, a ``cross`` term
per pair and permutation, exact null ``moments`` where the metric has them), so it lives beside
them (issue #9; formerly ``alignkit.compare``).

The scores table is long-form, one row per (vision, text, metric, vision_layer, text_layer),
with exactly the columns in :data:`SCORE_COLUMNS`:

=============  =====================================================================
vision, text   encoder spec strings
metric         key of :data:`alignkit.metrics.METRICS`
score          the metric on the true pairing
null_mean      mean of the metric over re-pairings of the rows (NaN if no null)
null_std       standard deviation of that null
z              (score - null_mean) / null_std
p              P(null >= score): ``(1 + #null >= score) / (B + 1)`` for a permutation null
               (never below 1/(B+1)); a Pearson type III (or normal) tail for an analytic one,
               which resolves p far below 1/(B+1)
log10_p        log10 of p, computed in log space where an analytic p underflows to 0
               (:func:`alignkit.metrics.moments.log10_upper_p`), so strong pairs stay told apart
null_method    how the null columns were obtained: ``analytic-pearson3`` (exact mean, variance
               and skewness over all n! re-pairings: CKA family, n <= 1024),
               ``analytic-normal`` (exact mean and variance, normal tail: larger n),
               ``permutation`` (Monte Carlo over B permutations) or ``none``
ci_low/high    ``level`` confidence interval for the full-n score, symmetric about it: the
               delete-d jackknife variance of repeated subsampling of rows without replacement
               and a Student-t quantile (see
               :func:`alignkit.metrics.calibration.subsample_bounds`); NaN if none run
chance         analytic chance level where one exists (mutual-kNN: k / (n - 1)), else NaN
n              probe rows scored
k              neighbourhood size for neighbourhood metrics, else NaN
vision_layer   layer index of the vision features (-1 = last / not layer-wise)
text_layer     likewise for text
options        JSON of the metric's other options
=============  =====================================================================
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from alignkit.config import DEFAULT_METRICS
from alignkit.errors import AlignkitError
from alignkit.metrics._checks import as_features, check_min_rows, common_dtype
from alignkit.metrics._engine import permutations, subsets
from alignkit.metrics.calibration import (
    NULL_METHODS,
    analytic_summary,
    check_count,
    check_fraction,
    max_over_cells,
    null_summary,
    subsample_bounds,
)
from alignkit.metrics.moments import log10_upper_p
from alignkit.metrics.registry import Metric, get_metric

SCORE_COLUMNS: tuple[str, ...] = (
    "vision",
    "text",
    "metric",
    "score",
    "null_mean",
    "null_std",
    "z",
    "p",
    "log10_p",
    "null_method",
    "ci_low",
    "ci_high",
    "chance",
    "n",
    "k",
    "vision_layer",
    "text_layer",
    "options",
)


@dataclass(frozen=True, eq=False)
class _Rep:
    """One representation to score: an encoder's ``(n, d)`` features at one layer."""

    encoder: str
    layer: int  # -1 when the features are not layer-wise
    features: torch.Tensor  # checked (n, d)


def _feature_sets(side: Any, label: str) -> list[tuple[str, Any, Any, Any]]:
    """(name, features, layer indices or None, the FeatureSet or None) of each encoder on a side."""
    if isinstance(side, Mapping):
        return [(str(name), feats, None, None) for name, feats in side.items()]
    if hasattr(side, "features") and hasattr(side, "ids"):  # a single FeatureSet
        side = [side]
    if not isinstance(side, Sequence) or isinstance(side, (str, bytes)):
        raise AlignkitError(
            f"{label} must be a sequence of FeatureSet or a {{name: (n, d) features}} mapping: "
            f"got {type(side).__name__}"
        )
    out = []
    for fs in side:
        if not (hasattr(fs, "features") and hasattr(fs, "ids")):
            raise AlignkitError(f"{label} must hold FeatureSet objects: got {type(fs).__name__}")
        layers = (
            fs.provenance.get("layers")
            if isinstance(getattr(fs, "provenance", None), dict)
            else None
        )
        out.append((fs.encoder, fs.features, layers, fs))
    return out


def _reps(side: Any, label: str) -> tuple[list[_Rep], list[Any]]:
    """Checked per-layer representations of one side, and the FeatureSets (for row checks)."""
    reps: list[_Rep] = []
    seen: set[str] = set()
    sets = []
    for name, feats, layers, fs in _feature_sets(side, label):
        if fs is not None:
            sets.append(fs)
        if name in seen:
            raise AlignkitError(
                f"{label} encoders must have distinct names: {name!r} appears twice"
            )
        seen.add(name)
        t = (
            feats.detach()
            if isinstance(feats, torch.Tensor)
            else torch.as_tensor(np.asarray(feats))
        )
        if t.ndim == 3:
            idx = (
                list(layers)
                if layers is not None and len(layers) == t.shape[0]
                else list(range(t.shape[0]))
            )
            reps += [
                _Rep(name, int(li), as_features(t[i], f"{label} {name!r} layer {li}"))
                for i, li in enumerate(idx)
            ]
        else:
            reps.append(_Rep(name, -1, as_features(t, f"{label} {name!r}")))
    if not reps:
        raise AlignkitError(f"{label} must hold at least one encoder's features: got none")
    return reps, sets


def _check_rows(vision: list[_Rep], text: list[_Rep], sets: list[Any]) -> int:
    for a, b in zip(sets, sets[1:], strict=False):
        a.check_same_rows(b)
    first = vision[0]
    for r in [*vision, *text]:
        if r.features.shape[0] != first.features.shape[0]:
            raise AlignkitError(
                f"{first.encoder} and {r.encoder} must describe the same probe rows: "
                f"got {first.features.shape[0]} rows and {r.features.shape[0]} rows"
            )
        if r.features.device != first.features.device:
            raise AlignkitError(
                f"all features must be on one device: got {first.features.device} "
                f"({first.encoder}) "
                f"and {r.features.device} ({r.encoder})"
            )
    return int(first.features.shape[0])


def _metric_options(
    names: Sequence[str | Metric], options: dict[str, Any]
) -> list[tuple[Metric, dict[str, Any]]]:
    if isinstance(names, (str, Metric)):
        names = [names]
    metrics = [get_metric(m) for m in names]
    if not metrics:
        raise AlignkitError("metrics must name at least one metric: got none")
    unused = set(options) - {key for m in metrics for key in m.defaults}
    if unused:
        raise AlignkitError(
            f"no selected metric ({', '.join(m.name for m in metrics)}) takes "
            f"option(s) {sorted(unused)}"
        )
    return [
        (m, m.options(**{k: v for k, v in options.items() if k in m.defaults})) for m in metrics
    ]


def _score_grid(
    vision: list[_Rep],
    text: list[_Rep],
    metrics: list[tuple[Metric, dict[str, Any]]],
    n: int,
    n_permutations: int,
    n_subsamples: int,
    fraction: float,
    level: float,
    seed: int,
    progress: bool,
    null: str = "permutation",
) -> dict[str, np.ndarray]:
    """Scores ``(M, V, T)``, null ``(M, B, V, T)``, exact null moments ``(M, V, T, 3)`` (mean,
    variance, skewness; NaN unless ``null="analytic"`` and the metric has them) and intervals
    ``(M, 2, V, T)`` of every pair.

    Per-representation states are prepared once per (representation, state key); metrics that
    share a key (biased/unbiased linear CKA; mutual-kNN/CKNNA with one k) share each cross term.
    Every pair sees the same permutations and subsets.
    """
    dtype = common_dtype(*(r.features for r in [*vision, *text]))
    vision = [_Rep(r.encoder, r.layer, r.features.to(dtype)) for r in vision]
    text = [_Rep(r.encoder, r.layer, r.features.to(dtype)) for r in text]
    for m, opts in metrics:
        m.engine.check(n, opts)
    groups: dict[tuple, list[int]] = {}
    for i, (m, opts) in enumerate(metrics):
        groups.setdefault(m.engine.key(opts), []).append(i)
    n_m, n_v, n_t = len(metrics), len(vision), len(text)
    perms = permutations(n, n_permutations, seed, vision[0].features.device)
    rows = subsets(n, n_subsamples, fraction, seed) if n_subsamples else []
    out = {
        "scores": np.full((n_m, n_v, n_t), math.nan),
        "null": np.full((n_m, n_permutations, n_v, n_t), math.nan),
        "ci": np.full((n_m, 2, n_v, n_t), math.nan),
        "moments": np.full((n_m, n_v, n_t, 3), math.nan),
    }
    analytic = [null == "analytic" and m.engine.moments is not None for m, _ in metrics]
    bar = tqdm(
        total=n_v * n_t * (1 + n_subsamples),
        desc="scoring pairs",
        disable=not progress,
        leave=False,
    )

    def run(
        vreps: list[_Rep],
        treps: list[_Rep],
        subset: np.ndarray | None,
        target: np.ndarray,
        null: bool,
        moments: bool = False,
    ) -> None:
        idx = None if subset is None else torch.from_numpy(subset).to(vreps[0].features.device)
        m_rows = n if subset is None else len(subset)
        for key, members in groups.items():
            m0, o0 = metrics[members[0]]
            eng = m0.engine
            if subset is not None:
                for i in members:
                    metrics[i][0].engine.check(m_rows, dict(metrics[i][1]))

            def prep(r: _Rep, label: str, eng: Any = eng, o0: dict = o0) -> Any:
                f = r.features if idx is None else r.features[idx]
                return eng.prepare(
                    f, o0, f"{label} {r.encoder!r}" + ("" if r.layer < 0 else f" layer {r.layer}")
                )

            vstates = [prep(r, "vision") for r in vreps]
            tstates = [prep(r, "text") for r in treps]
            for vi, sv in enumerate(vstates):
                for ti, st in enumerate(tstates):
                    c = eng.cross(sv, st, None, o0)
                    for i in members:
                        target[i, vi, ti] = metrics[i][0].engine.finish(sv, st, c, metrics[i][1])
                    if moments:
                        for i in members:
                            if analytic[i]:
                                out["moments"][i, vi, ti] = metrics[i][0].engine.moments(
                                    sv, st, metrics[i][1]
                                )
                    if null and not all(analytic[i] for i in members):
                        for b, p in enumerate(perms):
                            c = eng.cross(sv, st, p, o0)
                            for i in members:
                                out["null"][i, b, vi, ti] = metrics[i][0].engine.finish(
                                    sv, st, c, metrics[i][1]
                                )
                    if key == next(iter(groups)):
                        bar.update(1)

    run(vision, text, None, out["scores"], null=n_permutations > 0, moments=any(analytic))
    if rows:
        sub = np.full((n_m, len(rows), n_v, n_t), math.nan)
        for s, subset in enumerate(rows):
            run(vision, text, subset, sub[:, s], null=False)
        low, high = subsample_bounds(out["scores"], sub, n, len(rows[0]), level, axis=1)
        out["ci"][:, 0], out["ci"][:, 1] = low, high
    bar.close()
    return out


def score_pairs(
    vision: Any,
    text: Any,
    metrics: Sequence[str | Metric] | str = DEFAULT_METRICS,
    *,
    n_permutations: int = 0,
    null: str = "analytic",
    n_subsamples: int = 0,
    subsample_fraction: float = 0.8,
    level: float = 0.95,
    seed: int = 0,
    progress: bool = True,
    **metric_options: Any,
) -> pd.DataFrame:
    """Score every vision x text encoder pair with every metric, with calibration.

    Args:
        vision, text: sequences of :class:`~alignkit.features.FeatureSet` built on the same probe
            rows (checked with ``FeatureSet.check_same_rows``), or ``{name: features}`` mappings
            of ``(n, d)`` (or layer-wise ``(L, n, d)``) tensors/arrays of the same rows.
            Layer-wise features are scored at every layer pair.
        metrics: :data:`alignkit.metrics.METRICS` names (or Metric objects).
        n_permutations: B permutations of the pairing for the null (0: none); the same B
            permutations (``np.random.default_rng(seed)``) for every pair, metric and layer, so
            each pair's null equals ``permutation_null(metric, x, y, B, seed)``.
        null: ``"analytic"`` (default): metrics with exact permutation moments (the CKA family,
            ``Metric.has_analytic_null``) get them, as :func:`~alignkit.metrics.analytic_null`
            computes them, at about the cost of the score; the others use the B permutations
            (no null when B = 0). ``"permutation"``: every metric uses the B permutations.
            ``"none"``: no null. The ``null_method`` column says which each row got.
        n_subsamples: subsets of rows (without replacement, ``subsample_fraction`` of n) for the
            ``level`` confidence interval of each score (0: none; the same subsets for every
            pair): a delete-d jackknife t-interval, :func:`~alignkit.metrics.subsample_interval`.
        seed: seeds permutations and subsets. progress: show a tqdm bar.
        metric_options: options for the metrics that take them (e.g. ``k=20``); an option no
            selected metric takes is an error.

    Returns:
        Long-form DataFrame with exactly :data:`SCORE_COLUMNS`, one row per (vision, text,
        metric, vision_layer, text_layer).

    Work: each encoder's per-representation part (centring and self terms for CKA, neighbour
    lists for mutual-kNN/CKNNA, kernel medians for RBF, SVD bases for SVCCA) is computed once;
    each pair and each permutation costs only the cross term (an n·d1·d2 GEMM for linear CKA,
    shared by its biased and unbiased forms; an O(n·k²) list relabelling for mutual-kNN).
    """
    b = check_count(n_permutations, "n_permutations")
    s = check_count(n_subsamples, "n_subsamples")
    if null not in NULL_METHODS:
        raise AlignkitError(f"null must be one of {', '.join(NULL_METHODS)}: got {null!r}")
    if null == "none":
        b = 0
    if s:
        if s < 2:
            raise AlignkitError(f"n_subsamples must be 0 or >= 2: got {s}")
        check_fraction(subsample_fraction, level)
    chosen = _metric_options(metrics, metric_options)
    vreps, vsets = _reps(vision, "vision")
    treps, tsets = _reps(text, "text")
    n = _check_rows(vreps, treps, [*vsets, *tsets])
    if s and round(subsample_fraction * n) >= n:
        raise AlignkitError(
            f"subsample_fraction={subsample_fraction} of n={n} rows leaves no row out of a "
            "subset: use a smaller subsample_fraction"
        )
    if null == "analytic" and any(m.has_analytic_null for m, _ in chosen):
        check_min_rows(n, 4, "the analytic permutation null")
    grid = _score_grid(
        vreps, treps, chosen, n, b, s, subsample_fraction, level, seed, progress, null
    )
    records = []
    tails: list[tuple[int, float, float, float]] = []  # (record, p, z, skew) of analytic nulls
    for vi, vr in enumerate(vreps):
        for ti, tr in enumerate(treps):
            for mi, (m, opts) in enumerate(chosen):
                score = float(grid["scores"][mi, vi, ti])
                moments = grid["moments"][mi, vi, ti]
                if not np.isnan(moments[1]):
                    mean, std, z, p, method, skew = analytic_summary(tuple(moments), score)
                    tails.append((len(records), p, z, skew))
                    log10_p = math.nan  # all analytic ones at once below
                else:
                    mean, std, z, p = null_summary(score, grid["null"][mi, :, vi, ti])
                    method = "permutation" if b else "none"
                    log10_p = math.log10(p) if p > 0 else math.nan  # p >= 1/(B+1)
                records.append(
                    {
                        "vision": vr.encoder,
                        "text": tr.encoder,
                        "metric": m.name,
                        "score": score,
                        "null_mean": mean,
                        "null_std": std,
                        "z": z,
                        "p": p,
                        "log10_p": log10_p,
                        "null_method": method,
                        "ci_low": float(grid["ci"][mi, 0, vi, ti]),
                        "ci_high": float(grid["ci"][mi, 1, vi, ti]),
                        "chance": m.chance(n, opts) if m.chance is not None else math.nan,
                        "n": n,
                        "k": float(opts["k"]) if "k" in opts else math.nan,
                        "vision_layer": vr.layer,
                        "text_layer": tr.layer,
                        "options": json.dumps({k: v for k, v in sorted(opts.items()) if k != "k"}),
                    }
                )
    if tails:  # one vectorised call: the log-space tails cost ~10 ms each one by one
        where, p, z, skew = (np.array(c) for c in zip(*tails, strict=True))
        for i, value in zip(where, log10_upper_p(p, z, skew), strict=True):
            records[i]["log10_p"] = float(value)
    return pd.DataFrame.from_records(records, columns=list(SCORE_COLUMNS))


@dataclass(frozen=True)
class LayerScores:
    """One metric over every (vision layer, text layer) pair of one encoder pair.

    Attributes:
        vision, text: encoder names. metric: registry name. options: the metric's options.
        scores: ``(Lv, Lt)`` the metric on the true pairing.
        null: ``(B, Lv, Lt)`` the metric on B permuted pairings, the same B permutations for
            every layer pair, so ``null.max((1, 2))`` is the null of the best layer pair.
        vision_layers, text_layers: layer indices along the two axes. n: probe rows.
    """

    vision: str
    text: str
    metric: str
    scores: np.ndarray
    null: np.ndarray
    vision_layers: tuple[int, ...]
    text_layers: tuple[int, ...]
    n: int
    options: dict[str, Any]

    @property
    def best(self) -> tuple[int, int]:
        """(vision layer, text layer) indices with the highest finite score."""
        best = max_over_cells(self.scores, None).best
        if best is None:
            raise AlignkitError(
                f"{self.metric} is NaN at every layer pair of {self.vision} x {self.text}"
            )
        return self.vision_layers[best[0]], self.text_layers[best[1]]

    @property
    def max_p(self) -> float:
        """p-value of the best layer pair against the max-over-layer-pairs null (NaN if none);
        see :func:`alignkit.metrics.max_over_cells` for the NaN handling."""
        return max_over_cells(self.scores, self.null).p_max


def score_layers(
    vision_fs: Any,
    text_fs: Any,
    metric: str | Metric,
    *,
    n_permutations: int = 0,
    seed: int = 0,
    progress: bool = True,
    **options: Any,
) -> LayerScores:
    """One metric at every layer pair of one vision and one text encoder.

    Args:
        vision_fs, text_fs: a FeatureSet (layer-wise ``(L, n, d)`` or plain ``(n, d)``) or a
            tensor/array of either shape; both on the same rows.
        metric: a METRICS name. n_permutations, seed: as in :func:`score_pairs`.
        options: metric options (e.g. ``k=20``).
    """
    b = check_count(n_permutations, "n_permutations")
    chosen = _metric_options([metric], options)

    def side(obj: Any, label: str) -> dict | Any:
        return obj if hasattr(obj, "ids") else {label: obj}

    vreps, vsets = _reps(side(vision_fs, "vision"), "vision")
    treps, tsets = _reps(side(text_fs, "text"), "text")
    n = _check_rows(vreps, treps, [*vsets, *tsets])
    grid = _score_grid(vreps, treps, chosen, n, b, 0, 0.8, 0.95, seed, progress)
    return LayerScores(
        vision=vreps[0].encoder,
        text=treps[0].encoder,
        metric=chosen[0][0].name,
        scores=grid["scores"][0],
        null=grid["null"][0],
        vision_layers=tuple(r.layer for r in vreps),
        text_layers=tuple(r.layer for r in treps),
        n=n,
        options=chosen[0][1],
    )
