"""Train a projector pair on cached frozen features: one process, or many under torchrun.

:func:`train_projector` runs AdamW with a linear warmup and a cosine decay, clips the gradient
norm, uses autocast (bf16/fp16) on CUDA only, validates with retrieval recall, stops early,
checkpoints to safetensors and resumes exactly. A run stopped at any point and resumed gives
bitwise the final weights of an uninterrupted run (same machine, same number of threads): batch
order and caption sampling are derived from (seed, epoch) and (seed, step), and the checkpoint
holds the weights, AdamW's moments, the grad scaler, torch's RNG states and the step.

The loop reads as a list of stages, each a function: :func:`_setup` (model, optimizer, resume),
:func:`_step` (one optimizer step), :func:`_validate_row` (validation and the best weights),
:func:`_write_checkpoint`, and :func:`_finish` (the final model and history).

Files in ``out_dir`` (rank 0 writes them, atomically)::

    checkpoint.safetensors  last state: weights, optimizer, RNG, step (+ config, history)
    best.safetensors        weights of the best validation so far
    projector.safetensors   the final model (best weights when validated), for load_model()
    history.csv, history.png  one row per validation: step, lr, losses, recalls
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from alignkit._device import resolve_device
from alignkit.errors import AlignkitError
from alignkit.training.build import ModelSpec, build_model, save_model
from alignkit.training.checkpoint import (
    BEST,
    CHECKPOINT,
    FINAL,
    load_optimizer,
    optimizer_tensors,
    read_checkpoint,
    resume_differences,
    save_checkpoint,
)
from alignkit.training.config import TrainConfig
from alignkit.training.data import PairedFeatures, TokenFeatures, make_batch
from alignkit.training.distributed import DistContext, batch_loss
from alignkit.training.history import plot_history, write_history
from alignkit.training.modules import AlignmentModel
from alignkit.training.recipe import resolve_recipe
from alignkit.training.schedule import (
    adamw,
    batch_rows,
    generator,
    learning_rate,
    precision,
    steps_per_epoch,
)
from alignkit.training.validation import better, embed, retrieval_recall, validate

__all__ = [
    "TrainResult",
    "train_projector",
    "retrieval_recall",
    "plot_history",
    "embed",
    "steps_per_epoch",
    "batch_loss",
    "learning_rate",
]

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run returns.

    model      the trained AlignmentModel (best validation weights when validated), eval mode
    history    one row per validation: step, epoch, lr, train_loss, logit_scale, recalls (%), ...
    best_step  the step (1-based count of optimizer steps) of the best validation, or None
    metrics    the validation metrics at ``best_step`` (the last ones without early stopping)
    steps      optimizer steps taken; ``stopped_early`` whether patience ran out
    batch_size images per optimizer step actually used (the config's, or the training set's size
               when that is smaller); ``epochs`` the epochs the schedule spans
    """

    model: AlignmentModel
    config: TrainConfig
    history: pd.DataFrame
    best_step: int | None
    metrics: dict[str, float]
    steps: int
    stopped_early: bool
    out_dir: Path | None = None
    spec: ModelSpec | None = field(default=None, repr=False)
    batch_size: int | None = None
    epochs: int | None = None
    notes: tuple[str, ...] = ()  # what the recipe chose for "auto" fields, and its warnings


def rows_record(data: PairedFeatures) -> dict[str, Any]:
    """Which rows a feature set holds (counts and a hash of the image ids), for resume checks."""
    return {
        "n_images": data.n_images,
        "n_texts": data.n_texts,
        "ids_sha1": hashlib.sha1("\n".join(data.image_ids).encode()).hexdigest(),
    }


# ------------------------------------------------------------------------------------------------
# checks and set-up


def _check_inputs(config: TrainConfig, train: PairedFeatures, val: PairedFeatures | None) -> None:
    if not isinstance(config, TrainConfig):
        raise AlignkitError(f"config must be a TrainConfig: got {type(config).__name__}")
    if not isinstance(train, PairedFeatures):
        raise AlignkitError(f"train must be PairedFeatures: got {type(train).__name__}")
    if train.n_images < 2:
        raise AlignkitError(
            f"train needs at least 2 images for a contrastive loss: got {train.n_images}"
        )
    if val is None:
        return
    if not isinstance(val, PairedFeatures):
        raise AlignkitError(f"val must be PairedFeatures or None: got {type(val).__name__}")
    ModelSpec.of(val).check_matches(ModelSpec.of(train), "the training features (val vs train)")
    overlap = set(train.image_ids).intersection(val.image_ids)
    if overlap:
        raise AlignkitError(
            f"the validation set shares {len(overlap)} image ids with the training set (e.g. "
            f"{sorted(overlap)[0]!r}): that would inflate the results; use disjoint splits"
        )


