"""Train the projectors of one vision x text encoder pair on a probe, into a run folder.

:func:`train_pair` is what ``alignkit train`` runs: load and check the probes, get the features
through the cache (pooled, or token-level with ``tokens=True``; text with every caption), pair
them, train with :func:`alignkit.projectors.train_projector`, and write a run folder that
:func:`alignkit.load_aligned` reads::

    run.json                 the command, status (running / done), times, alignkit version
    config.json              encoders (spec, options, weights identity), TrainConfig, probes,
                             validation metrics (alignkit.aligned)
    projector.safetensors    final weights; checkpoint.safetensors, best.safetensors,
                             history.csv, history.png (the trainer's files)

Run folders: a new folder is created; an unfinished run of the same config resumes from its last
checkpoint (a different config is refused by the trainer); a finished run is refused unless
``overwrite=True``, which moves the old folder aside and deletes it only once the new run is done.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignkit.errors import AlignkitError

if TYPE_CHECKING:
    from alignkit.probes.base import ProbeSet
    from alignkit.projectors import TrainConfig, TrainResult

log = logging.getLogger(__name__)

RUN_FILE = "run.json"


@dataclass(frozen=True)
class PairRun:
    """What :func:`train_pair` returns: the folder, the trainer's result and timings (s)."""

    out_dir: Path
    result: TrainResult
    features_s: float
    train_s: float


# -- checks (cheap, before any model work) -------------------------------------------------------
def check_training_probe(probe: ProbeSet, spec: str) -> None:
    """A training probe must be one training split: refuse a probe that mixes splits or is
    another split (dev/test), which would train on evaluation data."""
    splits = {str(r.attributes["split"]) for r in probe.rows if "split" in r.attributes}
    if len(splits) > 1:
        base = spec.partition(":")[0]
        raise AlignkitError(
            f"probe {spec} has no single training split (its rows are from splits "
            f"{', '.join(sorted(splits))}): pass --probe {base}:train"
        )
    if splits and splits != {"train"}:
        base = spec.partition(":")[0]
        raise AlignkitError(
            f"probe {spec} is the {next(iter(splits))!r} split, not a training split: pass "
            f"--probe {base}:train (and that split as --val only if it is a dev split)"
        )


