"""Run a ranking: probe -> features of every encoder (cached) -> scores of every pair -> Ranking.

    rank_encoders(RankConfig(probe="synthetic", n=200))                 # a full config
    rank_encoders(vision=["torchvision:mobilenet_v2"], text=["st:..."])  # its fields as keywords
    rank_encoders(config, probe=my_probe_set)                            # a ProbeSet you built

Method: Maniparambil et al. (2024), "From Unimodal to Multimodal: Scaling up Projectors to Align
Modalities" rank pairs by linear CKA on paired image/caption features; Huh et al. (2024), "The
Platonic Representation Hypothesis" by mutual-kNN. Scores are calibrated by a permutation null
(shuffle the pairing of rows), because a raw biased CKA has a large floor at small n.

Order of work: everything that can be checked without loading a model (metrics, sizes, encoder
specs) is checked first; then the probe; then one encoder at a time, each cached as soon as it
is done, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignkit._threads import choose_threads, limit_threads, threads_setting
from alignkit.config import EncoderEntry, RankConfig
from alignkit.errors import AlignkitError, unknown_key
from alignkit.ranking.checks import (
    NEIGHBOUR_METRICS,
    SUBSAMPLE_FRACTION,
    check_probe_size,
    check_settings,
    default_probe,
    load_ranking_probe,
    suggest_specs,
)
from alignkit.ranking.result import LayerResult, Ranking

if TYPE_CHECKING:  # pragma: no cover
    from alignkit.features import FeatureSet
    from alignkit.probes import ProbeSet

log = logging.getLogger("alignkit.ranking")


def rank_encoders(
    config: RankConfig | None = None,
    *,
    probe: str | Path | ProbeSet | None = None,
    progress: bool = True,
    command: Sequence[str] | None = None,
    **options: Any,
) -> Ranking:
    """Score and rank every vision x text encoder pair on a probe set.

    Args:
        config: the run (:class:`~alignkit.config.RankConfig`; its fields document every
            setting). ``None`` = the built-in default run.
        probe: a probe spec (sets ``config.probe``) or a loaded ``ProbeSet`` (then ``config.n``
            is not applied: the set is used as given).
        progress: tqdm bars (extraction, scoring).
        command: the command line to record in ``run.json``.
        **options: fields of ``RankConfig`` that replace the config's (``vision=[...]``,
            ``n=200``, ``metrics=[...]``); an unknown name is an error listing the valid ones.
    Returns:
        a :class:`Ranking` (tables, figures, ``save``).
    Raises:
        AlignkitError: bad settings (before anything is loaded), an encoder that fails to load
            (unless ``keep_going``), a probe too small for the chosen metrics.
    """
    config = config if config is not None else RankConfig()
    valid = {f.name for f in dataclasses.fields(RankConfig)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise unknown_key("rank_encoders option", unknown[0], sorted(valid))
    for key in ("vision", "text", "metrics"):
        if key in options and not isinstance(options[key], str):
            options[key] = tuple(options[key])
    if isinstance(options.get("cache"), Path):
        options["cache"] = str(options["cache"])
    loaded = None
    if isinstance(probe, (str, Path)):
        options["probe"] = str(probe)
    elif probe is not None:
        loaded = probe
    if options:
        config = config.replace(**options)
    with threads_setting(config.threads):
        return _run(config, probe=loaded, progress=progress, command=command)


def _extract(
    entry: EncoderEntry,
    probe: ProbeSet,
    config: RankConfig,
    progress: bool,
    layer: str | None = None,
) -> FeatureSet:
    """Features of one encoder (from the cache when there); ``layer`` overrides the entry's."""
    from alignkit.features import extract_features

    options = entry.kwargs
    if layer is not None:
        options["layer"] = layer
    # the spec and its options, not a built encoder: a cache hit then builds no model
    return extract_features(
        entry.spec,
        probe,
        options=options,
        batch_size=config.extract_batch,
        caption_policy=config.caption_policy,
        seed=config.seed,
        cache=config.cache,
        device=config.device,
        progress=progress,
    )


def _layerwise(
    entry: EncoderEntry, fs: FeatureSet, probe: ProbeSet, config: RankConfig, progress: bool
) -> FeatureSet:
    """``(L, n, d)`` features of every layer; an encoder without layers gives its output as one."""
    from alignkit.features import FeatureSet as _FS

    if fs.layered:
        return fs
    if "layer" not in entry.kwargs:
        try:
            return _extract(entry, probe, config, progress, layer="all")
        except AlignkitError as exc:  # this backend has no layer axis
            log.warning(
                "%s: no layer-wise features (%s); its output is its only layer", entry.label, exc
            )
    return _FS(fs.features[None], fs.ids, fs.provenance)


