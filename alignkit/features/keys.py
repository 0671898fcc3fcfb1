"""The keys of the feature cache: a hash of what changes the numbers of an extraction and nothing
else (:func:`feature_key`), and the cheap key found without building the encoder
(:func:`lookup_key`). The store itself is :mod:`alignkit.features.cache`."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import torch

from alignkit.errors import AlignkitError

if TYPE_CHECKING:
    from alignkit.encoders.base import Encoder
    from alignkit.probes.base import ProbeSet


#: Bump when the stored layout or the meaning of stored numbers changes; older entries are rebuilt.
FORMAT_VERSION = 1


#: Enters the key of image encoders only: bump when the features of image encoders change with no
#: other key field changing, so older image entries are never reused (text entries stay valid).
#: 2: images decoded as a viewer shows them (:mod:`alignkit.images`: EXIF orientation, 16-bit
#: greyscale, alpha on white), and encoders frozen before any forward (``torchvision:``'s width
#: probe no longer moves its BatchNorm statistics).
IMAGE_FEATURES_VERSION = 2


def effective_precision(encoder: Encoder) -> str:
    """The float format the model really computes in: ``fp32`` on CPU (autocast is off there),
    else what :func:`alignkit._device.autocast` picks on the GPU. It changes the numbers, so it is
    part of the key; the device itself is not."""
    precision = getattr(encoder, "precision", "auto")
    device = getattr(encoder, "device", torch.device("cpu"))
    return _precision(device, precision)


def key_fields(
    encoder: Encoder, probe: ProbeSet, caption_policy: str = "first", seed: int = 0
) -> dict[str, Any]:
    """Everything that changes the numbers of an extraction, as a JSON-able dict.

    Encoder spec, weights identity, ``encoder.config()`` (pooling, layer, preprocessing), the
    effective precision, the probe fingerprint and the feature format version; for image encoders
    :data:`IMAGE_FEATURES_VERSION`; for text encoders the caption policy, plus the seed when the
    policy is ``random``. Not the batch size, device, worker count or progress bar.
    """
    fields: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "encoder": encoder.name,
        "modality": encoder.modality,
        "weights": encoder.weights_identity(),
        "config": encoder.config(),
        "precision": effective_precision(encoder),
        "probe": probe.fingerprint,
    }
    if encoder.modality == "image":
        fields["image_features"] = IMAGE_FEATURES_VERSION
    if encoder.modality == "text":
        fields["caption_policy"] = caption_policy
        if caption_policy == "random":
            fields["seed"] = int(seed)
    return fields


def feature_key(
    encoder: Encoder, probe: ProbeSet, caption_policy: str = "first", seed: int = 0
) -> str:
    """The cache key (32 hex digits) of ``encoder`` on ``probe``: a sha256 of :func:`key_fields`."""
    fields = key_fields(encoder, probe, caption_policy, seed)
    try:
        text = json.dumps(fields, sort_keys=True)
    except TypeError as exc:
        raise AlignkitError(
            f"{encoder.name}: config() and weights_identity() must be JSON-serialisable to form a "
            f"cache key: got {fields['config']!r} ({exc})"
        ) from exc
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def lookup_key(
    spec: str,
    options: dict[str, Any],
    probe: ProbeSet,
    caption_policy: str = "first",
    seed: int = 0,
) -> str | None:
    """A key (32 hex digits) for :meth:`FeatureCache.recall` found without building the encoder:
    sha256 of :func:`alignkit.encoders.identity.encoder_identity` (spec, options incl. device,
    weights, libraries, code), the effective precision, the probe fingerprint, the caption policy
    and seed. None when the encoder has no cheap identity (it must be built)."""
    from alignkit._device import resolve_device
    from alignkit.encoders.identity import encoder_identity

    identity = encoder_identity(spec, **options)
    if identity is None:
        return None
    device = resolve_device(options.get("device", "auto"))
    fields = {
        "format": FORMAT_VERSION,
        "encoder": identity,
        "precision": _precision(device, options.get("precision", "auto")),
        "probe": probe.fingerprint,
        "caption_policy": caption_policy,
        "seed": int(seed),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def _precision(device: torch.device, precision: str) -> str:
    if torch.device(device).type != "cuda" or precision == "fp32":
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return str(precision)
