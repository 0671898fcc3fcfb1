"""Everything a ranking can check before it loads a model: settings, encoders, probe sizes.

:func:`check_settings` runs first in :func:`~alignkit.ranking.rank_encoders`: a bad metric name,
an unusable device, a missing encoder or a probe too small for the chosen metrics, subsamples or
permutations fails in a second, not after minutes of extraction. Messages name the settings by
their ``RankConfig`` field names (the CLI shows them as its flags).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from alignkit.config import DEFAULT_N, DEFAULT_SET, EncoderEntry, RankConfig
from alignkit.errors import AlignkitError, unknown_key

if TYPE_CHECKING:  # pragma: no cover
    from alignkit.probes import ProbeSet

log = logging.getLogger("alignkit.ranking")

NEIGHBOUR_METRICS = ("mutual_knn", "cknna")
SUBSAMPLE_FRACTION = 0.8  # rows kept by each interval subsample (score_pairs' subsample_fraction)
MIN_ROWS = 4  # the unbiased CKA estimators and the analytic null need n >= 4


def default_probe() -> str:
    """``flickr8k:test`` when ``ALIGNKIT_DATA_DIR`` holds Flickr8k, else built-in ``synthetic``."""
    from alignkit._paths import data_dir

    return "flickr8k:test" if (data_dir() / "flickr8k" / "pairs.jsonl").is_file() else "synthetic"


Encoders = tuple[list[EncoderEntry], list[EncoderEntry], list[EncoderEntry]]


def check_settings(config: RankConfig) -> Encoders:
    """Fail now on what would fail later: metrics, device, encoders, and n when it is given.

    Returns the vision, text and control encoders to rank (see :func:`resolve_encoders`).
    """
    from alignkit._device import resolve_device
    from alignkit.metrics import METRICS

    for m in config.metrics:
        if m not in METRICS:
            raise unknown_key("metric", m, list(METRICS))
    resolve_device(config.device)  # 'cuda' without CUDA fails here, not at the first encoder
    encoders = resolve_encoders(config)
    if config.n:
        check_probe_size(config.n, config)
    if not config.keep_going:  # a malformed spec or an unknown backend, before the probe is read
        from alignkit.encoders import check_spec

        for entry in (e for side in encoders for e in side):
            try:
                check_spec(entry.spec)
            except AlignkitError as exc:  # as the extraction would say it, minutes later
                raise AlignkitError(
                    f"encoder {entry.label} failed: {exc} (keep_going=True ranks the others)"
                ) from None
    return encoders


def _rows_needed(config: RankConfig) -> tuple[int, str]:
    need, why = MIN_ROWS, "the unbiased CKA estimators need n >= 4"
    if any(m in NEIGHBOUR_METRICS for m in config.metrics) and config.k + 2 > need:
        need, why = config.k + 2, f"k={config.k} neighbours need n >= k + 2"
    return need, why


def check_probe_size(n_rows: int, config: RankConfig) -> None:
    """A probe of ``n_rows`` must hold every chosen metric, its subsamples and its permutations.

    Raises AlignkitError naming the constraint, the numbers and the settings that relax it.
    """
    need, why = _rows_needed(config)
    if n_rows < need:
        raise AlignkitError(f"probe too small: {why}; got n={n_rows} rows")
    if config.subsamples:
        kept = round(SUBSAMPLE_FRACTION * n_rows)
        if kept >= n_rows or kept < need:
            reason = "leave no row out" if kept >= n_rows else why.replace("n >=", "rows >=")
            raise AlignkitError(
                f"probe too small for the score intervals: each of the {config.subsamples} "
                f"subsamples keeps {kept} of the n={n_rows} rows, and its scores {reason}; use "
                "more rows (n), or subsamples=0 for no intervals"
            )
    if config.permutations and n_rows <= 12 and math.factorial(n_rows) <= config.permutations:
        raise AlignkitError(
            f"probe too small for {config.permutations} permutations: n={n_rows} rows have only "
            f"{math.factorial(n_rows)} orderings; lower permutations or use more rows (n)"
        )


def suggest_specs(spec: str, n: int = 3) -> str:
    """``"did you mean: a (loads offline), b?"`` for the known encoder specs closest to
    ``spec`` (difflib), or ``""`` when none is close. Nothing is loaded."""
    import difflib

    from alignkit.encoders import list_encoders

    try:
        infos = {i.spec: i for i in list_encoders()}
    except Exception:  # noqa: BLE001 - a suggestion must never replace the real error
        return ""
    if spec in infos:
        return ""
    candidates = [s for s in infos if spec.startswith("random") or not infos[s].control]
    close = difflib.get_close_matches(spec, candidates, n=n, cutoff=0.75)
    if not close:
        return ""
    close.sort(key=lambda s: not infos[s].offline)  # what loads here first
    named = [f"{s} (loads offline)" if infos[s].offline else s for s in close]
    return "did you mean: " + ", ".join(named) + "?"


def resolve_encoders(config: RankConfig) -> Encoders:
    """The explicit encoders plus those of ``encoder_set`` (``offline-small`` when none is
    given), without duplicates; the set's controls go to the side their modality says."""
    vision, text, controls = list(config.vision), list(config.text), []
    set_name = config.encoder_set
    if set_name is None and not vision and not text:
        set_name = DEFAULT_SET
    if set_name is not None:
        from alignkit.encoders import ENCODER_SETS

        if set_name not in ENCODER_SETS:
            raise unknown_key("encoder set", set_name, list(ENCODER_SETS))
        es = ENCODER_SETS[set_name]
        vision += [EncoderEntry(s) for s in es.vision]
        text += [EncoderEntry(s) for s in es.text]
        controls += [EncoderEntry(s) for s in es.controls]
    vision, text = list(dict.fromkeys(vision)), list(dict.fromkeys(text))
    controls = [c for c in dict.fromkeys(controls) if c not in vision and c not in text]
    for side, given in (("vision", vision), ("text", text)):
        if not given and not controls:
            raise AlignkitError(
                f"no {side} encoder given: pass {side}=SPEC (one or more) or encoder_set=NAME"
            )
    return vision, text, controls


