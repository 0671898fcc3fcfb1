"""Rows skipped during extraction because their image could not be decoded (``skip_bad``).

Inside an extraction, its shards and its cache entry a skipped row keeps its place and holds
NaN (every layer, every dimension): batches, shards and ranks stay cut by the row index alone,
and the entry still describes every row of its probe, so a rerun, a resume or a subsample finds
it. The entry's provenance lists the skipped rows (``skipped_rows``: ``{"id", "where",
"reason"}``). What :func:`alignkit.extract_features` returns never holds them:
:func:`settle` drops them with ``skip_bad`` (the FeatureSet then has fewer ids than the probe,
and its provenance keeps the list), or raises naming the first. :func:`without_skipped` gives
the probe and the other modality's features the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from alignkit._words import counted
from alignkit.errors import AlignkitError

if TYPE_CHECKING:
    from alignkit.features.featureset import FeatureSet
    from alignkit.probes.base import ProbeSet

log = logging.getLogger("alignkit.features.extract")

SKIPPED = "skipped_rows"  # the provenance key
#: How many skipped rows a run record names (the count is always there).
FIRST = 5


class BadImage(AlignkitError):
    """An image extraction cannot decode, without ``skip_bad`` (one line: the row, its file or
    shard and key, and what to pass)."""


EARLIER = "unreadable image (skipped by an earlier extraction of these rows)"


def nan_rows(features: torch.Tensor) -> list[int]:
    """Indices of the rows of ``(n, d)`` or ``(L, n, d)`` features that are NaN throughout."""
    empty = torch.isnan(features).all(dim=-1)  # (n,) or (L, n)
    if empty.ndim == 2:
        empty = empty.all(dim=0)
    return torch.nonzero(empty).flatten().tolist()


def mark(fs: FeatureSet, found: Sequence[Mapping[str, str]]) -> FeatureSet:
    """``fs`` (a whole extraction, skipped rows NaN) with ``provenance["skipped_rows"]``: its
    NaN rows, with the reasons ``found`` gives (rows skipped by an earlier run resumed from its
    shards get :data:`EARLIER`). Unchanged when no row is NaN."""
    from alignkit.features.featureset import FeatureSet

    provenance = marked(fs.provenance, fs.ids, nan_rows(fs.features), found)
    return fs if provenance is fs.provenance else FeatureSet(fs.features, fs.ids, provenance)


def marked(
    provenance: dict[str, Any],
    ids: Sequence[str],
    rows: Sequence[int],
    found: Sequence[Mapping[str, str]],
) -> dict[str, Any]:
    """``provenance`` with ``skipped_rows`` listing ``rows`` (indices into ``ids``, the NaN rows
    of an extraction), the reasons from ``found``; the same object when ``rows`` is empty (an
    extraction streamed into the cache shard by shard finds its NaN rows shard by shard)."""
    if not rows:
        return provenance
    known = {d["id"]: dict(d) for d in found}
    skipped = [known.get(ids[i], {"id": ids[i], "where": "", "reason": EARLIER}) for i in rows]
    return {**provenance, SKIPPED: skipped}


def settle(fs: FeatureSet, probe_name: str, skip_bad: bool) -> FeatureSet:
    """What an extraction returns: ``fs`` without its skipped rows (``skip_bad``), or an error.

    Raises:
        AlignkitError: ``fs`` has skipped rows and ``skip_bad`` is False (one line naming the
            first row, its file or shard and key, and what to pass).
    """
    from alignkit.features.featureset import FeatureSet

    if not fs.provenance.get(SKIPPED):  # the common case: nothing to look at
        return fs
    rows = set(nan_rows(fs.features))
    if not rows:  # a part of an entry (another probe's, a subsample) without its skipped rows
        provenance = {k: v for k, v in fs.provenance.items() if k != SKIPPED}
        return FeatureSet(fs.features, fs.ids, provenance)
    listed = {d["id"]: d for d in fs.provenance[SKIPPED]}
    skipped = [
        listed.get(fs.ids[i], {"id": fs.ids[i], "where": "", "reason": EARLIER})
        for i in sorted(rows)
    ]
    if not skip_bad:
        first = skipped[0]
        where = f" ({first['where']})" if first.get("where") else ""
        raise BadImage(
            f"probe {probe_name}: cannot read the image of row {first['id']!r}{where}: "
            f"{first['reason']} ({counted(len(skipped), 'such row')}); pass skip_bad=True to "
            "skip them"
        )
    log.warning(
        "probe %s: %s: %d row(s) skipped, their images cannot be read (skip_bad=True); first: %r",
        probe_name, fs.encoder, len(skipped), skipped[0]["id"],
    )  # fmt: skip
    keep = [i for i in range(fs.n) if i not in rows]
    kept = fs.features.index_select(-2, torch.tensor(keep, dtype=torch.long))
    provenance = {**fs.provenance, SKIPPED: skipped}
    return FeatureSet(kept, tuple(fs.ids[i] for i in keep), provenance)


def skipped_rows(*feature_sets: FeatureSet | None) -> list[dict[str, str]]:
    """The rows any of ``feature_sets`` skipped, each once, in the order first met."""
    seen: dict[str, dict[str, str]] = {}
    for fs in feature_sets:
        for d in (fs.provenance.get(SKIPPED) or []) if fs is not None else []:
            seen.setdefault(d["id"], dict(d))
    return list(seen.values())


def skipped_note(rows: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """What a run record (run.json, metrics.json) says of skipped rows: their count and the
    first :data:`FIRST` with their reasons."""
    return {"count": len(rows), "first": [dict(d) for d in rows[:FIRST]]}


def without_skipped(
    probe: ProbeSet, feature_sets: Mapping[str, FeatureSet]
) -> tuple[ProbeSet, dict[str, FeatureSet]]:
    """``probe`` without the rows any of ``feature_sets`` skipped (they join ``probe.dropped``,
    as ``load_probe(skip_bad=True)`` drops a row it finds bad), and every feature set as the
    rows of that probe, in its order. Unchanged when none skipped a row."""
    from alignkit.features.featureset import CAPTION_SEP, FeatureSet

    skipped = skipped_rows(*feature_sets.values())
    gone = ({d["id"] for d in skipped} & set(probe.ids)) - {d["id"] for d in probe.dropped}
    if not gone:
        return probe, dict(feature_sets)
    keep = [i for i, row in enumerate(probe.rows) if row.id not in gone]
    new = [d for d in skipped if d["id"] in gone]
    kept = probe.subset(keep)
    kept = type(kept)(
        kept.name,
        kept.rows,
        kept.class_names,
        (*probe.dropped, *new),
        kept.content_key,
        kept.root,
        kept.templates,
        probe.rows_available,
    )
    log.info(
        "probe %s: %d row(s) left out of every encoder's features: their images cannot be read",
        probe.name, len(new),
    )  # fmt: skip
    out = {}
    for label, fs in feature_sets.items():  # a caption-level set keeps its rows' captions
        rows_of = fs.ids if not fs.per_caption else [i.rpartition(CAPTION_SEP)[0] for i in fs.ids]
        keep_at = [i for i, row_id in enumerate(rows_of) if row_id not in gone]
        features = fs.features
        if len(keep_at) != fs.n:
            features = features.index_select(-2, torch.tensor(keep_at, dtype=torch.long))
        ids = tuple(fs.ids[i] for i in keep_at)
        provenance = {**fs.provenance, "probe_fingerprint": kept.fingerprint}
        out[label] = FeatureSet(features, ids, provenance)
    return kept, out


__all__ = [
    "SKIPPED",
    "BadImage",
    "skipped_note",
    "mark",
    "nan_rows",
    "settle",
    "skipped_rows",
    "without_skipped",
]
