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

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignkit._threads import choose_threads, limit_threads, threads_setting
from alignkit.config import EncoderEntry, RankConfig
from alignkit.errors import AlignkitError, unknown_key
from alignkit.ranking.api import Ranking
from alignkit.ranking.checks import (
    NEIGHBOUR_METRICS,
    SUBSAMPLE_FRACTION,
    check_probe_size,
    check_settings,
    default_probe,
    load_ranking_probe,
    suggest_specs,
)
from alignkit.ranking.extraction import _extract, _layerwise
from alignkit.ranking.result import LayerResult

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

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


@dataclass
class _Encoded:
    """The features of the encoders that loaded, and what run.json records of each."""

    feats: dict[str, FeatureSet] = field(default_factory=dict)  # label -> features
    sides: dict[str, str] = field(default_factory=dict)  # label -> "image" | "text"
    meta: list[dict[str, Any]] = field(default_factory=list)  # run.json "encoders"
    failed: list[dict[str, str]] = field(default_factory=list)  # skipped with keep_going
    seconds: dict[str, float] = field(default_factory=dict)  # label -> extraction time

    def labels(self, side: str) -> list[str]:
        return [lbl for lbl in self.feats if self.sides[lbl] == side]

    def add(self, entry: EncoderEntry, side: str | None, fs: FeatureSet, control: bool) -> None:
        """Keep ``fs`` as ``entry``'s features; ``side``: the side it was given for (None for a
        control, which goes where its modality says)."""
        modality = fs.modality
        if side is not None and modality in ("image", "text") and modality != side:
            given = "vision" if side == "image" else "text"
            raise AlignkitError(
                f"{entry.label} was given as a {given} encoder but it encodes {modality}"
            )
        self.feats[entry.label] = fs
        self.sides[entry.label] = modality if modality in ("image", "text") else (side or "image")
        prov = dict(fs.provenance)
        self.meta.append(
            {
                "label": entry.label,
                "spec": entry.spec,
                "options": entry.kwargs,
                "side": "vision" if self.sides[entry.label] == "image" else "text",
                "control": control,
                "dim": fs.dim,
                "n_layers": fs.n_layers,
                "weights_identity": prov.get("weights", prov.get("weights_identity")),
                "provenance": prov,
            }
        )

    def check_both_sides(self) -> None:
        if not self.labels("image") or not self.labels("text"):
            side = "vision" if not self.labels("image") else "text"
            raise AlignkitError(
                f"no {side} encoder left to rank after failures: "
                + "; ".join(f"{f['spec']}: {f['error']}" for f in self.failed)
            )


def _run(
    config: RankConfig, *, probe: ProbeSet | None, progress: bool, command: Sequence[str] | None
) -> Ranking:
    """The stages of a run: settings, probe, features, scores, layer scores, the Ranking."""
    t_start = time.perf_counter()
    vision, text, controls = check_settings(config)  # before anything is loaded
    timings: dict[str, Any] = {}
    with _timed(timings, "probe_s"):
        probe, probe_note = _probe(config, probe, progress)
    encoded = _features(config, probe, vision, text, controls, progress)
    probe = _without_skipped(probe, probe_note, encoded)
    timings["extract_s"] = encoded.seconds
    with _timed(timings, "score_s"):
        scores = _score_last_layers(config, probe, encoded, progress)
    layer_results: list[LayerResult] = []
    if config.layers == "all":
        with _timed(timings, "layers_s"):
            entries = [*vision, *text, *controls]
            layer_results = _score_layers(config, probe, encoded, entries, progress)
    timings["total_s"] = time.perf_counter() - t_start
    ranking = Ranking(
        scores,
        metric=config.primary_metric,
        alpha=config.alpha,
        layers=layer_results,
        metadata=_metadata(config, command, probe, probe_note, encoded, timings),
        features=dict(encoded.feats),
        probe=probe,
    )
    _warn_if_tied(ranking, len(probe))
    return ranking


@contextlib.contextmanager
def _timed(timings: dict[str, Any], key: str) -> Iterator[None]:
    """Record the seconds the block takes as ``timings[key]``."""
    t0 = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t0


def _probe(
    config: RankConfig, probe: ProbeSet | None, progress: bool
) -> tuple[ProbeSet, dict[str, Any]]:
    """The probe (``probe`` as given, else the config's) and what run.json says of its rows."""
    if probe is None:
        probe, probe_note = load_ranking_probe(config, progress=progress)
    else:
        probe_note = {"n_given": None, "rows_available": len(probe), "skipped_rows": []}
    check_probe_size(len(probe), config)
    return probe, probe_note


def _features(
    config: RankConfig,
    probe: ProbeSet,
    vision: Sequence[EncoderEntry],
    text: Sequence[EncoderEntry],
    controls: Sequence[EncoderEntry],
    progress: bool,
) -> _Encoded:
    """Features of every encoder, one at a time (each is cached as soon as it is done)."""
    from alignkit.encoders import is_control

    encoded = _Encoded()
    wanted = (
        [(e, "image") for e in vision] + [(e, "text") for e in text] + [(e, None) for e in controls]
    )
    for i, (entry, side) in enumerate(wanted, 1):
        log.info("[%d/%d] features of %s", i, len(wanted), entry.label)
        t0 = time.perf_counter()
        fs = _extract_or_skip(entry, probe, config, progress, encoded.failed)
        if fs is None:
            continue
        encoded.seconds[entry.label] = time.perf_counter() - t0
        encoded.add(entry, side, fs, control=entry in controls or is_control(entry.spec))
    encoded.check_both_sides()
    return encoded


