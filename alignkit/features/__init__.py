"""Features of probe sets: extraction, the content-addressed cache, and the FeatureSet they give.

* :class:`FeatureSet` (``featureset.py``): ``(n, d)`` or ``(layers, n, d)`` features with probe ids
  and provenance.
* :func:`extract_features` (``extract.py``): batched extraction with DataLoader workers, resumable
  shards and ``torchrun`` sharding across ranks.
* :class:`FeatureCache` (``cache.py``): safetensors + JSON sidecar entries keyed by a hash of
  everything that changes the numbers, written atomically.
"""

from __future__ import annotations

from alignkit.features.cache import (
    FORMAT_VERSION,
    CacheEntry,
    CacheLocation,
    FeatureCache,
    feature_key,
    locate_cache,
    resolve_cache_root,
)
from alignkit.features.extract import (
    ExtractionInterrupted,
    cached_features,
    default_num_workers,
    extract_features,
)
from alignkit.features.featureset import FeatureSet

__all__ = [
    "FORMAT_VERSION",
    "CacheEntry",
    "CacheLocation",
    "ExtractionInterrupted",
    "FeatureCache",
    "FeatureSet",
    "cached_features",
    "default_num_workers",
    "extract_features",
    "feature_key",
    "locate_cache",
    "resolve_cache_root",
]
