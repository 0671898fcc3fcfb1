"""Build the projector pair a TrainConfig describes, and save / load it as safetensors."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from alignkit.errors import AlignkitError
from alignkit.training.config import TrainConfig
from alignkit.training.data import PairedFeatures, TokenFeatures
from alignkit.training.losses import build_loss
from alignkit.training.modules import (
    AlignmentModel,
    ImageTokenTower,
    PooledTower,
    TextTokenTower,
    build_projector,
)

__all__ = ["ModelSpec", "build_model", "save_model", "load_model"]


@dataclass(frozen=True)
class ModelSpec:
    """What the features look like: widths and token levels (fixes the layer shapes)."""

    image_dim: int
    text_dim: int
    image_tokens: bool = False
    image_cls: bool = False
    text_tokens: bool = False

    @classmethod
    def of(cls, data: PairedFeatures) -> ModelSpec:
        image_tokens, text_tokens = data.token_level
        image_cls = (
            image_tokens and isinstance(data.image, TokenFeatures) and data.image.cls is not None
        )
        return cls(data.image_dim, data.text_dim, image_tokens, bool(image_cls), text_tokens)

    def check_matches(self, other: ModelSpec, where: str) -> None:
        """One-line error when ``other`` (the data) does not fit ``self`` (a checkpoint)."""
        if self != other:
            diff = [
                f"{k} {v} (data: {getattr(other, k)})"
                for k, v in asdict(self).items()
                if getattr(other, k) != v
            ]
            raise AlignkitError(
                f"the features do not match {where}: it expects {', '.join(diff)}; use the "
                "encoders and feature options it was trained on, or a new out_dir"
            )


def build_model(config: TrainConfig, spec: ModelSpec) -> AlignmentModel:
    """An :class:`AlignmentModel` for features shaped as ``spec`` (initialised from torch's
    current RNG: seed it first)."""

    def proj(kind: str, d_in: int) -> torch.nn.Module:
        return build_projector(
            kind, d_in, config.width, hidden=config.hidden, dropout=config.dropout
        )

    if spec.image_tokens:
        cls = proj(config.projector, spec.image_dim) if spec.image_cls else None
        image = ImageTokenTower(proj(config.projector, spec.image_dim), cls)
    else:
        image = PooledTower(proj(config.projector, spec.image_dim))
    if spec.text_tokens:
        head = build_projector(config.text_head, config.width, config.width, dropout=config.dropout)
        text = TextTokenTower(proj(config.projector, spec.text_dim), head)
    else:
        text = PooledTower(proj(config.projector, spec.text_dim))
    return AlignmentModel(image, text, build_loss(config.loss))


def save_model(
    path: str | Path,
    model: AlignmentModel,
    config: TrainConfig,
    spec: ModelSpec,
    extra: dict[str, str] | None = None,
) -> Path:
    """Write the weights (float32) with the config and spec as metadata, atomically."""
    from safetensors.torch import save_file

    from alignkit.features._io import atomic_path

    path = Path(path)
    tensors = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()
    }
    metadata = {
        "format": "alignkit.projector/1",
        "train_config": config.to_json(),
        "model_spec": json.dumps(asdict(spec), sort_keys=True),
        **(extra or {}),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[AlignmentModel, TrainConfig, ModelSpec, dict[str, str]]:
    """Read a file written by :func:`save_model`: (model in eval mode, config, spec, metadata)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise AlignkitError(
            f"no projector file at {path}: expected a projector.safetensors a training run wrote"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise AlignkitError(f"{path} is not a readable safetensors file: {exc}") from exc
    if metadata.get("format") != "alignkit.projector/1":
        raise AlignkitError(
            f"{path} is not an alignkit projector file (format {metadata.get('format')!r})"
        )
    config = TrainConfig.from_dict(json.loads(metadata["train_config"]))
    spec = ModelSpec(**json.loads(metadata["model_spec"]))
    model = build_model(config, spec)
    model.load_state_dict(tensors)
    return model.to(device).eval(), config, spec, metadata
