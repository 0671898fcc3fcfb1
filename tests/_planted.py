"""Encoders with planted shared structure of known strength, for end-to-end ranking tests.

``planted:image-0.9`` / ``planted:text-0.5``: the features of probe row i are
``sqrt(s) * Z[i] @ Q + sqrt(1 - s) * N[i]`` where ``Z`` (rows x LATENT) is one latent shared by
every encoder (seeded by the row's index), ``Q`` (LATENT x DIM) an orthonormal map scaled to
unit variance and ``N`` (rows x DIM) standard normal noise, both seeded by the spec: ``s`` is the
share of the features' variance that is shared. A larger ``s`` puts more of the shared latent in
the features, so by construction a pair ranks above another when both of its shares are at least
as large.

The encoder recognises a row by content (the image's pixels, the caption's text) through the
table :func:`register` builds from the probe, so it runs through the ordinary extraction.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from alignkit.encoders.base import Encoder

DIM = 8
LATENT = 3
_ROWS: dict[str, int] = {}  # content key -> row index, filled by register()


def _image_key(image: Any) -> str:
    rgb = image.convert("RGB")
    return "img:" + hashlib.sha256(rgb.tobytes()).hexdigest()


def register(probe: Any) -> None:
    """Map each row's image and captions to its index (call before ranking on ``probe``)."""
    _ROWS.clear()
    for i, row in enumerate(probe.rows):
        _ROWS[_image_key(row.load_image())] = i
        for caption in row.captions:
            _ROWS["txt:" + caption] = i


class RowOfImage:
    """PIL image -> its row index as an int64 tensor of shape (); picklable for workers."""

    def __init__(self, rows: dict[str, int]) -> None:
        self.rows = dict(rows)

    def __call__(self, image: Any) -> torch.Tensor:
        return torch.tensor(self.rows[_image_key(image)], dtype=torch.int64)


def _latent(rows: np.ndarray) -> np.ndarray:
    out = np.empty((len(rows), LATENT))
    for j, i in enumerate(rows):
        out[j] = np.random.default_rng([7, int(i)]).standard_normal(LATENT)
    return out  # (B, LATENT)


class PlantedEncoder(Encoder):
    def __init__(self, model_id: str, *, spec: str, device: Any = "auto", **_: Any) -> None:
        modality, _, strength = model_id.partition("-")
        self.name = spec
        self.modality = modality  # type: ignore[assignment]
        self.dim = DIM
        self.device = torch.device("cpu")
        self.strength = float(strength)
        seed = int.from_bytes(hashlib.sha256(spec.encode()).digest()[:4], "little")
        # an orthonormal map of the latent into the features (rows orthonormal): every encoder
        # carries the same shared geometry, which CKA and cosine neighbours do not see rotated
        q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((DIM, LATENT)))
        self.projection = q.T * np.sqrt(DIM / LATENT)  # (LATENT, DIM); signal of unit variance
        self.noise_seed = seed
        if modality == "image":
            self._preprocessor = RowOfImage(_ROWS)

    def _forward(self, batch: Any) -> torch.Tensor:
        if self.modality == "image":
            rows = np.array([int(i) for i in batch])
        else:
            rows = np.array([_ROWS["txt:" + t] for t in batch])
        noise = np.stack(
            [np.random.default_rng([self.noise_seed, int(i)]).standard_normal(DIM) for i in rows]
        )
        s = self.strength  # the share of each column's variance that is the shared latent
        signal = _latent(rows) @ self.projection  # (B, DIM)
        feats = np.sqrt(s) * signal + np.sqrt(1 - s) * noise  # (B, DIM)
        return torch.from_numpy(feats).float()

    def weights_identity(self) -> str:
        return f"planted:{self.noise_seed}"
