"""Validation of a projector pair: embed every row, retrieval recall, the loss on the whole set."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from alignkit.training.data import PairedFeatures, TokenFeatures, to_device
from alignkit.training.modules import AlignmentModel

__all__ = ["RECALL_KS", "better", "embed", "retrieval_recall", "validate"]

RECALL_KS = (1, 5, 10)


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
def validate(
    model: AlignmentModel, val: PairedFeatures, device: torch.device, dtype: torch.dtype
) -> dict[str, float]:
    """Retrieval recall (%) on ``val`` and ``val_loss``, the loss on the whole set with every
    caption a positive of its image. The model is left in train mode."""
    model.eval()
    try:
        image = embed(model, val.image, "image", device, dtype)
        text = embed(model, val.text, "text", device, dtype)
    finally:
        model.train()
    metrics = retrieval_recall(image, text, val.text_to_image)
    metrics["val_loss"] = float(
        model.loss(image.to(device, dtype), text.to(device, dtype), val.text_to_image.to(device))
    )
    return metrics


def better(metric: str, new: float, old: float | None) -> bool:
    """Whether ``new`` improves on ``old`` (None: nothing yet); val_loss is lower-is-better."""
    if old is None:
        return True
    return new < old if metric == "val_loss" else new > old
