"""Training projectors that align frozen encoders: modules, losses, data, the trainer (one process
or torchrun) and the pair-level run that ``alignkit train`` writes.

    from alignkit.training import PairedFeatures, TrainConfig, train_projector
    config = TrainConfig(projector="mlp", loss="clip")
    result = train_projector(config, train, val, out_dir="runs/x")
    result.model.encode_image(x)          # (n, width), L2-normalised

See docs/training.md for the projectors, the loss formulas and the distributed semantics.
"""

from __future__ import annotations

import importlib
from typing import Any

# Exports resolve on first use (PEP 562), so that the light `config` module (TrainConfig, which
# the CLI reads for its help) can be imported without torch.
_EXPORTS = {
    "ModelSpec": "build",
    "build_model": "build",
    "load_model": "build",
    "save_model": "build",
    "TrainConfig": "config",
    "PairedFeatures": "data",
    "TokenFeatures": "data",
    "LOSSES": "losses",
    "ClipLoss": "losses",
    "SigLipLoss": "losses",
    "clip_loss": "losses",
    "siglip_loss": "losses",
    "PROJECTORS": "modules",
    "AlignmentModel": "modules",
    "ImageTokenTower": "modules",
    "PooledTower": "modules",
    "TextTokenTower": "modules",
    "build_projector": "modules",
    "num_parameters": "modules",
    "TrainResult": "trainer",
    "plot_history": "history",
    "retrieval_recall": "validation",
    "train_projector": "trainer",
    "PairRun": "pair",
    "train_pair": "pair",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'alignkit.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"alignkit.training.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
