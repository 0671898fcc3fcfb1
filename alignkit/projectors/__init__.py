"""Projectors that align frozen encoders: modules, losses, the trainer (one process or torchrun).

    from alignkit.projectors import PairedFeatures, TrainConfig, train_projector
    config = TrainConfig(projector="mlp", loss="clip")
    result = train_projector(config, train, val, out_dir="runs/x")
    result.model.encode_image(x)          # (n, width), L2-normalised

See docs/training.md for the projectors, the loss formulas and the distributed semantics.
"""

from alignkit.projectors.build import ModelSpec, build_model, load_model, save_model
from alignkit.projectors.config import TrainConfig
from alignkit.projectors.data import PairedFeatures, TokenFeatures
from alignkit.projectors.losses import LOSSES, ClipLoss, SigLipLoss, clip_loss, siglip_loss
from alignkit.projectors.modules import (
    PROJECTORS,
    AlignmentModel,
    ImageTokenTower,
    PooledTower,
    TextTokenTower,
    build_projector,
    num_parameters,
)
from alignkit.projectors.trainer import TrainResult, plot_history, retrieval_recall, train_projector

__all__ = [
    "LOSSES",
    "PROJECTORS",
    "AlignmentModel",
    "ClipLoss",
    "ImageTokenTower",
    "ModelSpec",
    "PairedFeatures",
    "PooledTower",
    "SigLipLoss",
    "TextTokenTower",
    "TokenFeatures",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "build_projector",
    "clip_loss",
    "load_model",
    "num_parameters",
    "plot_history",
    "retrieval_recall",
    "save_model",
    "siglip_loss",
    "train_projector",
]
