"""Projector modules: small maps from a frozen encoder's features into a shared space.

Every projector maps ``(..., d_in) -> (..., d_out)`` and works on pooled features ``(n, d_in)``
and per token ``(n, T, d_in)`` alike. The towers (:class:`PooledTower`, :class:`ImageTokenTower`,
:class:`TextTokenTower`) add pooling and the final L2 normalisation; :class:`AlignmentModel`
holds one image tower, one text tower and the loss's learnable scalars.

Registry (``PROJECTORS``; ``hidden`` defaults to ``d_out``):

* ``linear``   ``W x + b``
* ``mlp``      ``W2 GELU(W1 x)``: Linear -> GELU -> Linear
* ``residual`` ``LN -> Dropout -> [W x + W2 GELU(W1 x)]``: a linear branch plus an MLP branch,
  the per-token ("patch") projection of freeze-align (Maniparambil et al. 2024)
* ``glu``      ``LN -> W3 (ReLU6(W1 x) * (W2 x))``: the gated ("star") unit of SAIL's alignment
  layer (Zhang et al. 2025, "Assessing and Learning Alignment of Unimodal Vision and Language
  Models"), with a hidden width of ``hidden`` (SAIL uses 8 x d_in on large data)
* ``mlp_head`` ``LN(p + Dropout(W2 GELU(p)))``, ``p = W1 x``: freeze-align's ``ProjectionHead``,
  its text head after token pooling
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.errors import unknown_key
from alignkit.training.data import TokenFeatures

__all__ = [
    "PROJECTORS",
    "build_projector",
    "LinearProjector",
    "MLPProjector",
    "ResidualProjector",
    "GLUProjector",
    "MLPHead",
    "PooledTower",
    "ImageTokenTower",
    "TextTokenTower",
    "num_parameters",
]


def num_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``) of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class LinearProjector(nn.Module):
    """``W x + b``: (..., d_in) -> (..., d_out)."""

    def __init__(self, d_in: int, d_out: int, hidden: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


class MLPProjector(nn.Module):
    """Linear -> GELU -> Linear: (..., d_in) -> (..., hidden) -> (..., d_out)."""

    def __init__(self, d_in: int, d_out: int, hidden: int | None = None, dropout: float = 0.0):
        super().__init__()
        hidden = hidden or d_out
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ResidualProjector(nn.Module):
    """freeze-align's per-token projection: LayerNorm, dropout, then a linear branch plus an
    MLP branch, ``W x + W2 GELU(W1 x)``: (..., d_in) -> (..., d_out)."""

    def __init__(self, d_in: int, d_out: int, hidden: int | None = None, dropout: float = 0.0):
        super().__init__()
        hidden = hidden or d_out
        self.norm = nn.LayerNorm(d_in)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(d_in, d_out)
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(self.norm(x))
        return self.linear(x) + self.fc2(F.gelu(self.fc1(x)))


class GLUProjector(nn.Module):
    """SAIL's gated unit: LayerNorm, then ``W3 (ReLU6(W1 x) * (W2 x))``:
    (..., d_in) -> (..., hidden) -> (..., d_out)."""

    def __init__(self, d_in: int, d_out: int, hidden: int | None = None, dropout: float = 0.0):
        super().__init__()
        hidden = hidden or d_out
        self.norm = nn.LayerNorm(d_in)
        self.gate = nn.Linear(d_in, hidden)
        self.up = nn.Linear(d_in, hidden)
        self.down = nn.Linear(hidden, d_out)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        return self.down(self.dropout(F.relu6(self.gate(x)) * self.up(x)))


class MLPHead(nn.Module):
    """freeze-align's ``ProjectionHead``: ``p = W1 x``; ``LN(p + Dropout(W2 GELU(p)))``:
    (..., d_in) -> (..., d_out). Its ``hidden`` is ``d_out`` (the skip needs it)."""

    def __init__(self, d_in: int, d_out: int, hidden: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_out)
        self.fc2 = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_out)

    def forward(self, x: Tensor) -> Tensor:
        p = self.fc1(x)
        return self.norm(p + self.dropout(self.fc2(F.gelu(p))))


ProjectorFactory = Callable[..., nn.Module]

PROJECTORS: dict[str, ProjectorFactory] = {
    "linear": LinearProjector,
    "mlp": MLPProjector,
    "residual": ResidualProjector,
    "glu": GLUProjector,
    "mlp_head": MLPHead,
}


def build_projector(
    kind: str, d_in: int, d_out: int, *, hidden: int | None = None, dropout: float = 0.0
) -> nn.Module:
    """A projector of registry kind ``kind`` mapping (..., d_in) -> (..., d_out).

    Raises :class:`AlignkitError` listing the valid kinds when ``kind`` is unknown.
    """
    if kind not in PROJECTORS:
        raise unknown_key("projector", kind, list(PROJECTORS))
    return PROJECTORS[kind](d_in, d_out, hidden=hidden, dropout=dropout)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over valid tokens: x (n, T, d), mask (n, T) bool -> (n, d)."""
    m = mask.unsqueeze(-1).to(x.dtype)  # (n, T, 1)
    return (x * m).sum(dim=1) / m.sum(dim=1)


