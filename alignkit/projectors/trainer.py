"""Train a projector pair on cached frozen features: one process, or many under torchrun.

:func:`train_projector` runs AdamW with a linear warmup and a cosine decay, clips the gradient
norm, uses autocast (bf16/fp16) on CUDA only, validates with retrieval recall, stops early,
checkpoints to safetensors and resumes exactly. A run stopped at any point and resumed gives
bitwise the final weights of an uninterrupted run (same machine, same number of threads): batch
order and caption sampling are derived from (seed, epoch) and (seed, step), and the checkpoint
holds the weights, AdamW's moments, the grad scaler, torch's RNG states and the step.

Files in ``out_dir`` (rank 0 writes them, atomically)::

    checkpoint.safetensors  last state: weights, optimizer, RNG, step (+ config, history)
    best.safetensors        weights of the best validation so far
    projector.safetensors   the final model (best weights when validated), for load_model()
    history.csv, history.png  one row per validation: step, lr, losses, recalls
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from alignkit._device import resolve_device
from alignkit.errors import AlignkitError
from alignkit.projectors.build import ModelSpec, build_model, save_model
from alignkit.projectors.config import TrainConfig
from alignkit.projectors.data import (
    Batch,
    PairedFeatures,
    TokenFeatures,
    make_batch,
    slice_features,
    to_device,
)
from alignkit.projectors.distributed import DistContext, gather_rows, split_bounds
from alignkit.projectors.modules import AlignmentModel
from alignkit.projectors.recipe import resolve_recipe

__all__ = ["TrainResult", "train_projector", "retrieval_recall", "plot_history", "embed"]

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
BEST = "best.safetensors"
FINAL = "projector.safetensors"
HISTORY = "history.csv"
FIGURE = "history.png"
RECALL_KS = (1, 5, 10)


@dataclass
class TrainResult:
    """What a training run returns.

    model      the trained AlignmentModel (best validation weights when validated), eval mode
    history    one row per validation: step, epoch, lr, train_loss, logit_scale, recalls (%), ...
    best_step  the step (1-based count of optimizer steps) of the best validation, or None
    metrics    the validation metrics at ``best_step`` (the last ones without early stopping)
    steps      optimizer steps taken; ``stopped_early`` whether patience ran out
    config     the config actually used ("auto" fields resolved); ``notes`` what the recipe
               chose and its warnings (alignkit.projectors.recipe)
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
    notes: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------------------
