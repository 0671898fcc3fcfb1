"""Checkpoints of a training run: what they hold, how they are written, and the resume check.

A checkpoint (``checkpoint.safetensors``) holds the weights, AdamW's moments and torch's RNG
states as tensors, and as JSON metadata everything the run's trajectory depends on: the
:class:`TrainConfig`, the feature shapes, the training and validation rows, the world size, and
the caller's provenance (for ``alignkit train``: each encoder's spec, weights identity and
options, the feature cache keys and the probe fingerprints). A resume compares all of it with the
new run and refuses a difference, listing the fields (:func:`resume_differences`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from alignkit._files import atomic_path
from alignkit.errors import AlignkitError

__all__ = [
    "BEST",
    "CHECKPOINT",
    "FINAL",
    "load_optimizer",
    "optimizer_tensors",
    "read_checkpoint",
    "read_meta",
    "resume_differences",
    "save_checkpoint",
]

CHECKPOINT = "checkpoint.safetensors"
BEST = "best.safetensors"
FINAL = "projector.safetensors"


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    """The optimizer's per-parameter state as flat tensors ``optim.<param>.<name>``."""
    out = {}
    for i, state in opt.state_dict()["state"].items():
        for k, v in state.items():
            out[f"optim.{i}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    return out


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    """Put the ``optim.*`` tensors of :func:`optimizer_tensors` back into ``opt``."""
    sd = opt.state_dict()
    state: dict[int, dict[str, Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def save_checkpoint(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write tensors + JSON metadata as one safetensors file, atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()})


def read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, metadata) of a file :func:`save_checkpoint` wrote; one-line error if damaged."""
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


def read_meta(path: Path) -> dict[str, Any] | None:
    """The metadata of a checkpoint without its tensors (None when there is no file)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    except Exception as exc:
        raise AlignkitError(
            f"cannot read the checkpoint {path} ({exc}); delete it or pass overwrite=True"
        ) from exc


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


_GROUPS = {  # how a message names each part of the record
    "config": "with another config",
    "data": "on other training rows",
    "val_data": "on other validation rows",
    "provenance": "with other inputs",
    "world": "with another world size",
}


def resume_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between a checkpoint's metadata ``saved`` and the new run's record ``now``:
    one phrase per part that differs, listing the fields (``with another config (lr: 0.003 ->
    0.01)``, ``with other inputs (text.spec: 'a' -> 'b')``); empty when the run may resume.

    A part that ``saved`` lacks (a checkpoint of an older alignkit) is not compared.
    """
    out = []
    for key, value in now.items():
        if key not in saved:
            continue
        old, new = _flat(saved[key], key), _flat(value, key)
        fields = []
        for name in [*new, *(k for k in old if k not in new)]:  # the record's order
            a, b = old.get(name, "(none)"), new.get(name, "(none)")
            if a != b:
                short = name.partition(".")[2] or name
                fields.append(
                    f"{short}: {a!r} -> {b!r}" if key == "config" else f"{short}: {a} -> {b}"
                )
        if fields:
            out.append(f"{_GROUPS.get(key, 'with another ' + key)} ({'; '.join(fields)})")
    return out
