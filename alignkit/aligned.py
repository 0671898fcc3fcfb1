"""A trained pair you can use: frozen encoders + projectors, from raw images and strings.

A run folder written by ``alignkit train`` holds ``config.json`` (the encoders and the recipe)
and ``projector.safetensors`` (the projectors); :mod:`alignkit.runs.trained` describes it.

:func:`load_aligned` rebuilds the encoders from their specs, checks that their weights identity is
the one the projectors were trained on (a different checkpoint gives different features, and the
projectors would silently map them to nonsense), and returns an :class:`AlignedModel`. An encoder
fitted on the texts it is given (``tfidf:``) gets the fit the run trained with, from the run
folder's ``fits/`` (:func:`alignkit.training.folder.load_fit`), never a fit of its own.
:func:`load_pair` reads the same folder as an evaluation :class:`AlignedPair` (encoder specs and
the projector heads; features then come from the feature cache).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from alignkit.errors import AlignkitError
from alignkit.runs.trained import (
    CONFIG,
    FORMAT,
    PROJECTOR,
    EncoderRecord,
    check_projector,
    check_run_folder,
    encoder_entry,
    read_config,
    write_config,
)

if TYPE_CHECKING:
    from alignkit.encoders.base import Encoder
    from alignkit.evaluation.evaluate import AlignedPair
    from alignkit.training.modules import AlignmentModel


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
    from alignkit.training.folder import load_fit

    run_dir = Path(run_dir)
    body = read_config(run_dir)
    device = resolve_device(device)
    model, _, spec, _ = load_model(run_dir / PROJECTOR, device=device)
    check_projector(run_dir, model, spec.image_dim, spec.text_dim)  # before any encoder is built
    records = (
        EncoderRecord.read(body["vision"], spec.image_dim),
        EncoderRecord.read(body["text"], spec.text_dim),
    )
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
        # needs_fit encoders (tfidf:): the training fit, refused when another run's (no weights
        # to install: the run's own fit is missing, so the run must be retrained)
        load_fit(run_dir, enc, record.weights if check_weights else "")
        have = enc.weights_identity()
        if record.weights and have != record.weights:
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


def load_pair(run_dir: str | Path, device: str = "cpu") -> AlignedPair:
    """An :class:`~alignkit.evaluation.evaluate.AlignedPair` from a run folder: its encoder specs
    and its trained heads (on CPU: the heads are small; ``device`` is kept for symmetry); an
    encoder fitted on its training texts (``tfidf:``) loads its fit from the folder when built.

    Raises:
        AlignkitError (one line, before any encoder is built): the folder is not a finished
            trained run (says what it is), the projector file is damaged or holds non-finite
            weights, or config.json's encoder widths disagree with the projector's inputs.
    """
    from alignkit.evaluation.evaluate import AlignedPair
    from alignkit.training.build import load_model

    run = Path(run_dir)
    cfg = check_run_folder(run)
    vision, v_opts = encoder_entry(cfg, "image", run / CONFIG)
    text, t_opts = encoder_entry(cfg, "text", run / CONFIG)
    model, _, spec, _ = load_model(run / PROJECTOR, device="cpu")
    check_projector(run, model, spec.image_dim, spec.text_dim)
    model.eval()
    holder = cfg.get("encoders", cfg)
    weights = {
        m: holder[k]["weights"]
        for m, k in (("image", "vision"), ("text", "text"))
        if isinstance(holder.get(k), Mapping) and holder[k].get("weights")
    }
    return AlignedPair(
        vision,
        text,
        model.encode_image,
        model.encode_text,
        name=run.name,
        encoder_options={"image": v_opts, "text": t_opts},
        weights=weights,
        dims={"image": spec.image_dim, "text": spec.text_dim},
        run_dir=run,
    )


__all__ = [
    "CONFIG",
    "FORMAT",
    "PROJECTOR",
    "AlignedModel",
    "EncoderRecord",
    "load_aligned",
    "load_pair",
    "read_config",
    "write_config",
]
