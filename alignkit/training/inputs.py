"""What a pair-level run trains on: its probes (split-checked), its encoders (checked before any
model work) and the record of both that a checkpoint keeps (:func:`provenance`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignkit.errors import AlignkitError

if TYPE_CHECKING:
    from alignkit.encoders.base import Encoder
    from alignkit.probes.base import ProbeSet

__all__ = [
    "EVAL_SPLITS",
    "check_training_probe",
    "check_validation_probe",
    "load_split_probe",
    "provenance",
    "require_cached",
]

log = logging.getLogger("alignkit.training.pair")

EVAL_SPLITS = ("test",)  # splits whose rows are held out for reporting, never for choosing


def _splits(probe: ProbeSet) -> set[str]:
    return {str(r.attributes["split"]) for r in probe.rows if "split" in r.attributes}


def load_split_probe(
    spec: str,
    *,
    skip_bad: bool = False,
    progress: bool = True,
    class_names: str | None = None,
    columns: Mapping[str, Any] | None = None,
) -> ProbeSet:
    """:func:`alignkit.probes.load_probe`, also for ``PATH:SPLIT`` (the rows of a manifest whose
    ``split`` column says SPLIT), as the split-check messages suggest. ``class_names`` (a file or
    ``"imagenet"``) gives a labelled manifest without captions its template captions;
    ``columns`` (``image_column``, ``caption_columns``, ``id_column``, ``label_column``) name an
    HF dataset's columns and are ignored for other probes."""
    from alignkit.probes import load_probe
    from alignkit.probes.containers import column_options
    from alignkit.probes.registry import NAMED_PROBES

    names: dict[str, Any] = {"class_names": class_names} if class_names is not None else {}
    names.update(column_options(spec, columns or {}))
    base, sep, split = spec.rpartition(":")
    named = spec.partition(":")[0] in NAMED_PROBES
    if sep and split and not named and not Path(spec).exists() and Path(base).exists():
        return load_probe(base, split=split, skip_bad=skip_bad, progress=progress, **names)
    return load_probe(spec, skip_bad=skip_bad, progress=progress, **names)


def check_training_probe(probe: ProbeSet, spec: str) -> None:
    """A training probe must be one training split: refuse a probe that mixes splits or is
    another split (dev/test), which would train on evaluation data."""
    splits = _splits(probe)
    base = spec.rpartition(":")[0] if ":" in spec and splits else spec
    if len(splits) > 1:
        raise AlignkitError(
            f"probe {spec} has no single training split (its rows are from splits "
            f"{', '.join(sorted(splits))}): pass probe={base}:train"
        )
    if splits and splits != {"train"}:
        raise AlignkitError(
            f"probe {spec} is the {next(iter(splits))!r} split, not a training split: pass "
            f"probe={base}:train (and that split as val only if it is a dev split)"
        )


def check_validation_probe(probe: ProbeSet, spec: str, *, allow_test: bool = False) -> None:
    """A validation probe picks the weights (early stopping, the best step), so it must not be
    a held-out test split (:data:`EVAL_SPLITS`) or mix splits, unless ``allow_test``."""
    splits = _splits(probe)
    base = spec.rpartition(":")[0] if ":" in spec and splits else spec
    if len(splits) > 1 and not allow_test:
        raise AlignkitError(
            f"val {spec} mixes the splits {', '.join(sorted(splits))}: pass val={base}:SPLIT "
            "with a dev split, or val_test_split=True to validate on it anyway"
        )
    test = splits & set(EVAL_SPLITS)
    if test and len(splits) == 1 and not allow_test:
        raise AlignkitError(
            f"val {spec} is the {next(iter(test))!r} split: choosing the weights by test recall "
            "makes the test numbers optimistic; validate on a dev split (for Flickr8k: "
            "flickr8k:dev), or pass val_test_split=True to validate on it anyway"
        )


def require_cached(
    specs: list[str | Encoder],
    probe: ProbeSet,
    *,
    tokens: bool = False,
    cache: Any = True,
    options: dict[str, dict[str, Any]] | None = None,
    store_dtype: str = "float32",
) -> None:
    """Raise a one-line error unless the features of every encoder in ``specs`` on ``probe``
    are already in the cache (``cache_only``). Text encoders are looked up with
    ``caption_policy="all"``. Building an encoder to compute its key reads its weights file
    but runs no model work. ``specs`` may hold built encoders (an encoder fitted on its
    training texts must be given fitted: its key names the fit)."""
    from alignkit.encoders import create_encoder
    from alignkit.features.cache import feature_key
    from alignkit.features.extract import _resolve_cache
    from alignkit.features.keys import content_rows
    from alignkit.features.tokens import _cached, token_key

    store = _resolve_cache(cache)
    if store is None:
        raise AlignkitError("cache_only=True needs a feature cache: pass a cache folder")
    for given in specs:
        if isinstance(given, str):
            enc = create_encoder(given, device="cpu", **(options or {}).get(given, {}))
        else:
            enc = given
        spec = enc.name
        policy = "all" if enc.modality == "text" else "first"
        if tokens:
            from alignkit.features.featureset import caption_ids

            ids = caption_ids(probe) if enc.modality == "text" else probe.ids
            hit = _cached(store, token_key(enc, probe, policy), ids) is not None
        else:  # by what the rows encode: under another probe or in a larger set
            from alignkit.features.featureset import caption_ids

            ids = caption_ids(probe) if enc.modality == "text" else probe.ids
            key = feature_key(enc, probe, policy, store_dtype=store_dtype)
            found = store.lookup(key, ids, content_rows(enc, probe, policy, 0, store_dtype))
            hit = found is not None
        if not hit:
            kind = "token features" if tokens else "features"
            raise AlignkitError(
                f"cache_only=True: the {kind} of {spec} on {probe.name} are not in the cache "
                f"{store.root}: run `alignkit extract -e {spec} --probe {probe.name}"
                f"{' --caption-policy all' if enc.modality == 'text' else ''}"
                f"{f' --store-dtype {store_dtype}' if store_dtype != 'float32' else ''}` first, "
                "or drop "
                "cache_only=True"
            )


def provenance(
    encoders: tuple[Encoder, Encoder],
    options: dict[str, dict[str, Any]],
    train: ProbeSet,
    val: ProbeSet | None,
    tokens: bool,
    store_dtype: str = "float32",
) -> dict[str, Any]:
    """Everything a run's trajectory depends on besides the recipe: each encoder's spec,
    weights identity and options; the feature kind; each probe's fingerprint and row count and
    the feature cache keys of both encoders on it. JSON-able; computed without model work."""
    from alignkit.features.cache import feature_key
    from alignkit.features.tokens import token_key

    def key(enc: Encoder, probe: ProbeSet, policy: str) -> str:
        if tokens:
            return token_key(enc, probe, policy)
        return feature_key(enc, probe, policy, store_dtype=store_dtype)

    vision, text = encoders
    record: dict[str, Any] = {
        side: {
            "spec": enc.name,
            "weights": enc.weights_identity(),
            "options": {k: str(v) for k, v in sorted(options.get(enc.name, {}).items())},
        }
        for side, enc in (("vision", vision), ("text", text))
    }
    record["features"] = "tokens" if tokens else "pooled"
    for name, probe in (("train", train), ("val", val)):
        record[name] = None
        if probe is not None:
            record[name] = {
                "name": probe.name,
                "fingerprint": probe.fingerprint,
                "rows": len(probe),
                "cache_keys": [key(vision, probe, "first"), key(text, probe, "all")],
            }
    return record
