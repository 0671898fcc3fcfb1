"""A trained pair you can use: frozen encoders + projectors, from raw images and strings.

A run folder written by ``alignkit train`` (or :func:`save_aligned`) holds::

    config.json              what to rebuild: the vision and text encoder specs and options,
                             their weights identity, token-level or pooled features, the
                             TrainConfig, probes and validation metrics
    projector.safetensors    the projector weights (alignkit.training.save_model format)

:func:`load_aligned` rebuilds the encoders from their specs, checks that their weights identity is
the one the projectors were trained on (a different checkpoint gives different features, and the
projectors would silently map them to nonsense), and returns an :class:`AlignedModel`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from alignkit.errors import AlignkitError

if TYPE_CHECKING:
    from alignkit.encoders.base import Encoder
    from alignkit.training.modules import AlignmentModel

CONFIG = "config.json"
PROJECTOR = "projector.safetensors"
FORMAT = "alignkit.aligned/1"


@dataclass(frozen=True)
class EncoderRecord:
    """One frozen encoder as a run folder names it."""

    spec: str
    options: dict[str, Any]
    weights: str  # Encoder.weights_identity() at training time
    dim: int  # width of the features the projector takes (pooled dim, or token width)
    tokens: bool  # trained on token-level features
    prefix_tokens: int = 0  # image CLS/register tokens in front of the patch tokens

    @classmethod
    def of(cls, encoder: Encoder, options: dict[str, Any], tokens: bool, dim: int) -> EncoderRecord:
        return cls(
            spec=encoder.name,
            options=dict(options),
            weights=encoder.weights_identity(),
            dim=int(dim),
            tokens=bool(tokens),
            prefix_tokens=int(getattr(encoder, "n_prefix", 0) or 0) if tokens else 0,
        )


def write_config(
    run_dir: str | Path,
    vision: EncoderRecord,
    text: EncoderRecord,
    train_config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``config.json`` of a run folder atomically."""
    from alignkit.features._io import atomic_path

    path = Path(run_dir) / CONFIG
    body = {
        "format": FORMAT,
        "vision": vision.__dict__,
        "text": text.__dict__,
        "train_config": train_config,
        **(extra or {}),
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(body, indent=1, sort_keys=True, default=str))
    return path


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a run folder (one-line error when absent or foreign)."""
    path = Path(run_dir) / CONFIG
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        raise AlignkitError(
            f"no {CONFIG} in {run_dir}: expected a run folder written by `alignkit train`"
        ) from None
    except (OSError, ValueError) as exc:
        raise AlignkitError(f"{path} is not readable JSON: {exc}") from exc
    if body.get("format") != FORMAT:
        raise AlignkitError(f"{path} is not an alignkit run config (format {body.get('format')!r})")
    return body


class AlignedModel:
    """Frozen vision and text encoders with the projectors that map both into one space.

    ``encode_image(images)`` and ``encode_text(texts)`` return L2-normalised ``(n, width)``
    float32 CPU tensors; ``similarity(images, texts)`` their cosine matrix ``(n_images,
    n_texts)`` in [-1, 1]. Work runs in batches of ``batch_size`` items on the encoders' device.
    """

    def __init__(
        self,
        vision: Encoder,
        text: Encoder,
        model: AlignmentModel,
        records: tuple[EncoderRecord, EncoderRecord],
        config: dict[str, Any],
        batch_size: int = 64,
    ) -> None:
        self.vision, self.text, self.model = vision, text, model
        self.records = records
        self.config = config
        self.batch_size = batch_size

    @property
    def width(self) -> int:
        return int(self.config["train_config"]["width"])

    def __repr__(self) -> str:
        return (
            f"AlignedModel(vision={self.vision.name!r}, text={self.text.name!r}, "
            f"width={self.width}, projector={self.config['train_config']['projector']!r})"
        )

    def _features(self, encoder: Encoder, record: EncoderRecord, items: list[Any], image: bool):
        from alignkit.training.data import TokenFeatures

        if not record.tokens:
            return encoder.encode(items)
        tokens, mask = encoder.encode_tokens(items)
        p = record.prefix_tokens if image else 0
        if p:
            return TokenFeatures(tokens[:, p:], mask[:, p:], tokens[:, 0])
        return TokenFeatures(tokens, mask)

    @torch.no_grad()
    def _encode(self, items: Any, image: bool) -> torch.Tensor:
        items = [items] if isinstance(items, str) or hasattr(items, "convert") else list(items)
        encoder = self.vision if image else self.text
        record = self.records[0] if image else self.records[1]
        tower = self.model.image if image else self.model.text
        out = []
        for a in range(0, len(items), self.batch_size):
            x = self._features(encoder, record, items[a : a + self.batch_size], image)
            from alignkit.training.data import to_device

            device = next(self.model.parameters()).device
            out.append(tower(to_device(x, device, torch.float32)).float().cpu())
        if not out:
            return torch.empty(0, self.width)
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    def encode_image(self, images: Any) -> torch.Tensor:
        """PIL images (or one) -> ``(n, width)`` L2-normalised embeddings in the shared space."""
        return self._encode(images, image=True)

    def encode_text(self, texts: Any) -> torch.Tensor:
        """Strings (or one) -> ``(n, width)`` L2-normalised embeddings in the shared space."""
        return self._encode(texts, image=False)

    def similarity(self, images: Any, texts: Any) -> torch.Tensor:
        """Cosine similarity ``(n_images, n_texts)`` of images and texts in the shared space."""
        return self.encode_image(images) @ self.encode_text(texts).T


def load_aligned(
    run_dir: str | Path,
    *,
    device: str | torch.device = "auto",
    check_weights: bool = True,
    batch_size: int = 64,
) -> AlignedModel:
    """Rebuild a trained pair from its run folder (``config.json`` + ``projector.safetensors``).

    Args:
        run_dir: a folder written by ``alignkit train`` / :func:`save_aligned`.
        device: where the encoders and projectors run (``auto``: CUDA when available).
        check_weights: refuse encoders whose weights identity differs from the one the projectors
            were trained on (the default); False only warns.
        batch_size: items per encoder forward pass.

    Raises:
        AlignkitError: a missing or foreign file, an encoder that cannot be built here, a weights
            identity or feature width that does not match the saved projectors.
    """
    import logging

    from alignkit._device import resolve_device
    from alignkit.encoders import create_encoder
    from alignkit.training.build import load_model

    run_dir = Path(run_dir)
    body = read_config(run_dir)
    records = (EncoderRecord(**body["vision"]), EncoderRecord(**body["text"]))
    device = resolve_device(device)
    model, _, spec, _ = load_model(run_dir / PROJECTOR, device=device)
    encoders = []
    for record, modality, width in (
        (records[0], "image", spec.image_dim),
        (records[1], "text", spec.text_dim),
    ):
        enc = create_encoder(record.spec, device=device, **record.options)
        if enc.modality != modality:
            raise AlignkitError(
                f"{run_dir}/{CONFIG} names {record.spec} as the {modality} encoder, but it is a "
                f"{enc.modality} encoder"
            )
        have = enc.weights_identity()
        if have != record.weights:
            msg = (
                f"{record.spec} here has weights {have!r}, but the projectors in {run_dir} were "
                f"trained on {record.weights!r}: install those weights (see `alignkit "
                "list-encoders`) or retrain; check_weights=False skips this check"
            )
            if check_weights:
                raise AlignkitError(msg)
            logging.getLogger(__name__).warning(msg)
        if not record.tokens and enc.dim != width:  # token widths are checked per batch
            raise AlignkitError(
                f"{record.spec} gives {enc.dim}-wide features here, but the projectors in "
                f"{run_dir} take {width}: build it with the options in {CONFIG} ({record.options})"
            )
        encoders.append(enc)
    return AlignedModel(encoders[0], encoders[1], model, records, body, batch_size)


__all__ = ["AlignedModel", "EncoderRecord", "load_aligned", "read_config", "write_config"]