# schedule, batches


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Full batches per epoch (the last, short batch is dropped; a set smaller than one batch is
    one batch)."""
    return max(1, n_images // batch_size)


def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """Linear warmup from 0 over ``round(warmup * total)`` steps, then cosine decay to 0."""
    warm = round(config.warmup * total)
    if step < warm:
        return config.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def _generator(*keys: int) -> torch.Generator:
    seed = 0
    for k in keys:  # a fixed mixing of the keys into one 63-bit seed
        seed = (seed * 1_000_003 + int(k) + 0x9E3779B9) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def batch_rows(config: TrainConfig, n_images: int, step: int) -> tuple[Tensor, int, int]:
    """(image rows of global step ``step``, epoch, batch index): a fresh permutation per epoch."""
    spe = steps_per_epoch(n_images, config.batch_size)
    epoch, b = divmod(step, spe)
    perm = torch.randperm(n_images, generator=_generator(config.seed, 1, epoch))
    rows = perm[b * config.batch_size : (b + 1) * config.batch_size]
    return torch.sort(rows).values, epoch, b  # sorted: memory-mapped reads go forward


# ------------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def embed(
    model: AlignmentModel,
    features: Tensor | TokenFeatures,
    modality: str,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int = 1024,
) -> Tensor:
    """Embed all rows of ``features`` in batches: (n, width) float32 on CPU, L2-normalised."""
    tower = model.image if modality == "image" else model.text
    n = len(features) if isinstance(features, TokenFeatures) else features.shape[0]
    out = []
    for start in range(0, n, batch_size):
        rows = torch.arange(start, min(n, start + batch_size))
        x = features.take(rows) if isinstance(features, TokenFeatures) else features[rows]
        out.append(tower(to_device(x, device, dtype)).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def retrieval_recall(
    image: Tensor, text: Tensor, text_to_image: Tensor, ks: tuple[int, ...] = RECALL_KS
) -> dict[str, float]:
    """Recall@k in % for image→text (an image is a hit when any of its captions is in its top k)
    and text→image (a caption is a hit when its image is in its top k); ties count against the
    query (pessimistic ranks: a wrong candidate scoring the same as the right one ranks first).

    image (n_images, D), text (n_texts, D) embeddings (cosine scores when L2-normalised);
    text_to_image (n_texts,). Keys ``i2t_r{k}``, ``t2i_r{k}`` and ``mean_recall`` (their mean).
    """
    image, text = image.float(), text.float()
    n_images = image.shape[0]
    i2t_rank = torch.empty(n_images, dtype=torch.long)
    t2i_rank = torch.empty(text.shape[0], dtype=torch.long)
    chunk = 1024
    for s in range(0, n_images, chunk):  # images s:e against every caption
        scores = image[s : s + chunk] @ text.T  # (c, n_texts)
        pos = text_to_image[None, :] == torch.arange(s, s + scores.shape[0])[:, None]
        best = scores.masked_fill(~pos, -math.inf).max(dim=1).values  # (c,)
        wrong = scores.masked_fill(pos, -math.inf)  # (c, n_texts): other images' captions
        i2t_rank[s : s + chunk] = (wrong >= best[:, None]).sum(dim=1)
    for s in range(0, text.shape[0], chunk):  # captions against every image
        scores = text[s : s + chunk] @ image.T  # (c, n_images)
        own = scores.gather(1, text_to_image[s : s + chunk, None])  # (c, 1)
        t2i_rank[s : s + chunk] = (scores >= own).sum(dim=1) - 1  # the own image not counted
    out = {}
    for name, rank in (("i2t", i2t_rank), ("t2i", t2i_rank)):
        for k in ks:
            out[f"{name}_r{k}"] = 100.0 * float((rank < k).double().mean())
    out["mean_recall"] = sum(out.values()) / len(out)
    return out


@torch.no_grad()
def _validate(
    model: AlignmentModel, val: PairedFeatures, device: torch.device, dtype: torch.dtype
) -> dict[str, float]:
    model.eval()
    try:
        image = embed(model, val.image, "image", device, dtype)
        text = embed(model, val.text, "text", device, dtype)
    finally:
        model.train()
    metrics = retrieval_recall(image, text, val.text_to_image)
    # the loss on the whole validation set, every caption a positive of its image
    loss_module = model.loss
    metrics["val_loss"] = float(
        loss_module(image.to(device, dtype), text.to(device, dtype), val.text_to_image.to(device))
    )
    return metrics


def _better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old if metric == "val_loss" else new > old


# ------------------------------------------------------------------------------------------------
# checkpoints


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    out = {}
    for i, state in opt.state_dict()["state"].items():
        for k, v in state.items():
            out[f"optim.{i}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    return out


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def _save_checkpoint(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from alignkit.features._io import atomic_path

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()})


def _read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # a damaged file: safetensors' own error types
        raise AlignkitError(
            f"cannot read the checkpoint {path} ({exc}); delete it or pass resume=False"
        ) from exc
    return tensors, meta


# ------------------------------------------------------------------------------------------------
# the training loop


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


def _precision(config: TrainConfig, device: torch.device) -> tuple[torch.dtype, torch.dtype | None]:
    """(parameter dtype, autocast dtype or None)."""
    if config.precision == "fp64":
        return torch.float64, None
    if device.type != "cuda":
        if config.precision in ("bf16", "fp16"):
            logger.warning(
                "precision %s asked for on CPU: training in fp32 (AMP is CUDA-only)",
                config.precision,
            )
        else:
            logger.info("training on CPU in fp32 (AMP is CUDA-only)")
        return torch.float32, None
    if config.precision == "fp32":
        return torch.float32, None
    if config.precision == "auto":
        return torch.float32, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32, torch.bfloat16 if config.precision == "bf16" else torch.float16


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _local_batch(
    batch: Batch, ctx: DistContext
) -> tuple[Any, Any, slice, slice, list[int], list[int]]:
    """This rank's image and caption rows of a global batch, their slices in the global batch,
    and every rank's row counts (for the gather)."""
    bounds = split_bounds(len(batch.image_rows), ctx.world)
    image_sizes = [bounds[r + 1] - bounds[r] for r in range(ctx.world)]
    text_slices = [batch.text_slice(bounds[r], bounds[r + 1]) for r in range(ctx.world)]
    text_sizes = [s.stop - s.start for s in text_slices]
    img_slice = slice(bounds[ctx.rank], bounds[ctx.rank + 1])
    txt_slice = text_slices[ctx.rank]
    image = slice_features(batch.image, img_slice)
    text = slice_features(batch.text, txt_slice)
    return image, text, img_slice, txt_slice, image_sizes, text_sizes


