"""Features of one encoder of a ranking run, from the feature cache when they are there: what
:mod:`alignkit.ranking.pipeline` extracts and :func:`alignkit.ranking.folder.read` brings back."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from alignkit.config import EncoderEntry, RankConfig
from alignkit.errors import AlignkitError

if TYPE_CHECKING:  # pragma: no cover
    from alignkit.features import FeatureSet
    from alignkit.probes import ProbeSet

log = logging.getLogger("alignkit.ranking")


def _extract(
    entry: EncoderEntry,
    probe: ProbeSet,
    config: RankConfig,
    progress: bool,
    layer: str | None = None,
) -> FeatureSet:
    """Features of one encoder (from the cache when there); ``layer`` overrides the entry's."""
    from alignkit.features import extract_features

    options = entry.kwargs
    if layer is not None:
        options["layer"] = layer
    # the spec and its options, not a built encoder: a cache hit then builds no model
    return extract_features(
        entry.spec,
        probe,
        options=options,
        batch_size=config.extract_batch,
        caption_policy=config.caption_policy,
        seed=config.seed,
        cache=config.cache,
        device=config.device,
        progress=progress,
        skip_bad=config.skip_bad,
    )


def _layerwise(
    entry: EncoderEntry, fs: FeatureSet, probe: ProbeSet, config: RankConfig, progress: bool
) -> FeatureSet:
    """``(L, n, d)`` features of every layer; an encoder without layers gives its output as one."""
    from alignkit.features import FeatureSet as _FS

    if fs.layered:
        return fs
    if "layer" not in entry.kwargs:
        try:
            return _extract(entry, probe, config, progress, layer="all")
        except AlignkitError as exc:  # this backend has no layer axis
            log.warning(
                "%s: no layer-wise features (%s); its output is its only layer", entry.label, exc
            )
    return _FS(fs.features[None], fs.ids, fs.provenance)