def _without_skipped(probe: ProbeSet, probe_note: dict[str, Any], encoded: _Encoded) -> ProbeSet:
    """The probe without the rows whose images extraction skipped (``skip_bad``), every
    encoder's features as its rows, and the rows noted for run.json (``skipped_rows``)."""
    from alignkit.features.skipped import without_skipped

    kept, feats = without_skipped(probe, encoded.feats)
    if kept is probe:
        return probe
    encoded.feats = feats
    probe_note["skipped_rows"] = [dict(d) for d in kept.dropped]
    probe_note["skipped_at_extraction"] = len(kept.dropped) - len(probe.dropped)
    return kept


def _extract_or_skip(
    entry: EncoderEntry,
    probe: ProbeSet,
    config: RankConfig,
    progress: bool,
    failed: list[dict[str, str]],
) -> FeatureSet | None:
    """``entry``'s features; when it fails, an error naming it, or with ``keep_going`` None
    and the failure noted in ``failed``."""
    from alignkit.features.skipped import BadImage

    try:
        return _extract(entry, probe, config, progress)
    except (KeyboardInterrupt, BadImage):  # a bad image is the probe's, not the encoder's
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
        return None


def _score_last_layers(
    config: RankConfig, probe: ProbeSet, encoded: _Encoded, progress: bool
) -> pd.DataFrame:
    """Scores of every vision x text pair at each encoder's own output (its last layer)."""
    from alignkit.metrics import score_pairs

    def last(fs: FeatureSet) -> FeatureSet:
        return fs.layer(-1) if fs.layered else fs

    def as_input(labels: list[str]) -> Any:
        if all(encoded.feats[lbl].encoder == lbl for lbl in labels):
            return [last(encoded.feats[lbl]) for lbl in labels]
        return {lbl: last(encoded.feats[lbl]).features for lbl in labels}

    metric_options = {"k": config.k} if any(m in NEIGHBOUR_METRICS for m in config.metrics) else {}
    # many small (n, n) operations: threads by their size and the CPUs actually free
    with limit_threads(choose_threads(len(probe) ** 2)):
        return score_pairs(
            as_input(encoded.labels("image")),
            as_input(encoded.labels("text")),
            metrics=config.metrics,
            n_permutations=config.permutations,
            null=config.null,
            n_subsamples=config.subsamples,
            subsample_fraction=SUBSAMPLE_FRACTION,
            seed=config.seed,
            progress=progress,
            **metric_options,
        )


def _score_layers(
    config: RankConfig,
    probe: ProbeSet,
    encoded: _Encoded,
    entries: Sequence[EncoderEntry],
    progress: bool,
) -> list[LayerResult]:
    """Layer x layer scores of every pair under the primary metric (the main scores stay those
    of each encoder's own output)."""
    from alignkit.metrics import score_layers

    v_labels, t_labels = encoded.labels("image"), encoded.labels("text")
    by_label = {e.label: e for e in entries}
    layered = {}
    for i, lbl in enumerate([*v_labels, *t_labels], 1):
        log.info("[%d/%d] layer-wise features of %s", i, len(v_labels) + len(t_labels), lbl)
        layered[lbl] = _layerwise(by_label[lbl], encoded.feats[lbl], probe, config, progress)
    opts = {"k": config.k} if config.primary_metric in NEIGHBOUR_METRICS else {}
    results = []
    for v, t in _bar([(v, t) for v in v_labels for t in t_labels], progress, "layer pairs"):
        ls = score_layers(
            layered[v],
            layered[t],
            config.primary_metric,
            n_permutations=config.permutations,
            seed=config.seed,
            progress=False,
            **opts,
        )
        results.append(LayerResult.from_null(v, t, config.primary_metric, ls.scores, ls.null))
    return results


def _metadata(
    config: RankConfig,
    command: Sequence[str] | None,
    probe: ProbeSet,
    probe_note: dict[str, Any],
    encoded: _Encoded,
    timings: dict[str, Any],
) -> dict[str, Any]:
    """What run.json records of the run."""
    from alignkit.runs import versions

    return {
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
        "encoders": encoded.meta,
        "controls": [e["label"] for e in encoded.meta if e["control"]],
        "failed_encoders": encoded.failed,
        "timings": timings,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _warn_if_tied(ranking: Ranking, n: int) -> None:
    """Warn when half the real pairs cannot be told apart from the best at this n."""
    real = int((~ranking.table["control"]).sum())
    tied = len(ranking.tied_with_best())
    if tied >= max(2, real // 2):
        log.warning(
            "n=%d is small for %d pairs: %d of them cannot be told apart from the best "
            "(overlapping intervals); rank on more rows",
            n,
            real,
            tied,
        )


def _bar(items: list[Any], progress: bool, desc: str) -> Any:
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="pair", leave=False)


__all__ = ["check_probe_size", "default_probe", "rank_encoders"]  # re-exported from checks