def batch_loss(
    model: AlignmentModel,
    forward: nn.Module,
    batch: Batch,
    ctx: DistContext,
    device: torch.device,
    dtype: torch.dtype,
    amp_dtype: torch.dtype | None = None,
) -> tuple[Tensor, float, tuple[Any, Any]]:
    """This rank's share of the loss of one global batch, and the global loss's value.

    ``forward`` is ``model`` or its DDP wrapper. Each rank embeds its slice of ``batch``, gathers
    every rank's embeddings (with gradients), and scores its own rows against all columns; the
    returned tensor is that share (the shares sum to the one-process loss of the batch; multiply
    by the world size before ``backward`` under DDP, which averages gradients). Also returns the
    local inputs (for error messages).
    """
    image, text, img_sl, txt_sl, image_sizes, text_sizes = _local_batch(batch, ctx)
    image, text = to_device(image, device, dtype), to_device(text, device, dtype)
    t2i = batch.text_to_image.to(device)
    if amp_dtype is None:
        autocast = torch.autocast(device.type, enabled=False)
    else:
        autocast = torch.autocast("cuda", dtype=amp_dtype)
    with autocast:
        img_emb, txt_emb = forward(image, text)  # (b, D), (m, D): this rank's rows
    img_all = gather_rows(img_emb.to(dtype), image_sizes)  # (B, D): the global batch
    txt_all = gather_rows(txt_emb.to(dtype), text_sizes)  # (M, D)
    local = model.loss(img_all, txt_all, t2i, img_sl, txt_sl)  # this rank's terms
    value = float(ctx.all_sum(local.detach()))  # the global batch's loss
    return local, value, (image, text)


def train_projector(
    config: TrainConfig,
    train: PairedFeatures,
    val: PairedFeatures | None = None,
    out_dir: str | Path | None = None,
    *,
    device: str | torch.device = "auto",
    progress: bool = True,
    resume: bool = True,
    _stop_at_step: int | None = None,
) -> TrainResult:
    """Train the projector pair ``config`` describes on ``train``; validate on ``val``.

    ``train`` / ``val``: :class:`PairedFeatures` (pooled or token-level; val's image ids must be
    disjoint from train's). ``out_dir``: where checkpoints, history and the final
    ``projector.safetensors`` go (None: nothing is written and nothing resumes). ``resume``:
    continue from ``out_dir/checkpoint.safetensors`` when it exists (a finished run is returned as
    is); False starts over. Under torchrun (``WORLD_SIZE`` > 1) the process group is joined or
    created (and then destroyed), each rank takes its slice of every global batch of
    ``config.batch_size`` images, and the loss sees the whole global batch (see
    :mod:`alignkit.projectors.distributed`).

    Raises :class:`AlignkitError` for bad input, for a checkpoint whose config or feature widths
    differ, and when the loss becomes NaN/Inf (naming the step and batch; the last checkpoint
    stays).
    """
    _check_inputs(config, train, val)
    config, notes = resolve_recipe(config, train.n_images)  # "auto" fields fit the data
    for note in notes:
        (logger.warning if note.warning else logger.info)("%s", note.message)
    device = resolve_device(device)
    ctx = DistContext.setup(device.type)
    try:
        if ctx.active and device.type == "cuda":
            device = torch.device("cuda", ctx.local_rank)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the caller's RNG state is left alone
            result = _train(
                config,
                train,
                val,
                None if out_dir is None else Path(out_dir),
                device,
                progress,
                resume,
                ctx,
                _stop_at_step,
            )
            return dataclasses.replace(result, notes=tuple(n.message for n in notes))
    finally:
        ctx.close()


class _SimulatedStop(Exception):
    """Raised by the test hook ``_stop_at_step``: the run ends as if killed there."""