def load_ranking_probe(
    config: RankConfig, *, progress: bool = True
) -> tuple[ProbeSet, dict[str, object]]:
    """The probe of a run and a note on its size for ``run.json``.

    ``n`` given: that many rows (more than the probe has is an error). ``n`` not given (None):
    all rows up to :data:`DEFAULT_N`, the same rows ``n=DEFAULT_N`` would pick when there are
    more. ``n=0``: all rows.
    """
    from alignkit.probes import load_probe
    from alignkit.probes.containers import check_columns_apply, column_options

    spec = config.probe or default_probe()
    n = config.n
    if n is None and spec.split(":")[0] == "synthetic":
        n = DEFAULT_N  # the synthetic probe is generated: any size exists
    names = {} if config.class_names is None else {"class_names": config.class_names}
    check_columns_apply([spec], config)
    names.update(column_options(spec, config))
    probe = load_probe(
        spec, n=n or None, seed=config.seed, skip_bad=config.skip_bad, progress=progress, **names
    )
    available = probe.rows_available or len(probe)  # before load_probe's subsample of n rows
    if config.n is None and n is None and available > DEFAULT_N:
        probe = probe.subsample(DEFAULT_N, seed=config.seed)
    if config.n is None:
        log.info(
            "probe %s: %d of its %d rows (n not given: all rows up to %d)",
            spec,
            len(probe),
            max(available, len(probe)),
            DEFAULT_N,
        )
    note = {
        "n_given": config.n,
        "rows_available": max(available, len(probe)),
        "skipped_rows": [dict(d) for d in getattr(probe, "dropped", ())],
    }
    return probe, note


__all__ = [
    "check_probe_size",
    "check_settings",
    "default_probe",
    "load_ranking_probe",
    "resolve_encoders",
    "suggest_specs",
]
