"""Features of probe sets: extraction, the content-addressed cache, and the FeatureSet they give.

* :class:`FeatureSet` (``featureset.py``): ``(n, d)`` or ``(layers, n, d)`` features with probe ids
  and provenance.
* :func:`extract_features` (``extract.py``): batched extraction with DataLoader workers, resumable
  shards and ``torchrun`` sharding across ranks.
* :func:`extract_tokens` (``tokens.py``): token-level features (float16, memory-mapped) in the
  same cache; ``caption_policy="all"`` gives one row per caption for both.
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
from alignkit.features.featureset import FeatureSet, caption_ids
from alignkit.features.paired import check_disjoint, ids_apart, paired_features
from alignkit.features.tokens import TokenFeatureSet, extract_tokens, read_tokens

__all__ = [
    "CacheEntry",
    "CacheLocation",
    "ExtractionInterrupted",
    "FORMAT_VERSION",
    "FeatureCache",
    "FeatureSet",
    "TokenFeatureSet",
    "cached_features",
    "caption_ids",
    "check_disjoint",
    "ids_apart",
    "default_num_workers",
    "extract_features",
    "extract_tokens",
    "feature_key",
    "locate_cache",
    "paired_features",
    "read_tokens",
    "resolve_cache_root",
]