def _train(
    config: TrainConfig,
    train: PairedFeatures,
    val: PairedFeatures | None,
    out_dir: Path | None,
    device: torch.device,
    progress: bool,
    resume: bool,
    ctx: DistContext,
    stop_at: int | None,
) -> TrainResult:
    spec = ModelSpec.of(train)
    dtype, amp_dtype = _precision(config, device)
    torch.manual_seed(config.seed)
    model = build_model(config, spec).to(device, dtype)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    spe = steps_per_epoch(train.n_images, config.batch_size)
    total = config.epochs * spe
    eval_every = config.eval_every or spe
    torch.manual_seed(config.seed * 7919 + 1 + ctx.rank)  # dropout's stream, per rank

    start, history, best = 0, [], {"metric": None, "step": None, "metrics": {}, "bad": 0}
    finished = False
    best_state: dict[str, Tensor] | None = None
    ckpt = out_dir / CHECKPOINT if out_dir else None
    data_rows = {  # which training rows: a resumed run must see the same ones
        "n_images": train.n_images,
        "n_texts": train.n_texts,
        "ids_sha1": hashlib.sha1("\n".join(train.image_ids).encode()).hexdigest(),
    }
    if ckpt is not None and resume and ckpt.exists():
        tensors, meta = _read_checkpoint(ckpt)
        saved = TrainConfig.from_dict(meta["config"])
        if saved != config:
            diff = "; ".join(
                f"{k}: {a!r} -> {b!r}" for k, (a, b) in saved.differences(config).items()
            )
            raise AlignkitError(
                f"{out_dir} holds a run with another config ({diff}); use that config, another "
                "out_dir, or resume=False to start over"
            )
        ModelSpec(**meta["spec"]).check_matches(spec, f"the checkpoint in {out_dir}")
        if meta.get("data", data_rows) != data_rows:
            raise AlignkitError(
                f"{out_dir} holds a run on other training rows ({meta['data']['n_images']} images, "
                f"{meta['data']['n_texts']} captions; got {data_rows['n_images']} and "
                f"{data_rows['n_texts']}, or other ids); pass the same training features, another "
                "out_dir, or resume=False"
            )
        model.load_state_dict(
            {k[6:]: v.to(device, dtype) for k, v in tensors.items() if k.startswith("model.")}
        )
        _load_optimizer(  # AdamW keeps its step counts on the CPU
            optimizer,
            {
                k: v if k.endswith(".step") else v.to(device)
                for k, v in tensors.items()
                if k.startswith("optim.")
            },
        )
        if "scaler" in meta:
            scaler.load_state_dict(meta["scaler"])
        rank = ctx.rank if f"rng.cpu.{ctx.rank}" in tensors else 0  # same seed stream if the
        torch.set_rng_state(tensors[f"rng.cpu.{rank}"])  # world size changed (not bitwise then)
        if device.type == "cuda" and f"rng.cuda.{rank}" in tensors:
            torch.cuda.set_rng_state(tensors[f"rng.cuda.{rank}"], device)
        start, history, best, finished = (
            meta["step"],
            meta["history"],
            meta["best"],
            meta["finished"],
        )
        if (out_dir / BEST).exists() and best["step"] is not None:
            best_tensors, _ = _read_checkpoint(out_dir / BEST)
            best_state = {k[6:]: v for k, v in best_tensors.items() if k.startswith("model.")}
        logger.info("resuming %s at step %d of %d", out_dir, start, total)

    ddp_model: nn.Module = model
    if ctx.active and not finished:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    def write_checkpoint(step: int, done: bool) -> None:
        if ckpt is None:
            return
        # every rank's dropout RNG state: rank 0 writes them all
        rng = {"cpu": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        states: list[Any] = [rng]
        if ctx.active:
            states = [None] * ctx.world
            torch.distributed.all_gather_object(states, rng)
        if ctx.rank == 0:
            tensors = {
                f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            }
            tensors.update(_optimizer_tensors(optimizer))
            for r, state in enumerate(states):
                tensors.update({f"rng.{kind}.{r}": t.cpu() for kind, t in state.items()})
            meta = {
                "config": config.to_dict(),
                "spec": spec.__dict__,
                "data": data_rows,
                "step": step,
                "history": history,
                "best": best,
                "finished": done,
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            }
            if meta["scaler"] is None:
                del meta["scaler"]
            _save_checkpoint(ckpt, tensors, meta)
        ctx.barrier()

    bar = None
    if progress and ctx.rank == 0 and not finished:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start, desc="train", unit="step", leave=False)
    t0 = time.perf_counter()
    losses: list[float] = []
    step = start
    model.train()
    try:
        while step < total and not finished:
            rows, epoch, b = batch_rows(config, train.n_images, step)
            batch = make_batch(train, rows, config.captions, _generator(config.seed, 2, step))
            lr = learning_rate(config, step, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            local, value, (image, text) = batch_loss(
                model, ddp_model, batch, ctx, device, dtype, amp_dtype
            )
            if not math.isfinite(value):
                bad_input = not all(
                    bool(torch.isfinite(t).all())
                    for t in (
                        image.tokens if isinstance(image, TokenFeatures) else image,
                        text.tokens if isinstance(text, TokenFeatures) else text,
                    )
                )
                raise AlignkitError(
                    f"the loss became {value} at step {step + 1} (epoch {epoch + 1}, batch "
                    f"{b + 1} of {spe}, image rows {int(rows[0])}..{int(rows[-1])})"
                    + (
                        "; the batch's features hold NaN/Inf: rebuild the feature cache"
                        if bad_input
                        else "; lower TrainConfig.lr or set TrainConfig.clip_grad"
                    )
                    + (f"; the last checkpoint is in {out_dir}" if ckpt is not None else "")
                )
            scaler.scale(local * ctx.world).backward()  # DDP averages: x world gives the sum
            if config.clip_grad is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            model.loss.clamp_()
            losses.append(value)
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
            if stop_at is not None and step == stop_at:
                raise _SimulatedStop
            if step % eval_every == 0 or step == total:
                row: dict[str, Any] = {
                    "step": step,
                    "epoch": (step - 1) // spe + 1,
                    "lr": lr,
                    "train_loss": sum(losses) / len(losses),
                    "logit_scale": model.loss.logit_scale(),
                }
                if model.loss.__class__.__name__ == "SigLipLoss":
                    row["logit_bias"] = float(model.loss.bias.detach())
                losses = []
                if val is not None:
                    metrics = _validate(model, val, device, dtype)
                    row.update(metrics)
                    m = metrics[config.early_stop_metric]
                    if _better(config.early_stop_metric, m, best["metric"]):
                        best = {"metric": m, "step": step, "metrics": metrics, "bad": 0}
                        best_state = {
                            k: v.detach().cpu().clone() for k, v in model.state_dict().items()
                        }
                        if out_dir is not None and ctx.rank == 0:
                            _save_checkpoint(
                                out_dir / BEST,
                                {f"model.{k}": v for k, v in best_state.items()},
                                {"step": step},
                            )
                    else:
                        best["bad"] += 1
                row["elapsed_s"] = time.perf_counter() - t0
                history.append(row)
                stop = config.patience is not None and best["bad"] >= config.patience
                finished = stop or step == total
                write_checkpoint(step, finished)
                if out_dir is not None and ctx.rank == 0:
                    _write_history(out_dir, pd.DataFrame(history))
                if stop:
                    logger.info(
                        "early stop at step %d: no better %s in %d validations",
                        step,
                        config.early_stop_metric,
                        config.patience,
                    )
    finally:
        if bar is not None:
            bar.close()

    if best_state is not None:
        model.load_state_dict({k: v.to(device, dtype) for k, v in best_state.items()})
    model.eval()
    frame = pd.DataFrame(history)
    metrics = dict(best["metrics"]) if best["step"] is not None else {}
    if out_dir is not None and ctx.rank == 0:
        save_model(
            out_dir / FINAL, model, config, spec, extra={"best_step": json.dumps(best["step"])}
        )
        _write_history(out_dir, frame, figure=True)
    stopped_early = bool(history) and history[-1]["step"] < total
    return TrainResult(
        model,
        config,
        frame,
        best["step"],
        metrics,
        int(history[-1]["step"]) if history else step,
        stopped_early,
        out_dir,
        spec,
    )


def _write_history(out_dir: Path, frame: pd.DataFrame, figure: bool = False) -> None:
    from alignkit.features._io import atomic_path

    with atomic_path(out_dir / HISTORY) as tmp:
        frame.to_csv(tmp, index=False)
    if figure and len(frame):
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 3.5))
        plot_history(frame, ax=fig.add_subplot())
        fig.tight_layout()
        with atomic_path(out_dir / FIGURE) as tmp:
            fig.savefig(tmp, format="png", dpi=120)


def plot_history(history: pd.DataFrame, ax=None):
    """Training loss (left axis) and validation recall (right axis) against the step.

    ``history``: the frame of :class:`TrainResult`. Draws on ``ax`` (or a new one); returns it.
    """
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(history["step"], history["train_loss"], color="tab:blue", label="train loss")
    if "val_loss" in history:
        ax.plot(history["step"], history["val_loss"], color="tab:blue", ls="--", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(loc="upper left", fontsize=8)
    if "mean_recall" in history:
        right = ax.twinx()
        for col, style in (("i2t_r5", "-"), ("t2i_r5", "--"), ("mean_recall", ":")):
            right.plot(history["step"], history[col], color="tab:orange", ls=style, label=col)
        right.set_ylabel("recall (%)")
        right.legend(loc="upper right", fontsize=8)
    return ax