@dataclass
class _Run:
    """One run's fixed plan (what it trains, where, for how long) and its state (what a
    checkpoint holds), passed from stage to stage."""

    config: TrainConfig
    train: PairedFeatures
    val: PairedFeatures | None
    out_dir: Path | None
    device: torch.device
    ctx: DistContext
    spec: ModelSpec
    record: dict[str, Any]  # what the trajectory depends on; a resume must match it
    model: AlignmentModel
    forward: nn.Module  # the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    dtype: torch.dtype
    amp_dtype: torch.dtype | None
    spe: int  # optimizer steps per epoch
    total: int
    eval_every: int
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(
        default_factory=lambda: {"metric": None, "step": None, "metrics": {}, "bad": 0}
    )
    best_state: dict[str, Tensor] | None = None
    finished: bool = False
    losses: list[float] = field(default_factory=list)
    checkpointed: bool = False  # whether out_dir holds a checkpoint of this run

    @property
    def checkpoint(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / CHECKPOINT


def _setup(
    config: TrainConfig,
    train: PairedFeatures,
    val: PairedFeatures | None,
    out_dir: Path | None,
    device: torch.device,
    ctx: DistContext,
    resume: bool,
    provenance: dict[str, Any] | None,
) -> _Run:
    """Stage 1: the model, the optimizer and the schedule; then the checkpoint, when resuming."""
    spec = ModelSpec.of(train)
    dtype, amp_dtype = precision(config, device)
    torch.manual_seed(config.seed)
    model = build_model(config, spec).to(device, dtype)
    spe = steps_per_epoch(train.n_images, config.batch_size)
    record = {
        "config": config.to_dict(),
        "data": rows_record(train),
        "val_data": None if val is None else rows_record(val),
        "provenance": provenance or {},
    }
    if config.dropout > 0:  # each rank draws its own dropout stream: the world size matters
        record["world"] = ctx.world
    run = _Run(
        config, train, val, out_dir, device, ctx, spec, record, model, model,
        adamw(model, config, device),
        torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16),
        dtype, amp_dtype, spe, config.epochs * spe, config.eval_every or spe,
    )  # fmt: skip
    torch.manual_seed(config.seed * 7919 + 1 + ctx.rank)  # dropout's stream, per rank
    if run.checkpoint is not None and resume and run.checkpoint.exists():
        _resume(run)
    if ctx.active and not run.finished:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        run.forward = DistributedDataParallel(model, device_ids=ids)
    return run


def _resume(run: _Run) -> None:
    """Load ``run.checkpoint`` into ``run`` after checking it records the same run."""
    tensors, meta = read_checkpoint(run.checkpoint)
    diffs = resume_differences(meta, run.record)
    if diffs:
        raise AlignkitError(
            f"{run.out_dir} holds a run {' and '.join(diffs)}; use that run's settings, another "
            "out_dir, or resume=False to start over"
        )
    ModelSpec(**meta["spec"]).check_matches(run.spec, f"the checkpoint in {run.out_dir}")
    device, dtype = run.device, run.dtype
    run.model.load_state_dict(
        {k[6:]: v.to(device, dtype) for k, v in tensors.items() if k.startswith("model.")}
    )
    load_optimizer(  # AdamW keeps its step counts on the CPU
        run.optimizer,
        {
            k: v if k.endswith(".step") else v.to(device)
            for k, v in tensors.items()
            if k.startswith("optim.")
        },
    )
    if "scaler" in meta:
        run.scaler.load_state_dict(meta["scaler"])
    rank = run.ctx.rank if f"rng.cpu.{run.ctx.rank}" in tensors else 0  # same seed stream if
    torch.set_rng_state(tensors[f"rng.cpu.{rank}"])  # the world changed (not bitwise then)
    if device.type == "cuda" and f"rng.cuda.{rank}" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng.cuda.{rank}"], device)
    run.step, run.history, run.best = meta["step"], meta["history"], meta["best"]
    run.finished, run.checkpointed = meta["finished"], True
    if (run.out_dir / BEST).exists() and run.best["step"] is not None:
        best_tensors, _ = read_checkpoint(run.out_dir / BEST)
        run.best_state = {k[6:]: v for k, v in best_tensors.items() if k.startswith("model.")}
    logger.info("resuming %s at step %d of %d", run.out_dir, run.step, run.total)


# ------------------------------------------------------------------------------------------------
# the step


