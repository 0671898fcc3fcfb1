"""Contrastive losses over L2-normalised embeddings, with several captions per image.

Notation: ``B`` images with embeddings x_i, ``M`` captions with embeddings y_j, ``s_ij = x_i·y_j``,
``img(j)`` the image of caption j, ``P(i) = {j : img(j) = i}`` the captions of image i. With one
caption per image (``M = B``, ``img(j) = j``) both losses are the textbook ones.

* **InfoNCE** (CLIP, Radford et al. 2021), learnable temperature τ (init 0.07, kept in
  [0.001, 0.5] as freeze-align does), multi-positive in the image→text direction::

      L_i2t(i) = -(1/|P(i)|) Σ_{j∈P(i)} log softmax_j(s_i· / τ)     (softmax over all M captions)
      L_t2i(j) = -log softmax_{img(j)}(s_·j / τ)                     (softmax over all B images)
      L = ½ [ (1/B) Σ_i L_i2t(i) + (1/M) Σ_j L_t2i(j) ]

  i.e. cross-entropy against the uniform distribution over an image's captions (the
  multi-positive target of Tian et al. 2023, StableRep); with one caption each it is CLIP's loss.

* **Sigmoid** (SigLIP, Zhai et al. 2023), learnable log-scale t' (init log 10) and bias b
  (init -10), every (image, caption) pair a binary problem, ``z_ij = +1`` when j ∈ P(i) else -1::

      L = -(1/B) Σ_i Σ_j log σ( z_ij (exp(t') s_ij + b) )

Both kernels take ``image_rows`` / ``text_rows``: the rows whose terms this process computes,
against *all* columns (open_clip's ``local_loss``). Each term is divided by the global count (B or
M), so the per-process values add up to the loss above (see :mod:`alignkit.training.distributed`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.errors import unknown_key

__all__ = ["clip_loss", "siglip_loss", "ClipLoss", "SigLipLoss", "LOSSES", "build_loss"]

ALL = slice(None)


def _positives(text_to_image: Tensor, n_images: int, image_rows: slice) -> Tensor:
    """(b, M) bool: caption j describes image i, for the images in ``image_rows``."""
    images = torch.arange(n_images, device=text_to_image.device)[image_rows]  # (b,)
    return images[:, None] == text_to_image[None, :]


def _whole(rows: slice, n: int) -> bool:
    """Whether ``rows`` selects all ``n`` rows (the trainer passes ``slice(0, n)``)."""
    return range(n)[rows] == range(n)


def clip_loss(
    image: Tensor,
    text: Tensor,
    text_to_image: Tensor,
    temperature: Tensor,
    image_rows: slice = ALL,
    text_rows: slice = ALL,
) -> Tensor:
    """Symmetric multi-positive InfoNCE (formula in the module docstring).

    image (B, D), text (M, D) L2-normalised; text_to_image (M,) int64 in [0, B); temperature a
    scalar tensor > 0. Returns the scalar terms of ``image_rows`` and ``text_rows`` only (all rows
    by default, which is the whole loss).
    """
    n_images, n_texts = image.shape[0], text.shape[0]
    image = image / temperature  # (B, D): scaled before the GEMM, not the (B, M) scores after
    logits = image[image_rows] @ text.T  # (b, M)
    pos = _positives(text_to_image, n_images, image_rows).to(logits.dtype)  # (b, M)
    i2t = -(F.log_softmax(logits, dim=1) * pos).sum(dim=1) / pos.sum(dim=1)  # (b,)
    if _whole(image_rows, n_images) and _whole(text_rows, n_texts):
        # one process: the same scores, a softmax over dim 0 (no second GEMM; a cross-entropy
        # on logits.T is 5x slower on CPU)
        t2i = -F.log_softmax(logits, dim=0)[text_to_image, torch.arange(n_texts)]  # (M,)
    else:
        logits_t = text[text_rows] @ image.T  # (m, B)
        t2i = F.cross_entropy(logits_t, text_to_image[text_rows], reduction="none")  # (m,)
    return 0.5 * (i2t.sum() / n_images + t2i.sum() / n_texts)


def siglip_loss(
    image: Tensor,
    text: Tensor,
    text_to_image: Tensor,
    log_scale: Tensor,
    bias: Tensor,
    image_rows: slice = ALL,
) -> Tensor:
    """SigLIP's pairwise sigmoid loss (formula in the module docstring).

    image (B, D), text (M, D) L2-normalised; text_to_image (M,); log_scale, bias scalars.
    Returns the scalar terms of the images in ``image_rows`` (all by default: the whole loss).
    """
    logits = image[image_rows] @ text.T * log_scale.exp() + bias  # (b, M)
    sign = 2.0 * _positives(text_to_image, image.shape[0], image_rows).to(logits.dtype) - 1.0
    return -F.logsigmoid(sign * logits).sum() / image.shape[0]


class ClipLoss(nn.Module):
    """InfoNCE with a learnable temperature ``temperature`` (init 0.07; :meth:`clamp_` keeps it in
    [0.001, 0.5] after every optimizer step, as freeze-align clamps it before every forward)."""

    def __init__(self, temperature: float = 0.07, bounds: tuple[float, float] = (0.001, 0.5)):
        super().__init__()
        self.temperature = nn.Parameter(torch.tensor(float(temperature)))
        self.bounds = bounds

    @torch.no_grad()
    def clamp_(self) -> None:
        self.temperature.clamp_(*self.bounds)

    def forward(
        self,
        image: Tensor,
        text: Tensor,
        text_to_image: Tensor,
        image_rows: slice = ALL,
        text_rows: slice = ALL,
    ) -> Tensor:
        return clip_loss(image, text, text_to_image, self.temperature, image_rows, text_rows)

    def logit_scale(self) -> float:
        return float(1.0 / self.temperature.detach())


class SigLipLoss(nn.Module):
    """Sigmoid loss with learnable ``log_scale`` (init log 10) and ``bias`` (init -10),
    Zhai et al. 2023. No clamping (the paper does none)."""

    def __init__(self, log_scale: float = math.log(10.0), bias: float = -10.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(float(log_scale)))
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def clamp_(self) -> None:
        pass

    def forward(
        self,
        image: Tensor,
        text: Tensor,
        text_to_image: Tensor,
        image_rows: slice = ALL,
        text_rows: slice = ALL,
    ) -> Tensor:
        # every (image, caption) pair is scored once from its image's row: text_rows is unused
        return siglip_loss(image, text, text_to_image, self.log_scale, self.bias, image_rows)

    def logit_scale(self) -> float:
        return float(self.log_scale.detach().exp())


LOSSES: dict[str, type[nn.Module]] = {"clip": ClipLoss, "siglip": SigLipLoss}


def build_loss(kind: str) -> nn.Module:
    """The loss module ``kind`` (``clip`` or ``siglip``) with its paper's initial scalars."""
    if kind not in LOSSES:
        raise unknown_key("loss", kind, list(LOSSES))
    return LOSSES[kind]()
