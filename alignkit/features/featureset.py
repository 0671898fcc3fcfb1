"""FeatureSet: what an encoder made of a probe set, with where it came from."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from alignkit.errors import AlignkitError

if TYPE_CHECKING:
    from alignkit.probes.base import ProbeSet

CAPTION_SEP = "#"
"""Caption-level rows (``caption_policy="all"``) have ids ``f"{row_id}#{j}"``, j the caption's
position in its row (0-based, official order)."""


def caption_ids(probe: ProbeSet) -> tuple[str, ...]:
    """Ids of every caption of every row of ``probe``, in row order then caption order."""
    return tuple(
        f"{row.id}{CAPTION_SEP}{j}" for row in probe.rows for j in range(len(row.captions))
    )


def row_ids_of(ids: tuple[str, ...]) -> tuple[str, ...]:
    """Distinct probe row ids of caption ids ``"<row id>#<j>"``, in order of first appearance."""
    return tuple(dict.fromkeys(i.rpartition(CAPTION_SEP)[0] for i in ids))


def caption_image_of(ids: tuple[str, ...]) -> torch.Tensor:
    """LongTensor ``(len(ids),)``: each caption id's row index in :func:`row_ids_of`."""
    index = {rid: k for k, rid in enumerate(row_ids_of(ids))}
    return torch.tensor([index[i.rpartition(CAPTION_SEP)[0]] for i in ids], dtype=torch.long)


class ProvenanceMixin:
    """What a feature set knows from its ``ids`` and ``provenance``; shared by
    :class:`FeatureSet` and :class:`~alignkit.features.tokens.TokenFeatureSet` (which give
    ``ids``, ``provenance`` and ``n``)."""

    ids: tuple[str, ...]
    provenance: dict[str, Any]

    @property
    def encoder(self) -> str:
        return str(self.provenance.get("encoder", "?"))

    @property
    def modality(self) -> str:
        return str(self.provenance.get("modality", "?"))

    @property
    def per_caption(self) -> bool:
        """True for a caption-level set (text extracted with ``caption_policy="all"``)."""
        return self.provenance.get("caption_policy") == "all"

    @property
    def row_ids(self) -> tuple[str, ...]:
        """The probe row ids these features describe: ``ids`` itself for a row-level set; for a
        caption-level set the distinct rows of its captions, in order of first appearance."""
        return row_ids_of(self.ids) if self.per_caption else self.ids

    @property
    def caption_image(self) -> torch.Tensor:
        """For each row of a caption-level set, the index of its probe row in :attr:`row_ids`:
        LongTensor ``(n_captions,)``, non-decreasing. A row-level set maps row i to i."""
        return caption_image_of(self.ids) if self.per_caption else torch.arange(self.n)


@dataclass(frozen=True)
class FeatureSet(ProvenanceMixin):
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

    def layer(self, index: int) -> FeatureSet:
        """One layer of a layer-wise FeatureSet, as an ``(n, d)`` FeatureSet."""
        if not self.layered:
            raise AlignkitError(
                f"{self.encoder} features have no layer axis (shape {tuple(self.features.shape)})"
            )
        prov = {**self.provenance, "layer": index}
        return FeatureSet(self.features[index], self.ids, prov)

    def check_same_rows(self, other: FeatureSet) -> None:
        """Two FeatureSets are comparable only when built on the same probe rows, in order."""
        if self.ids != other.ids:
            raise AlignkitError(
                f"{self.encoder} and {other.encoder} must describe the same probe rows: "
                f"got {self.n} rows and {other.n} rows"
                + ("" if self.n != other.n else " with different ids or order")
            )

    def save(self, path: str | Path) -> Path:
        """Write to a ``.safetensors`` file (tensor ``features``, float32, or float16 when they are;
        ids and provenance as JSON in the header metadata), atomically. :meth:`load` reads it
        back."""
        from alignkit.features._io import save_tensor

        path = Path(path)
        metadata = {
            "ids": json.dumps(list(self.ids)),
            "provenance": json.dumps(self.provenance, sort_keys=True, default=str),
        }
        half = self.features.dtype == torch.float16  # a float16 store's features stay float16
        save_tensor(path, self.features, metadata, torch.float16 if half else torch.float32)
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