def _step(run: _Run) -> tuple[float, float]:
    """Stage 2: one optimizer step on global batch ``run.step``; returns (loss, lr)."""
    config = run.config
    rows, epoch, b = batch_rows(config, run.train.n_images, run.step)
    batch = make_batch(run.train, rows, config.captions, generator(config.seed, 2, run.step))
    lr = learning_rate(config, run.step, run.total)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    local, value, inputs = batch_loss(
        run.model, run.forward, batch, run.ctx, run.device, run.dtype, run.amp_dtype
    )
    if not math.isfinite(value):
        raise _nonfinite_loss(run, value, rows, epoch, b, inputs)
    run.scaler.scale(local * run.ctx.world).backward()  # DDP averages: x world gives the sum
    if config.clip_grad is not None:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), config.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.model.loss.clamp_()
    run.losses.append(value)
    run.step += 1
    return value, lr


def _nonfinite_loss(
    run: _Run, value: float, rows: Tensor, epoch: int, b: int, inputs: tuple[Any, Any]
) -> AlignkitError:
    """The one-line error for a NaN/Inf loss: where, the likely cause, and what was kept."""
    bad_input = not all(
        bool(torch.isfinite(t.tokens if isinstance(t, TokenFeatures) else t).all()) for t in inputs
    )
    cause = (
        "; the batch's features hold NaN/Inf: rebuild the feature cache"
        if bad_input
        else "; lower lr or set clip_grad"
    )
    if run.checkpointed:
        kept = f"; the last checkpoint (step {run.history[-1]['step']}) is in {run.out_dir}"
    else:
        kept = "; no checkpoint was written before it"
    return AlignkitError(
        f"the loss became {value} at step {run.step + 1} (epoch {epoch + 1}, batch {b + 1} of "
        f"{run.spe}, image rows {int(rows[0])}..{int(rows[-1])}){cause}{kept}"
    )


# ------------------------------------------------------------------------------------------------
# validation, checkpoint, history


def _validate_row(run: _Run, lr: float, t0: float) -> dict[str, Any]:
    """Stage 3: the history row of this step: train loss since the last row, validation metrics,
    and the best weights so far (written to best.safetensors when they improve)."""
    row: dict[str, Any] = {
        "step": run.step,
        "epoch": (run.step - 1) // run.spe + 1,
        "lr": lr,
        "train_loss": sum(run.losses) / len(run.losses),
        "logit_scale": run.model.loss.logit_scale(),
    }
    if run.model.loss.__class__.__name__ == "SigLipLoss":
        row["logit_bias"] = float(run.model.loss.bias.detach())
    run.losses = []
    if run.val is not None:
        metrics = validate(run.model, run.val, run.device, run.dtype)
        row.update(metrics)
        m = metrics[run.config.early_stop_metric]
        if better(run.config.early_stop_metric, m, run.best["metric"]):
            run.best = {"metric": m, "step": run.step, "metrics": metrics, "bad": 0}
            state = run.model.state_dict()
            run.best_state = {k: v.detach().cpu().clone() for k, v in state.items()}
            if run.out_dir is not None and run.ctx.rank == 0:
                save_checkpoint(
                    run.out_dir / BEST,
                    {f"model.{k}": v for k, v in run.best_state.items()},
                    {"step": run.step},
                )
        else:
            run.best["bad"] += 1
    row["elapsed_s"] = time.perf_counter() - t0
    return row


def _write_checkpoint(run: _Run) -> None:
    """Stage 4: the whole state (rank 0 writes every rank's dropout RNG state), then history.csv."""
    if run.checkpoint is None:
        return
    rng = {"cpu": torch.get_rng_state()}
    if run.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(run.device)
    states: list[Any] = [rng]
    if run.ctx.active:
        states = [None] * run.ctx.world
        torch.distributed.all_gather_object(states, rng)
    if run.ctx.rank == 0:
        state = run.model.state_dict()
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in state.items()}
        tensors.update(optimizer_tensors(run.optimizer))
        for r, s in enumerate(states):
            tensors.update({f"rng.{kind}.{r}": t.cpu() for kind, t in s.items()})
        meta = {
            **run.record,
            "spec": run.spec.__dict__,
            "step": run.step,
            "history": run.history,
            "best": run.best,
            "finished": run.finished,
        }
        if run.scaler.is_enabled():
            meta["scaler"] = run.scaler.state_dict()
        save_checkpoint(run.checkpoint, tensors, meta)
        write_history(run.out_dir, pd.DataFrame(run.history))
    run.checkpointed = True
    run.ctx.barrier()


