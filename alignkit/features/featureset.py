"""FeatureSet: what an encoder made of a probe set, with where it came from."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignkit.errors import AlignkitError


@dataclass(frozen=True)
class FeatureSet:
    """Features of one encoder on the rows of one probe set.

    Attributes:
        features: ``(n, d)`` float32 CPU tensor, or ``(n_layers, n, d)`` for layer-wise features.
        ids: the probe row ids, in row order (length n).
        provenance: encoder spec, weights identity, options (pooling, layer, caption policy),
            probe fingerprint, alignkit version. JSON-serialisable.
    """

    features: torch.Tensor
    ids: tuple[str, ...]
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.features.ndim not in (2, 3):
            raise AlignkitError(
                f"features must be (n, d) or (layers, n, d): got shape {tuple(self.features.shape)}"
            )
        if self.features.shape[-2] != len(self.ids):
            raise AlignkitError(
                f"features and ids must describe the same rows: got {self.features.shape[-2]} "
                f"feature rows and {len(self.ids)} ids"
            )

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.features.shape[-1])

    @property
    def layered(self) -> bool:
        return self.features.ndim == 3

    @property
    def n_layers(self) -> int:
        return int(self.features.shape[0]) if self.layered else 1

    @property
    def encoder(self) -> str:
        return str(self.provenance.get("encoder", "?"))

    @property
    def modality(self) -> str:
        return str(self.provenance.get("modality", "?"))

    def layer(self, index: int) -> FeatureSet:
        """One layer of a layer-wise FeatureSet, as an ``(n, d)`` FeatureSet."""
        if not self.layered:
            raise AlignkitError(
                f"{self.encoder} features have no layer axis (shape {tuple(self.features.shape)})"
            )
        prov = {**self.provenance, "layer": index}
        return FeatureSet(self.features[index], self.ids, prov)

    def check_same_rows(self, other: FeatureSet) -> None:
        """Two FeatureSets are comparable only when built on the same probe rows, in the same
        order."""
        if self.ids != other.ids:
            raise AlignkitError(
                f"{self.encoder} and {other.encoder} must describe the same probe rows: "
                f"got {self.n} rows and {other.n} rows"
                + ("" if self.n != other.n else " with different ids or order")
            )

    def save(self, path: str | Path) -> Path:
        """Write to a ``.safetensors`` file (tensor ``features``; ids and provenance as JSON in the
        header metadata), atomically. :meth:`load` reads it back."""
        from alignkit.features._io import save_tensor

        path = Path(path)
        metadata = {
            "ids": json.dumps(list(self.ids)),
            "provenance": json.dumps(self.provenance, sort_keys=True, default=str),
        }
        save_tensor(path, self.features, metadata)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        """Read a file written by :meth:`save` (or a feature cache entry)."""
        from alignkit.features._io import load_tensor

        try:
            tensor, meta = load_tensor(Path(path))
            ids = tuple(json.loads(meta["ids"]))
            provenance = json.loads(meta.get("provenance", "{}"))
        except (ValueError, KeyError, OSError) as exc:
            raise AlignkitError(
                f"expected a FeatureSet .safetensors file (tensor 'features', ids in the metadata) "
                f"at {path}: {exc}"
            ) from exc
        return cls(tensor, ids, provenance)
