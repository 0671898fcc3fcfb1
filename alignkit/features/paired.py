"""From FeatureSets to the projector trainer's :class:`~alignkit.training.PairedFeatures`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from alignkit.errors import AlignkitError
from alignkit.features.featureset import FeatureSet
from alignkit.features.tokens import TokenFeatureSet

if TYPE_CHECKING:
    from alignkit.probes.base import ProbeRow, ProbeSet
    from alignkit.training.data import PairedFeatures

AnyFeatures = FeatureSet | TokenFeatureSet


def paired_features(image: AnyFeatures, text: AnyFeatures) -> PairedFeatures:
    """Pair image features with the text features of the same probe rows.

    Args:
        image: row-level features of an image encoder: a pooled :class:`FeatureSet` ``(n, d_v)``
            or a :class:`TokenFeatureSet` ``(n, T, d_v)``. A token set whose provenance names
            ``prefix_tokens`` = P > 0 (ViT CLS/register tokens first) gives the first token as
            ``cls`` and tokens P.. as the patch tokens (views: a memory map stays a memory map).
        text: features of a text encoder on the same probe rows: row-level (one caption per
            image) or caption-level (``caption_policy="all"``: several captions per image).

    Returns:
        PairedFeatures with ``text_to_image`` from :attr:`FeatureSet.caption_image` and
        ``image_ids`` the probe row ids.

    Raises:
        AlignkitError: modalities swapped, layer-wise features, or the two sets describe
            different probe rows (ids, order, or probe fingerprint).
    """
    from alignkit.training.data import PairedFeatures, TokenFeatures

    for name, fs, want in (("image", image, "image"), ("text", text, "text")):
        if not isinstance(fs, (FeatureSet, TokenFeatureSet)):
            raise AlignkitError(
                f"{name} must be a FeatureSet or TokenFeatureSet: got {type(fs).__name__}"
            )
        if fs.modality not in (want, "?"):
            raise AlignkitError(
                f"{name} must hold {want} features: got {fs.modality} features of {fs.encoder}"
            )
        if isinstance(fs, FeatureSet) and fs.layered:
            raise AlignkitError(
                f"{name} features of {fs.encoder} are layer-wise {tuple(fs.features.shape)}: "
                "pick one layer first (FeatureSet.layer(i))"
            )
    if image.per_caption:
        raise AlignkitError("image features must have one row per probe row, not per caption")
    fp_i = image.provenance.get("probe_fingerprint")
    fp_t = text.provenance.get("probe_fingerprint")
    if fp_i and fp_t and fp_i != fp_t:
        raise AlignkitError(
            f"image and text features come from different probes (fingerprints {fp_i} and "
            f"{fp_t}): extract both on the same probe"
        )
    if tuple(image.ids) != tuple(text.row_ids):
        raise AlignkitError(
            f"image and text features must describe the same probe rows in the same order: got "
            f"{image.n} image rows and captions of {len(text.row_ids)} rows"
        )
    return PairedFeatures(
        image=_image_side(image, TokenFeatures),
        text=_text_side(text, TokenFeatures),
        text_to_image=text.caption_image.to(torch.int64),
        image_ids=list(image.ids),
    )


def _pooled(fs: FeatureSet) -> torch.Tensor:
    """The features as they are stored when float16/float32 (a memory map stays a map: training
    reads and upcasts one batch at a time), else as float32."""
    x = fs.features
    return x if x.dtype in (torch.float16, torch.float32) else x.float()


def _image_side(fs: AnyFeatures, token_cls: type):
    if isinstance(fs, FeatureSet):
        return _pooled(fs)
    prefix = int(fs.provenance.get("prefix_tokens") or 0)
    if prefix == 0:
        return token_cls(fs.tokens, fs.mask)
    return token_cls(fs.tokens[:, prefix:], fs.mask[:, prefix:], fs.tokens[:, 0])


def _text_side(fs: AnyFeatures, token_cls: type):
    if isinstance(fs, FeatureSet):
        return _pooled(fs)
    return token_cls(fs.tokens, fs.mask)


def row_identity(row: ProbeRow) -> tuple[str, tuple[str, ...]]:
    """What makes two probe rows the same row apart from their image bytes: the row id and the
    captions. Ids alone are not enough: img2dataset and CLIP_benchmark number their keys from
    000000000 in every download, so two unrelated sets share ids; a re-encoded copy of a row keeps
    both (its image is then another file, so its image digest differs)."""
    return row.id, tuple(row.captions)


def ids_apart(train: PairedFeatures, val: PairedFeatures | None) -> PairedFeatures | None:
    """``val`` with its image ids marked (``val:<id>``) when some equal training ids; for sets
    :func:`check_disjoint` passed, whose equal ids are then two sets numbering their keys alike
    (img2dataset starts every download at 000000000): the trainer, which sees ids alone, would
    refuse them after the extraction."""
    import dataclasses

    if val is None or not set(train.image_ids) & set(val.image_ids):
        return val
    return dataclasses.replace(val, image_ids=[f"val:{i}" for i in val.image_ids])


def check_disjoint(train: ProbeSet, val: ProbeSet) -> None:
    """Refuse a validation probe that shares rows with the training probe, by row id and captions
    (:func:`row_identity`) or by image content (sha256 of the image), since that inflates
    validation recall.

    Raises:
        AlignkitError: naming how many images are shared and one example.
    """
    seen = {row_identity(row) for row in train.rows}
    shared_ids = [row.id for row in val.rows if row_identity(row) in seen]
    if shared_ids:
        raise AlignkitError(
            f"the validation probe {val.name} shares {len(shared_ids)} rows with the training "
            f"probe {train.name} (e.g. id {sorted(shared_ids)[0]!r}, same id and captions): that "
            "would inflate the results; pass a disjoint --val (e.g. flickr8k:dev for "
            "flickr8k:train)"
        )
    digests = {row.image_digest(): row.id for row in train.rows}
    for row in val.rows:
        if row.image_digest() in digests:
            raise AlignkitError(
                f"the validation probe {val.name} holds an image of the training probe "
                f"{train.name} (val row {row.id!r} = train row {digests[row.image_digest()]!r}, "
                "same image content): that would inflate the results; pass a disjoint --val"
            )


__all__ = ["check_disjoint", "ids_apart", "paired_features", "row_identity"]