class PooledTower(nn.Module):
    """Pooled features (n, d_in) -> L2-normalised embeddings (n, d_out)."""

    def __init__(self, projector: nn.Module):
        super().__init__()
        self.proj = projector

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.proj(x), dim=-1)


class ImageTokenTower(nn.Module):
    """Image tokens -> (n, d_out), as freeze-align does: the patch projection applied per token,
    a masked mean over the patch tokens, plus a separate projection of the CLS token (when the
    features have one and ``cls`` is given), then L2 normalisation."""

    def __init__(self, patch: nn.Module, cls: nn.Module | None = None):
        super().__init__()
        self.patch = patch
        self.cls = cls

    def forward(self, x: TokenFeatures) -> Tensor:
        pooled = masked_mean(self.patch(x.tokens), x.mask)  # (n, T, d_out) -> (n, d_out)
        if self.cls is not None:
            if x.cls is None:
                raise ValueError("this image tower projects a CLS token but the features have none")
            pooled = pooled + self.cls(x.cls)
        return F.normalize(pooled, dim=-1)


class TextTokenTower(nn.Module):
    """Text tokens -> (n, d_out), as freeze-align does: a per-token projection, a masked mean
    over the valid tokens, then a head on the pooled vector, then L2 normalisation."""

    def __init__(self, token: nn.Module, head: nn.Module):
        super().__init__()
        self.token = token
        self.head = head

    def forward(self, x: TokenFeatures) -> Tensor:
        pooled = masked_mean(self.token(x.tokens), x.mask)  # (n, T, d) -> (n, d)
        return F.normalize(self.head(pooled), dim=-1)


class AlignmentModel(nn.Module):
    """An image tower, a text tower and the loss's learnable scalars, in one module (so DDP and
    the optimizer see every trainable parameter together).

    ``forward(image, text) -> (image_emb (B, D), text_emb (M, D))``, both L2-normalised.
    """

    def __init__(self, image: nn.Module, text: nn.Module, loss: nn.Module):
        super().__init__()
        self.image = image
        self.text = text
        self.loss = loss

    def forward(
        self, image: Tensor | TokenFeatures, text: Tensor | TokenFeatures
    ) -> tuple[Tensor, Tensor]:
        return self.image(image), self.text(text)

    def encode_image(self, image: Tensor | TokenFeatures) -> Tensor:
        return self.image(image)

    def encode_text(self, text: Tensor | TokenFeatures) -> Tensor:
        return self.text(text)

    def num_parameters(self) -> int:
        """Trainable parameters, towers and loss scalars together."""
        return num_parameters(self)


def model_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype
