"""alignkit: choose which frozen vision and text encoders to align before paying for training.

Public API (imported lazily, so ``import alignkit`` stays cheap)::

    create_encoder("st:sentence-transformers/all-MiniLM-L6-v2")   # -> Encoder
    list_encoders("timm:*dino*")                                   # -> list[EncoderInfo]
    load_probe("flickr8k:test", n=500)                             # -> ProbeSet
    extract_features(encoder, probe)                               # -> FeatureSet (cached)
    linear_cka(x, y), mutual_knn(x, y, k=10), METRICS              # metrics
    score_pairs(vision_features, text_features, metrics)           # -> long-form DataFrame
    rank_encoders(RankConfig(...)) or rank_encoders(vision=[...], probe="synthetic")  # -> Ranking
    load_aligned("runs/x").similarity(images, texts)               # a trained pair
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_EXPORTS: dict[str, str] = {
    # errors and devices
    "AlignkitError": "alignkit.errors",
    "resolve_device": "alignkit._device",
    # encoders
    "Encoder": "alignkit.encoders",
    "EncoderInfo": "alignkit.encoders",
    "create_encoder": "alignkit.encoders",
    "list_encoders": "alignkit.encoders",
    "ENCODER_SETS": "alignkit.encoders",
    # probes and features
    "ProbeSet": "alignkit.probes",
    "ProbeRow": "alignkit.probes",
    "load_probe": "alignkit.probes",
    "FeatureSet": "alignkit.features",
    "extract_features": "alignkit.features",
    "FeatureCache": "alignkit.features",
    # metrics
    "METRICS": "alignkit.metrics",
    "linear_cka": "alignkit.metrics",
    "rbf_cka": "alignkit.metrics",
    "minibatch_cka": "alignkit.metrics",
    "mutual_knn": "alignkit.metrics",
    "cknna": "alignkit.metrics",
    "svcca": "alignkit.metrics",
    "permutation_null": "alignkit.metrics",
    "subsample_interval": "alignkit.metrics",
    "score_pairs": "alignkit.metrics",
    "SCORE_COLUMNS": "alignkit.metrics",
    # ranking
    "rank_encoders": "alignkit.ranking",
    "Ranking": "alignkit.ranking",
    "RankConfig": "alignkit.config",
    # trained pairs
    "load_aligned": "alignkit.aligned",
    "AlignedModel": "alignkit.aligned",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'alignkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
