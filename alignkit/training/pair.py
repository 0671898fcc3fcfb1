"""Train the projectors of one vision x text encoder pair on a probe, into a run folder.

:func:`train_pair` is what ``alignkit train`` runs, as a list of stages: check the inputs (the
probes, split-checked; the encoders; the folder; an unfinished run's checkpoint against this
run), all before any feature extraction; get the features through the cache (pooled, or
token-level with ``tokens=True``; text with every caption); train with
:func:`alignkit.training.train_projector`; and write a run folder that
:func:`alignkit.load_aligned` reads::

    run.json                 the command, status (running / done / failed / interrupted), times,
                             the batch size and epochs used, alignkit version
    config.json              encoders (spec, options, weights identity), TrainConfig as used,
                             probes, validation metrics (alignkit.aligned)
    projector.safetensors    final weights; checkpoint.safetensors, best.safetensors,
                             history.csv, history.png (the trainer's files)
    fits/text/               an encoder fitted on the texts it is given (``tfidf:``): its fit on
                             every caption of the training probe (whatever the caption policy),
                             made before any feature key and used for the validation rows too
                             (:func:`alignkit.training.folder.load_fit` reads it back)

Run folders (:mod:`alignkit.training.folder`): a new folder is created; an unfinished run
resumes from its last checkpoint when everything it was computed from is the same (else it is
refused before any extraction, listing what differs); a finished run is refused unless
``overwrite=True``, which moves the old folder aside and deletes it only once the new run is
done (a new run that fails puts it back).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignkit.errors import AlignkitError
from alignkit.training.checkpoint import CHECKPOINT, read_meta, resume_differences
from alignkit.training.folder import (
    RUN_FILE,
    check_out_dir,
    end_out_dir,
    now,
    prepare_out_dir,
    save_fits,
    write_run_file,
)
from alignkit.training.inputs import (
    check_training_probe,
    check_validation_probe,
    load_split_probe,
    provenance,
    require_cached,
)

if TYPE_CHECKING:
    from alignkit.encoders.base import Encoder
    from alignkit.probes.base import ProbeSet
    from alignkit.training import TrainConfig, TrainResult
    from alignkit.training.recipe import RecipeNote

log = logging.getLogger(__name__)

__all__ = ["PairRun", "check_training_probe", "require_cached", "train_pair"]


@dataclass(frozen=True)
class PairRun:
    """What :func:`train_pair` returns: the folder, the trainer's result, timings (s), and the
    TrainConfig actually used (the batch no larger than the training set)."""

    out_dir: Path
    result: TrainResult
    features_s: float
    train_s: float
    config: TrainConfig | None = None


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
    extract_batch: int = 64,
    store_dtype: str = "float32",
    skip_bad: bool = False,
    val_test_split: bool = False,
    class_names: str | None = None,
    columns: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: list[str] | None = None,
) -> PairRun:
    """Train projectors aligning ``vision`` and ``text`` on ``probe``; write ``out_dir``.

    Args:
        vision, text: encoder specs (``vision_options`` / ``text_options``: ``create_encoder``
            keyword options, e.g. ``{"pooling": "mean"}``).
        probe: training probe: a spec such as ``flickr8k:train`` (or ``PATH:train`` for a
            manifest with a ``split`` column) or a ProbeSet; must be one training split.
        config: the :class:`~alignkit.training.TrainConfig`; a ``batch_size`` larger than the
            training set is lowered to its size (recorded as used, with a warning).
        out_dir: the run folder (see the module docstring for refuse / resume / overwrite).
        val: validation probe for early stopping, disjoint from ``probe`` by id and image
            content; not a test split unless ``val_test_split``.
        n: train on a seeded subsample of this many probe rows (``val_n``: of validation rows;
            None or 0: all rows).
        tokens: token-level features (memory-mapped float16) instead of pooled ones.
        cache_only: fail (one line) when a feature set is not already cached.
        extract_batch: rows per encoder forward during extraction.
        store_dtype: pooled features stored ``float32`` or ``float16`` in the cache (see
            :mod:`alignkit.features.store`); training reads either memory-mapped and upcasts a
            batch at a time. Token features are float16 whatever this says.
        skip_bad: drop unreadable probe rows instead of failing.
        class_names: class names (a file or ``"imagenet"``) of a labelled manifest without
            captions, which then trains on its template captions.
        columns: an HF dataset probe's column names (``image_column``, ``caption_columns``,
            ``id_column``, ``label_column``; unset ones detected); other probes ignore them.

    Raises:
        AlignkitError: bad probes (mixed splits, a test split as val, overlapping validation),
            an encoder of the wrong modality or without token features, a missing cache entry
            with ``cache_only``, a finished ``out_dir`` without ``overwrite``, an unfinished
            run in ``out_dir`` computed from other settings or inputs, and every trainer error.
    """
    from alignkit.training import TrainConfig

    if not isinstance(config, TrainConfig):
        raise AlignkitError(f"config must be a TrainConfig: got {type(config).__name__}")
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite=overwrite)  # cheap refusals first
    opts = {vision: dict(vision_options or {}), text: dict(text_options or {})}
    train_probe, probe_spec, val_probe = _probes(
        probe, val, n, val_n, skip_bad, val_test_split, progress, class_names, columns
    )
    encoders = _encoders(vision, text, opts, device, tokens, train_probe)
    if cache_only:
        for p in (train_probe, val_probe):
            if p is not None:
                require_cached(
                    list(encoders), p, tokens=tokens, cache=cache, options=opts,
                    store_dtype=store_dtype,
                )  # fmt: skip
    config, notes = _fit_recipe(config, len(train_probe))
    record = provenance(encoders, opts, train_probe, val_probe, tokens, store_dtype)
    _check_resume(out_dir, overwrite, config, record)
    for note in notes:
        (log.warning if note.warning else log.info)("%s", note.message)
    run_body = _run_body(command, config)
    main, aside = _prepare(out_dir, overwrite, run_body)  # under torchrun: rank 0 alone
    try:
        if main:
            save_fits(out_dir, encoders)  # before training: a resumed run finds it too
        t0 = time.perf_counter()
        get = dict(cache=cache, progress=progress, extract_batch=extract_batch, tokens=tokens)
        get.update(skip_bad=skip_bad, store_dtype=store_dtype)
        skipped: dict[str, Any] = {}  # probe role -> the rows skipped (skip_bad)
        train = _features(encoders, train_probe, skipped.setdefault("train", []), **get)
        val_features = (
            _features(encoders, val_probe, skipped.setdefault("val", []), **get)
            if val_probe is not None
            else None
        )
        _note_skipped(run_body, skipped)
        from alignkit.features.paired import ids_apart

        val_features = ids_apart(train, val_features)  # disjoint sets whose keys coincide
        features_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        from alignkit.training import train_projector

        result = train_projector(
            config, train, val_features, out_dir, device=device, progress=progress,
            provenance=record, _logged_notes=tuple(note.message for note in notes),
        )  # fmt: skip
        train_s = time.perf_counter() - t1
        if main:
            _write_config(
                out_dir, encoders, opts, tokens, train, config, result, record, probe_spec, notes
            )
    except BaseException as exc:
        if main:
            end_out_dir(out_dir, aside, run_body, exc)
        raise
    run_body.update(features_s=round(features_s, 2), train_s=round(train_s, 2))
    run_body.update(steps=result.steps, stopped_early=result.stopped_early)
    if main:
        end_out_dir(out_dir, aside, run_body, None)
    return PairRun(out_dir, result, features_s, train_s, config)


# -- stages ---------------------------------------------------------------------------------------
def _probes(
    probe: str | ProbeSet,
    val: str | ProbeSet | None,
    n: int | None,
    val_n: int | None,
    skip_bad: bool,
    val_test_split: bool,
    progress: bool,
    class_names: str | None = None,
    columns: Mapping[str, Any] | None = None,
) -> tuple[ProbeSet, str, ProbeSet | None]:
    """The training probe (split-checked, subsampled), its spec, and the validation probe
    (split-checked, subsampled, disjoint from the training rows)."""
    from alignkit.features import check_disjoint
    from alignkit.probes.containers import check_columns_apply

    check_columns_apply([s for s in (probe, val) if isinstance(s, str)], columns or {})
    load = dict(skip_bad=skip_bad, progress=progress, class_names=class_names, columns=columns)
    train_probe = load_split_probe(probe, **load) if isinstance(probe, str) else probe
    probe_spec = probe if isinstance(probe, str) else train_probe.name
    check_training_probe(train_probe, probe_spec)
    if n:
        train_probe = train_probe.subsample(n)
    if val is None:
        return train_probe, probe_spec, None
    val_probe = load_split_probe(val, **load) if isinstance(val, str) else val
    check_validation_probe(
        val_probe, val if isinstance(val, str) else val_probe.name, allow_test=val_test_split
    )
    if val_n:
        val_probe = val_probe.subsample(val_n)
    check_disjoint(train_probe, val_probe)
    return train_probe, probe_spec, val_probe


def _encoders(
    vision: str,
    text: str,
    opts: dict[str, dict[str, Any]],
    device: str,
    tokens: bool,
    train_probe: ProbeSet,
) -> tuple[Encoder, Encoder]:
    """Both encoders (weights read, no model run), checked for modality and token features; an
    encoder fitted on the texts it is given is fitted on every caption of ``train_probe`` (so
    the validation rows are encoded by the training fit, and its weights identity, which enters
    every feature key, names the training captions)."""
    from alignkit.encoders import create_encoder
    from alignkit.encoders.base import check_trainable
    from alignkit.features.extract import fit_to_probe

    pair = tuple(create_encoder(s, device=device, **opts[s]) for s in (vision, text))
    check_trainable(pair)
    if pair[0].modality != "image" or pair[1].modality != "text":
        raise AlignkitError(
            f"vision must be an image encoder and text must be a text encoder: got {vision} "
            f"({pair[0].modality}) and {text} ({pair[1].modality})"
        )
    if tokens:
        lacking = [enc.name for enc in pair if not getattr(enc, "has_tokens", False)]
        if lacking:
            raise AlignkitError(
                f"tokens=True needs token-level features, which {' and '.join(lacking)} "
                "does not have (token features exist for CNNs, timm and hf image models, and "
                "hf / sentence-transformers text models); leave out tokens for pooled features"
            )
    for enc in pair:
        fit_to_probe(enc, train_probe)  # a no-op but for needs_fit encoders (tfidf:)
    return pair  # type: ignore[return-value]


def _prepare(out_dir: Path, overwrite: bool, run_body: dict[str, Any]) -> tuple[bool, Path | None]:
    """(whether this process writes the run folder, the folder an overwritten run was moved to).
    Under torchrun rank 0 alone prepares ``out_dir`` and writes run.json while the other ranks
    wait (two ranks moving an earlier run aside would each move the other's); a rank 0 that
    failed stops every rank."""
    from alignkit.training.distributed import is_main_rank, wait_for_every_rank

    main, aside, error = is_main_rank(), None, None
    if main:
        try:
            aside = prepare_out_dir(out_dir, overwrite=overwrite)
            write_run_file(out_dir, run_body)
        except Exception as exc:  # the other ranks must not wait for it
            error = exc
    wait_for_every_rank()
    if error is not None:
        raise error
    if not (out_dir / RUN_FILE).is_file():
        raise AlignkitError(f"rank 0 could not prepare the run folder {out_dir}: see its error")
    return main, aside


def _fit_recipe(config: TrainConfig, n_images: int) -> tuple[TrainConfig, list[RecipeNote]]:
    """The recipe as it will run on ``n_images`` ("auto" fields resolved by
    :func:`alignkit.training.recipe.resolve_recipe`, which refuses a given batch larger than the
    data), and its notes: what "auto" became, and warnings (data or a schedule too small to learn
    anything)."""
    from alignkit.training.recipe import resolve_recipe

    return resolve_recipe(config, n_images)


def _check_resume(
    out_dir: Path, overwrite: bool, config: TrainConfig, record: dict[str, Any]
) -> None:
    """Refuse, before any extraction, to resume an unfinished run computed from other settings
    or inputs than this one (the trainer checks again, with the training rows, at its start)."""
    if overwrite:
        return
    meta = read_meta(out_dir / CHECKPOINT)
    if meta is None:
        return
    diffs = resume_differences(meta, {"config": config.to_dict(), "provenance": record})
    if diffs:
        raise AlignkitError(
            f"{out_dir} holds an unfinished run {' and '.join(diffs)}: rerun with that run's "
            "settings to resume it, pass overwrite=True to start over, or pick another out_dir"
        )


def _run_body(command: list[str] | None, config: TrainConfig) -> dict[str, Any]:
    import alignkit

    return {
        "kind": "train",
        "command": command,
        "status": "running",
        "started": now(),
        "batch_size": config.batch_size,
        "epochs": config.epochs,
        "alignkit_version": alignkit.__version__,
    }


def _features(
    encoders: tuple[Encoder, Encoder],
    probe: ProbeSet,
    skipped: list[dict[str, str]],
    *,
    cache: Any,
    progress: bool,
    extract_batch: int,
    tokens: bool,
    skip_bad: bool = False,
    store_dtype: str = "float32",
):
    """Paired features of ``probe`` (text with every caption), through the cache (pooled
    features come back memory-mapped from it: training reads one batch at a time); the rows
    whose images extraction skipped (``skip_bad``, pooled features) are left out of both sides;
    they and the rows the probe dropped at load are added to ``skipped``."""
    from alignkit.features import extract_features, extract_tokens, paired_features
    from alignkit.features.skipped import without_skipped

    kw: dict[str, Any] = {"cache": cache, "progress": progress, "batch_size": extract_batch}
    kw["distributed"] = True  # under torchrun the ranks split the rows (a group for the call)
    if tokens:  # with a cache (without one, every rank extracts every row)
        return paired_features(
            extract_tokens(encoders[0], probe, **kw),
            extract_tokens(encoders[1], probe, caption_policy="all", **kw),
        )
    kw["store_dtype"] = store_dtype
    image = extract_features(encoders[0], probe, skip_bad=skip_bad, **kw)
    text = extract_features(encoders[1], probe, caption_policy="all", **kw)
    kept, both = without_skipped(probe, {"image": image, "text": text})
    skipped.extend(kept.dropped)  # at load (a small probe's images are checked there) and later
    return paired_features(both["image"], both["text"])


def _note_skipped(run_body: dict[str, Any], skipped: dict[str, list[dict[str, str]]]) -> None:
    """run.json's ``skipped_rows``: per probe role, the count and the first rows skipped at load
    or by extraction (nothing when none)."""
    from alignkit.features.skipped import skipped_note

    if any(skipped.values()):
        run_body["skipped_rows"] = {role: skipped_note(rows) for role, rows in skipped.items()}


def _write_config(
    out_dir: Path,
    encoders: tuple[Encoder, Encoder],
    opts: dict[str, dict[str, Any]],
    tokens: bool,
    train: Any,
    config: TrainConfig,
    result: TrainResult,
    record: dict[str, Any],
    probe_spec: str,
    notes: list[RecipeNote],
) -> None:
    """config.json: what :func:`alignkit.load_aligned` needs, and what the run was computed
    from (the recipe as used and what "auto" became, the probes)."""
    from alignkit.aligned import EncoderRecord, write_config

    vision, text = encoders
    write_config(
        out_dir,
        EncoderRecord.of(vision, opts[vision.name], tokens, train.image_dim),
        EncoderRecord.of(text, opts[text.name], tokens, train.text_dim),
        config.to_dict(),
        extra={
            "features": "tokens" if tokens else "pooled",
            "recipe_notes": [note.message for note in notes],
            "probe": {"spec": probe_spec, **_probe_record(record["train"])},
            "val": None if record["val"] is None else _probe_record(record["val"]),
            "best_step": result.best_step,
            "steps": result.steps,
            "stopped_early": result.stopped_early,
            "val_metrics": result.metrics,
            "parameters": result.model.num_parameters(),
        },
    )


def _probe_record(entry: dict[str, Any]) -> dict[str, Any]:
    return {"n": entry["rows"], "fingerprint": entry["fingerprint"], "name": entry.get("name")}