def _run(
    config: RankConfig, *, probe: ProbeSet | None, progress: bool, command: Sequence[str] | None
) -> Ranking:
    t_start = time.perf_counter()
    timings: dict[str, Any] = {}
    from alignkit.encoders import is_control
    from alignkit.runs import versions

    vision, text, controls = check_settings(config)  # before anything is loaded
    from alignkit.metrics import score_pairs

    # -- probe
    t0 = time.perf_counter()
    if probe is None:
        probe, probe_note = load_ranking_probe(config, progress=progress)
    else:
        probe_note = {"n_given": None, "rows_available": len(probe), "skipped_rows": []}
    check_probe_size(len(probe), config)
    timings["probe_s"] = time.perf_counter() - t0

    # -- features, one encoder at a time (each is cached as soon as it is done)
    feats: dict[str, FeatureSet] = {}
    sides: dict[str, str] = {}
    failed: list[dict[str, str]] = []
    encoders_meta: list[dict[str, Any]] = []
    timings["extract_s"] = {}
    wanted = (
        [(e, "image") for e in vision] + [(e, "text") for e in text] + [(e, None) for e in controls]
    )
    for i, (entry, side) in enumerate(wanted, 1):
        log.info("[%d/%d] features of %s", i, len(wanted), entry.label)
        t0 = time.perf_counter()
        try:
            fs = _extract(entry, probe, config, progress)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - any backend failure is reported the same way
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            close = suggest_specs(entry.spec)
            if close:  # a typo: the closest known names first, the backend's long list cut short
                reason = (reason[:160] + " …" if len(reason) > 160 else reason) + f"; {close}"
            message = f"encoder {entry.label} failed: {type(exc).__name__}: {reason}"
            if not config.keep_going:
                raise AlignkitError(message + " (keep_going=True ranks the others)") from exc
            log.warning("%s; skipping it (keep_going)", message)
            failed.append({"spec": entry.label, "error": f"{type(exc).__name__}: {reason}"})
            continue
        timings["extract_s"][entry.label] = time.perf_counter() - t0
        modality = fs.modality
        if side is not None and modality in ("image", "text") and modality != side:
            given = "vision" if side == "image" else "text"
            raise AlignkitError(
                f"{entry.label} was given as a {given} encoder but it encodes {modality}"
            )
        feats[entry.label] = fs
        sides[entry.label] = modality if modality in ("image", "text") else (side or "image")
        prov = dict(fs.provenance)
        encoders_meta.append(
            {
                "label": entry.label,
                "spec": entry.spec,
                "options": entry.kwargs,
                "side": "vision" if sides[entry.label] == "image" else "text",
                "control": entry in controls or is_control(entry.spec),
                "dim": fs.dim,
                "n_layers": fs.n_layers,
                "weights_identity": prov.get("weights", prov.get("weights_identity")),
                "provenance": prov,
            }
        )
    v_labels = [lbl for lbl in feats if sides[lbl] == "image"]
    t_labels = [lbl for lbl in feats if sides[lbl] == "text"]
    if not v_labels or not t_labels:
        side = "vision" if not v_labels else "text"
        raise AlignkitError(
            f"no {side} encoder left to rank after failures: "
            + "; ".join(f"{f['spec']}: {f['error']}" for f in failed)
        )

    # -- scores of the last layers
    def last(fs: FeatureSet) -> FeatureSet:
        return fs.layer(-1) if fs.layered else fs

    def as_input(labels: list[str]) -> Any:
        if all(feats[lbl].encoder == lbl for lbl in labels):
            return [last(feats[lbl]) for lbl in labels]
        return {lbl: last(feats[lbl]).features for lbl in labels}

    t0 = time.perf_counter()
    metric_options = {"k": config.k} if any(m in NEIGHBOUR_METRICS for m in config.metrics) else {}
    # many small (n, n) operations: threads by their size and the CPUs actually free
    with limit_threads(choose_threads(len(probe) ** 2)):
        scores = score_pairs(
            as_input(v_labels),
            as_input(t_labels),
            metrics=config.metrics,
            n_permutations=config.permutations,
            null=config.null,
            n_subsamples=config.subsamples,
            subsample_fraction=SUBSAMPLE_FRACTION,
            seed=config.seed,
            progress=progress,
            **metric_options,
        )
    timings["score_s"] = time.perf_counter() - t0

    # -- layer x layer (the main scores above stay those of each encoder's own output)
    layer_results: list[LayerResult] = []
    if config.layers == "all":
        from alignkit.metrics import score_layers

        t0 = time.perf_counter()
        by_label = {e.label: e for e in [*vision, *text, *controls]}
        layered = {}
        for i, lbl in enumerate([*v_labels, *t_labels], 1):
            log.info("[%d/%d] layer-wise features of %s", i, len(v_labels) + len(t_labels), lbl)
            layered[lbl] = _layerwise(by_label[lbl], feats[lbl], probe, config, progress)
        pairs = [(v, t) for v in v_labels for t in t_labels]
        opts = {"k": config.k} if config.primary_metric in NEIGHBOUR_METRICS else {}
        for v, t in _bar(pairs, progress, "layer pairs"):
            ls = score_layers(
                layered[v],
                layered[t],
                config.primary_metric,
                n_permutations=config.permutations,
                seed=config.seed,
                progress=False,
                **opts,
            )
            layer_results.append(
                LayerResult.from_null(v, t, config.primary_metric, ls.scores, ls.null)
            )
        timings["layers_s"] = time.perf_counter() - t0

    timings["total_s"] = time.perf_counter() - t_start
    metadata = {
        "command": list(command) if command is not None else None,
        "config": config.to_dict(),
        "versions": versions(),
        "probe": {
            "name": probe.name,
            "n": len(probe),
            "fingerprint": probe.fingerprint,
            "default": config.probe is None,
            **probe_note,
        },
        "encoders": encoders_meta,
        "controls": [e["label"] for e in encoders_meta if e["control"]],
        "failed_encoders": failed,
        "timings": timings,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    ranking = Ranking(
        scores,
        metric=config.primary_metric,
        alpha=config.alpha,
        layers=layer_results,
        metadata=metadata,
        features={lbl: feats[lbl] for lbl in feats},
        probe=probe,
    )
    real = int((~ranking.table["control"]).sum())
    tied = len(ranking.tied_with_best())
    if tied >= max(2, real // 2):
        log.warning(
            "n=%d is small for %d pairs: %d of them cannot be told apart from the best "
            "(overlapping intervals); rank on more rows",
            len(probe),
            real,
            tied,
        )
    return ranking


def _bar(items: list[Any], progress: bool, desc: str) -> Any:
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="pair", leave=False)


__all__ = ["check_probe_size", "default_probe", "rank_encoders"]  # re-exported from checks
