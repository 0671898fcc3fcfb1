"""The arguments of an extraction, checked before any model work: the probe, batch and worker
counts and caption policy, the encoder (a spec built on its device, or an instance checked
against ``device``), the cache; and the provenance an extraction records."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from alignkit.errors import AlignkitError, unknown_key
from alignkit.features import _distributed
from alignkit.features.cache import FeatureCache, effective_precision
from alignkit.probes.base import CAPTION_POLICIES

#: ``extract_features`` caption policies: the probe's one-row-per-image policies, plus ``all``
#: (one FeatureSet row per caption; see :attr:`FeatureSet.caption_image`).
EXTRACT_POLICIES = (*CAPTION_POLICIES, "all")

if TYPE_CHECKING:
    from alignkit.encoders.base import Encoder
    from alignkit.probes.base import ProbeSet


def _spec_device(device: str | torch.device) -> str | torch.device:
    """The device a spec-built encoder is built on (under torchrun, ``auto`` is the rank's GPU)."""
    if device == "auto" and _distributed.local_cuda_device() is not None:
        return _distributed.local_cuda_device()
    return device


def _resolve_encoder(
    encoder: Encoder | str, device: str | torch.device, options: Mapping[str, Any] | None = None
) -> Encoder:
    from alignkit._device import resolve_device

    if isinstance(encoder, str):
        try:
            from alignkit.encoders import create_encoder
        except ImportError as exc:  # pragma: no cover - the encoders package is part of alignkit
            raise AlignkitError(f"cannot build encoder {encoder!r}: {exc}") from exc
        return create_encoder(encoder, **{"device": _spec_device(device), **(options or {})})
    for attr in ("name", "modality", "dim", "device", "forward", "preprocess", "collate"):
        if not hasattr(encoder, attr):
            raise AlignkitError(
                f"encoder must be an alignkit Encoder or a spec string: got "
                f"{type(encoder).__name__} "
                f"without {attr!r}"
            )
    if device not in ("auto", None):
        wanted = resolve_device(device)
        have = torch.device(encoder.device)
        if wanted.type != have.type or (
            wanted.index is not None and have.index is not None and wanted.index != have.index
        ):
            raise AlignkitError(
                f"{encoder.name} runs on {have}, but device={str(device)!r} was asked for: "
                f"build the "
                f"encoder on that device, or pass device='auto'"
            )
    return encoder


def _check_run(
    probe: ProbeSet, batch_size: int, num_workers: int | None, caption_policy: str
) -> None:
    """The checks that need no encoder (before a cache lookup or a build)."""
    from alignkit.probes.base import ProbeSet

    if not isinstance(probe, ProbeSet):
        raise AlignkitError(
            f"probe must be a ProbeSet (see alignkit.load_probe): got {type(probe).__name__}"
        )
    if len(probe) == 0:
        raise AlignkitError(f"probe {probe.name} has no rows to extract features from")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise AlignkitError(f"batch_size must be a positive integer: got {batch_size!r}")
    if num_workers is not None and (
        isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0
    ):
        raise AlignkitError(f"num_workers must be None or an integer >= 0: got {num_workers!r}")
    if caption_policy not in EXTRACT_POLICIES:
        raise unknown_key("caption policy", caption_policy, EXTRACT_POLICIES)


def _check_arguments(
    enc: Encoder,
    probe: ProbeSet,
    batch_size: int | None = None,
    num_workers: int | None = None,
    caption_policy: str = "first",
) -> None:
    """The checks that need the built encoder, before any model work (with ``batch_size``
    given, also those of :func:`_check_run`)."""
    if batch_size is not None:
        _check_run(probe, batch_size, num_workers, caption_policy)
    if enc.modality not in ("image", "text"):
        raise AlignkitError(f"{enc.name}: modality must be 'image' or 'text': got {enc.modality!r}")
    if enc.modality == "text":  # fail before any model work, naming the row
        for row in probe.rows:
            if not row.captions or not all(isinstance(c, str) and c.strip() for c in row.captions):
                raise AlignkitError(
                    f"probe {probe.name}: row {row.id!r} needs one or more non-empty captions: "
                    f"got {list(row.captions)!r}"
                )


def _resolve_cache(cache: bool | str | Path | FeatureCache | None) -> FeatureCache | None:
    if cache is True:
        return FeatureCache()
    if cache is False or cache is None:
        return None
    if isinstance(cache, FeatureCache):
        return cache
    if isinstance(cache, (str, Path)):
        return FeatureCache.at(cache)  # a cache root, like $ALIGNKIT_CACHE_DIR
    raise AlignkitError(
        f"cache must be True, False, a folder or a FeatureCache: got {type(cache).__name__}"
    )


def _provenance(
    enc: Encoder, probe: ProbeSet, caption_policy: str, seed: int, key: str
) -> dict[str, Any]:
    """What a FeatureSet records of where it came from."""
    return {
        "encoder": enc.name,
        "modality": enc.modality,
        "weights": enc.weights_identity(),
        "config": enc.config(),
        "pooling": getattr(enc, "pooling", "default"),
        "layer": getattr(enc, "layer", "last"),
        "precision": effective_precision(enc),
        **_origin(enc, probe, caption_policy, seed, key),
    }


def _origin(
    enc: Encoder, probe: ProbeSet, caption_policy: str, seed: int, key: str
) -> dict[str, Any]:
    """The end of every extraction's provenance (features and tokens): the caption policy and
    seed of a text encoder, the probe, alignkit's version, the time and the cache key."""
    import alignkit

    text = enc.modality == "text"
    return {
        "caption_policy": caption_policy if text else None,
        "seed": int(seed) if text and caption_policy == "random" else None,
        "probe": probe.name,
        "probe_fingerprint": probe.fingerprint,
        "alignkit_version": alignkit.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cache_key": key,
    }