def _finish(run: _Run) -> TrainResult:
    """Stage 5: the best weights back in the model, projector.safetensors, the history figure."""
    if run.best_state is not None:
        run.model.load_state_dict(
            {k: v.to(run.device, run.dtype) for k, v in run.best_state.items()}
        )
    run.model.eval()
    frame = pd.DataFrame(run.history)
    best = run.best
    if run.out_dir is not None and run.ctx.rank == 0:
        extra = {"best_step": json.dumps(best["step"])}
        save_model(run.out_dir / FINAL, run.model, run.config, run.spec, extra=extra)
        write_history(run.out_dir, frame, figure=True)
    last = int(run.history[-1]["step"]) if run.history else run.step
    return TrainResult(
        run.model,
        run.config,
        frame,
        best["step"],
        dict(best["metrics"]) if best["step"] is not None else {},
        last,
        bool(run.history) and last < run.total,
        run.out_dir,
        run.spec,
        batch_size=min(run.config.batch_size, run.train.n_images),
        epochs=run.config.epochs,
    )


# ------------------------------------------------------------------------------------------------
# the loop


def train_projector(
    config: TrainConfig,
    train: PairedFeatures,
    val: PairedFeatures | None = None,
    out_dir: str | Path | None = None,
    *,
    device: str | torch.device = "auto",
    progress: bool = True,
    resume: bool = True,
    provenance: dict[str, Any] | None = None,
    _logged_notes: tuple[str, ...] = (),
    _stop_at_step: int | None = None,
) -> TrainResult:
    """Train the projector pair ``config`` describes on ``train``; validate on ``val``.

    ``train`` / ``val``: :class:`PairedFeatures` (pooled or token-level; val's image ids must be
    disjoint from train's). ``out_dir``: where checkpoints, history and the final
    ``projector.safetensors`` go (None: nothing is written and nothing resumes). ``resume``:
    continue from ``out_dir/checkpoint.safetensors`` when it exists (a finished run is returned as
    is); False starts over. ``provenance``: a JSON-able record of where the features came from
    (encoders, cache keys, probes); the checkpoint keeps it and a resume with another record is
    refused. Under torchrun (``WORLD_SIZE`` > 1) the process group is joined or created (and then
    destroyed), each rank takes its slice of every global batch of ``config.batch_size`` images,
    and the loss sees the whole global batch (see :mod:`alignkit.training.distributed`).

    Raises :class:`AlignkitError` for bad input, for a checkpoint whose config, rows, provenance
    or feature widths differ (listing the fields), and when the loss becomes NaN/Inf (naming the
    step and batch, and the last checkpoint if one was written).
    """
    _check_inputs(config, train, val)
    config, notes = resolve_recipe(config, train.n_images)  # "auto" fields fit the data
    for note in notes:  # once: train_pair logs its notes before extraction (_logged_notes)
        if note.message not in _logged_notes:
            (logger.warning if note.warning else logger.info)("%s", note.message)
    device = resolve_device(device)
    ctx = DistContext.setup(device.type)
    try:
        if ctx.active and device.type == "cuda":
            device = torch.device("cuda", ctx.local_rank)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the caller's RNG state is left alone
            out = None if out_dir is None else Path(out_dir)
            run = _setup(config, train, val, out, device, ctx, resume, provenance)
            _loop(run, progress, _stop_at_step)
            return replace(_finish(run), notes=tuple(n.message for n in notes))
    finally:
        ctx.close()


class _SimulatedStop(Exception):
    """Raised by the test hook ``_stop_at_step``: the run ends as if killed there."""


def _loop(run: _Run, progress: bool, stop_at: int | None) -> None:
    """Steps until the schedule ends or patience runs out; validate and checkpoint every
    ``eval_every`` steps and at the end."""
    bar = None
    if progress and run.ctx.rank == 0 and not run.finished:
        from tqdm.auto import tqdm

        bar = tqdm(total=run.total, initial=run.step, desc="train", unit="step", leave=False)
    t0 = time.perf_counter()
    run.model.train()
    try:
        while run.step < run.total and not run.finished:
            value, lr = _step(run)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
            if stop_at is not None and run.step == stop_at:
                raise _SimulatedStop
            if run.step % run.eval_every == 0 or run.step == run.total:
                run.history.append(_validate_row(run, lr, t0))
                patience = run.config.patience
                stop = patience is not None and run.best["bad"] >= patience
                run.finished = stop or run.step == run.total
                _write_checkpoint(run)
                if stop:
                    logger.info(
                        "early stop at step %d: no better %s in %d validations",
                        run.step,
                        run.config.early_stop_metric,
                        patience,
                    )
    finally:
        if bar is not None:
            bar.close()
