"""The schedule of a training run: steps per epoch, the learning rate at each step, which image
rows each global batch takes, the precision and AdamW's parameter groups.

Every random choice is derived from (seed, epoch) or (seed, step) through :func:`generator`, so
a resumed run draws exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import torch
from torch import Tensor, nn

from alignkit.training.config import TrainConfig

__all__ = [
    "adamw",
    "batch_rows",
    "generator",
    "learning_rate",
    "param_groups",
    "precision",
    "steps_per_epoch",
]

logger = logging.getLogger("alignkit.training.trainer")


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


def generator(*keys: int) -> torch.Generator:
    seed = 0
    for k in keys:  # a fixed mixing of the keys into one 63-bit seed
        seed = (seed * 1_000_003 + int(k) + 0x9E3779B9) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def batch_rows(config: TrainConfig, n_images: int, step: int) -> tuple[Tensor, int, int]:
    """(image rows of global step ``step``, epoch, batch index): a fresh permutation per epoch."""
    spe = steps_per_epoch(n_images, config.batch_size)
    epoch, b = divmod(step, spe)
    perm = _permutation(config.seed, epoch, n_images)
    rows = perm[b * config.batch_size : (b + 1) * config.batch_size]
    return torch.sort(rows).values, epoch, b  # sorted: memory-mapped reads go forward


@functools.lru_cache(maxsize=2)
def _permutation(seed: int, epoch: int, n_images: int) -> Tensor:
    """(n_images,) int64: the shuffled order of one epoch, drawn once per epoch (at a million
    images one draw takes ~50 ms: per step it would cost more than the step). Read-only."""
    return torch.randperm(n_images, generator=generator(seed, 1, epoch))


def precision(config: TrainConfig, device: torch.device) -> tuple[torch.dtype, torch.dtype | None]:
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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def adamw(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; fused on the CPU (one kernel for every parameter: 5x
    faster there than the per-tensor loop, 3 ms of a 64 ms step of a linear projector at batch
    1024)."""
    fused = device.type == "cpu" or None
    return torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, fused=fused)