def require_cached(
    specs: list[str],
    probe: ProbeSet,
    *,
    tokens: bool = False,
    cache: Any = True,
    options: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Raise a one-line error unless the features of every encoder in ``specs`` on ``probe``
    are already in the cache (``--cache-only``). Text encoders are looked up with
    ``caption_policy="all"``. Building an encoder to compute its key reads its weights file
    but runs no model work."""
    from alignkit.encoders import create_encoder
    from alignkit.features.cache import feature_key
    from alignkit.features.extract import _resolve_cache
    from alignkit.features.tokens import _cached, token_key

    store = _resolve_cache(cache)
    if store is None:
        raise AlignkitError("--cache-only needs a feature cache: drop --cache off")
    for spec in specs:
        enc = create_encoder(spec, device="cpu", **(options or {}).get(spec, {}))
        policy = "all" if enc.modality == "text" else "first"
        if tokens:
            from alignkit.features.featureset import caption_ids

            ids = caption_ids(probe) if enc.modality == "text" else probe.ids
            hit = _cached(store, token_key(enc, probe, policy), ids) is not None
        else:
            hit = feature_key(enc, probe, policy) in store
        if not hit:
            kind = "token features" if tokens else "features"
            raise AlignkitError(
                f"--cache-only: the {kind} of {spec} on {probe.name} are not in the cache "
                f"{store.root}: run `alignkit extract -e {spec} --probe {probe.name}"
                f"{' --caption-policy all' if enc.modality == 'text' else ''}` first, or drop "
                "--cache-only"
            )


# -- run folders ---------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, body: dict[str, Any]) -> None:
    from alignkit.features._io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(body, indent=1, sort_keys=True, default=str))


def prepare_out_dir(out_dir: Path, *, overwrite: bool) -> Path | None:
    """Make ``out_dir`` ready for a run; returns the folder an overwritten run was moved to
    (deleted by :func:`finish_out_dir`), or None.

    New or empty: used. Holds an unfinished alignkit run (run.json status ``running``): kept, the
    trainer resumes from its checkpoint. Holds a finished run: refused. With ``overwrite`` an
    alignkit run folder (finished or not) is moved aside and the run starts over.
    Anything else: refused (never delete a folder alignkit did not write).
    """
    if not out_dir.exists():
        out_dir.mkdir(parents=True)
        return None
    if not out_dir.is_dir():
        raise AlignkitError(f"--out {out_dir} is a file: expected a folder for the run")
    if not any(out_dir.iterdir()):
        return None
    try:
        status = json.loads((out_dir / RUN_FILE).read_text()).get("status")
    except (OSError, ValueError):
        raise AlignkitError(
            f"--out {out_dir} exists and is not an alignkit training run: pick another --out"
        ) from None
    if status == "running" and not overwrite:
        log.info("%s holds an unfinished run: resuming it", out_dir)
        return None
    if not overwrite:
        raise AlignkitError(
            f"--out {out_dir} already holds a finished run: pass --overwrite to replace it, or "
            "pick another --out"
        )
    aside = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(out_dir, aside)  # atomic: the old run is whole until the new one is done
    out_dir.mkdir()
    return aside


def finish_out_dir(aside: Path | None) -> None:
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


# -- the run -------------------------------------------------------------------------------------
def train_pair(
    vision: str,
    text: str,
    probe: str | ProbeSet,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    val: str | ProbeSet | None = None,
    n: int | None = None,
    val_n: int | None = None,
    tokens: bool = False,
    vision_options: dict[str, Any] | None = None,
    text_options: dict[str, Any] | None = None,
    cache: Any = True,
    cache_only: bool = False,
    device: str = "auto",
    batch_size: int = 64,
    overwrite: bool = False,
    progress: bool = True,
    command: list[str] | None = None,
) -> PairRun:
    """Train projectors aligning ``vision`` and ``text`` on ``probe``; write ``out_dir``.

    Args:
        vision, text: encoder specs (``vision_options`` / ``text_options``: ``create_encoder``
            keyword options, e.g. ``{"pooling": "mean"}``).
        probe: training probe: a spec such as ``flickr8k:train`` or a ProbeSet; must be one
            training split (:func:`check_training_probe`).
        config: the :class:`~alignkit.projectors.TrainConfig`.
        out_dir: the run folder (see the module docstring for refuse / resume / overwrite).
        val: validation probe for early stopping, disjoint from ``probe`` by id and image content.
        n: train on a seeded subsample of this many probe rows (``val_n``: of validation rows).
        tokens: token-level features (memory-mapped float16) instead of pooled ones.
        cache_only: fail (one line) when a feature set is not already cached.
        batch_size: extraction batch size (rows per encoder forward).

    Raises:
        AlignkitError: bad probes (mixed splits, overlapping validation), a missing cache entry
            with ``cache_only``, a finished ``out_dir`` without ``overwrite``, and every trainer
            error (config differing from an unfinished run's, feature widths, NaN loss).
    """
    import alignkit
    from alignkit.aligned import EncoderRecord, write_config
    from alignkit.encoders import create_encoder
    from alignkit.features import check_disjoint, extract_features, extract_tokens, paired_features
    from alignkit.probes import load_probe
    from alignkit.projectors import TrainConfig, train_projector

    if not isinstance(config, TrainConfig):
        raise AlignkitError(f"config must be a TrainConfig: got {type(config).__name__}")
    out_dir = Path(out_dir)
    opts = {vision: dict(vision_options or {}), text: dict(text_options or {})}
    train_probe = load_probe(probe) if isinstance(probe, str) else probe
    probe_spec = probe if isinstance(probe, str) else train_probe.name
    check_training_probe(train_probe, probe_spec)
    if n is not None:
        train_probe = train_probe.subsample(n)
    val_probe = None
    if val is not None:
        val_probe = load_probe(val) if isinstance(val, str) else val
        if val_n is not None:
            val_probe = val_probe.subsample(val_n)
        check_disjoint(train_probe, val_probe)
    if cache_only:
        for p in (train_probe, val_probe):
            if p is not None:
                require_cached([vision, text], p, tokens=tokens, cache=cache, options=opts)
    aside = prepare_out_dir(out_dir, overwrite=overwrite)
    run_body = {
        "kind": "train",
        "command": command,
        "status": "running",
        "started": _now(),
        "alignkit_version": alignkit.__version__,
    }
    _write_json(out_dir / RUN_FILE, run_body)

    t0 = time.perf_counter()
    encoders = {spec: create_encoder(spec, device=device, **opts[spec]) for spec in (vision, text)}
    if encoders[vision].modality != "image" or encoders[text].modality != "text":
        raise AlignkitError(
            f"--vision must be an image encoder and --text a text encoder: got {vision} "
            f"({encoders[vision].modality}) and {text} ({encoders[text].modality})"
        )

    def features(p: ProbeSet):
        kw = {"cache": cache, "progress": progress, "batch_size": batch_size}
        get = extract_tokens if tokens else extract_features
        return paired_features(
            get(encoders[vision], p, **kw), get(encoders[text], p, caption_policy="all", **kw)
        )

    train = features(train_probe)
    val_features = features(val_probe) if val_probe is not None else None
    features_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    result = train_projector(config, train, val_features, out_dir, device=device, progress=progress)
    train_s = time.perf_counter() - t1
    records = (
        EncoderRecord.of(encoders[vision], opts[vision], tokens, train.image_dim),
        EncoderRecord.of(encoders[text], opts[text], tokens, train.text_dim),
    )
    write_config(
        out_dir,
        records[0],
        records[1],
        result.config.to_dict(),  # what was used: "auto" fields resolved for the data
        extra={
            "recipe_notes": list(result.notes),
            "features": "tokens" if tokens else "pooled",
            "probe": {
                "spec": probe_spec,
                "name": train_probe.name,
                "n": len(train_probe),
                "fingerprint": train_probe.fingerprint,
            },
            "val": None
            if val_probe is None
            else {
                "name": val_probe.name,
                "n": len(val_probe),
                "fingerprint": val_probe.fingerprint,
            },
            "best_step": result.best_step,
            "steps": result.steps,
            "stopped_early": result.stopped_early,
            "val_metrics": result.metrics,
            "parameters": result.model.num_parameters(),
        },
    )
    run_body.update(
        status="done",
        finished=_now(),
        features_s=round(features_s, 2),
        train_s=round(train_s, 2),
    )
    _write_json(out_dir / RUN_FILE, run_body)
    finish_out_dir(aside)
    return PairRun(out_dir, result, features_s, train_s)


__all__ = ["PairRun", "check_training_probe", "prepare_out_dir", "require_cached", "train_pair"]
