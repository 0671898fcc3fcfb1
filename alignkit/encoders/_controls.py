"""``random:image-D`` / ``random:text-D``: pure random features, the floor of "no semantic
alignment". Each item gets a vector of D independent standard normals seeded by a hash of its
content (the RGB pixels of an image, the UTF-8 bytes of a caption) and of ``seed``: the same item
always gets the same vector, in any batch, process or machine, and different items are independent.

(``random-init:<spec>``, the same architecture with random weights, is handled by the factory,
which passes ``random_init=True`` to the backends that support it.)
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from alignkit._device import resolve_device
from alignkit.encoders._util import ToRGB, no_layers
from alignkit.encoders.base import Encoder, check_pooling
from alignkit.errors import AlignkitError


def _digest_seed(seed: int, payload: bytes) -> int:
    digest = hashlib.sha256(f"alignkit-random:{seed}:".encode() + payload).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class ImageSeed:
    """PIL image -> a 63-bit seed (int64 tensor of shape ()) from its RGB pixels. Picklable."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, image: Any) -> torch.Tensor:
        rgb = ToRGB()(image)
        payload = f"{rgb.size[0]}x{rgb.size[1]}:".encode() + rgb.tobytes()
        return torch.tensor(_digest_seed(self.seed, payload), dtype=torch.int64)


class RandomFeatures(Encoder):
    """Deterministic per-item Gaussian features ``(n, dim)``; no model, no weights."""

    def __init__(
        self,
        model_id: str,
        *,
        spec: str,
        device: Any = "auto",
        pooling: str = "default",
        layer: str | int = "last",
        seed: int = 0,
        precision: str = "auto",
    ) -> None:
        modality, _, width = model_id.partition("-")
        if modality not in ("image", "text") or not width.isdigit() or int(width) < 1:
            raise AlignkitError(
                f"random features are named 'image-<dim>' or 'text-<dim>' (e.g. random:image-512): "
                f"got {model_id!r}"
            )
        self.name = spec
        self.modality = modality  # type: ignore[assignment]
        self.dim = int(width)
        self.device = resolve_device(device)
        self.precision = precision
        self.seed = int(seed)
        self.pooling = check_pooling(pooling, ("default",), spec)
        no_layers(layer, spec)
        if modality == "image":
            self._preprocessor = ImageSeed(self.seed)

    def _forward(self, batch: Any) -> torch.Tensor:
        if self.modality == "image":
            seeds = [int(s) for s in batch]  # (B,) int64 from ImageSeed
        else:
            seeds = [_digest_seed(self.seed, str(t).encode("utf-8")) for t in batch]
        rows = []
        for s in seeds:
            gen = torch.Generator().manual_seed(s)
            rows.append(torch.randn(self.dim, generator=gen))
        return torch.stack(rows).to(self.device) if rows else torch.empty(0, self.dim)

    def weights_identity(self) -> str:
        return f"random-features:seed={self.seed}"

    def config(self) -> dict[str, Any]:
        return {"pooling": self.pooling, "layer": "last", "seed": self.seed, "dim": self.dim}


def create(model_id: str, **options: Any) -> RandomFeatures:
    return RandomFeatures(model_id, **options)
