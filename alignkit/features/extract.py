"""Batched feature extraction: probe rows -> encoder -> :class:`FeatureSet`, cached and resumable.

How rows become batches is fixed by the row index alone: batch ``b`` is rows
``[b * batch_size, (b + 1) * batch_size)``, a cache shard is every ``shard_batches`` batches (and,
when that takes long, at the first batch boundary ``shard_seconds`` after the last shard), and a
``torchrun`` rank takes a contiguous block of whole batches. So a resumed run, a run on several
ranks and an uninterrupted single run put every row in the same batch and give bitwise the same
features (some models' numbers depend on what else is in the batch, e.g. padding in text models).

An interrupted extraction (Ctrl-C) logs what its shards kept and how to resume, then raises
:class:`ExtractionInterrupted` (a ``KeyboardInterrupt``) carrying that note.

The batches themselves run in :mod:`alignkit.features._work`; the arguments are checked in
:mod:`alignkit.features._arguments`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from alignkit._threads import choose_threads, limit_threads
from alignkit.errors import AlignkitError
from alignkit.features import _distributed
from alignkit.features._arguments import (
    _check_arguments,
    _check_run,
    _provenance,
    _resolve_cache,
    _resolve_encoder,
    _spec_device,
)
from alignkit.features._truncation import check_truncation, recall_truncation
from alignkit.features._work import _Job
from alignkit.features.cache import FeatureCache, feature_key, lookup_key
from alignkit.features.featureset import FeatureSet, caption_ids
from alignkit.features.keys import content_rows, entry_rows
from alignkit.features.skipped import mark, marked, nan_rows, settle
from alignkit.features.store import check_store_dtype, map_tensor, torch_dtype

if TYPE_CHECKING:
    from alignkit.encoders.base import Encoder
    from alignkit.probes.base import ProbeSet

log = logging.getLogger(__name__)


def default_num_workers(device: torch.device | str = "cpu") -> int:
    """DataLoader workers for image decoding and preprocessing.

    On a GPU the forward is fast and decoding is the bottleneck: ``min(8, cores)``. On the CPU the
    model's own threads use every core and decoding a JPEG costs a few percent of a CNN forward,
    so one worker keeps up and more only contend with the model: 1 worker up to 2 cores, else 2.
    (benchmarks/extraction.py on 2 loaded cores: CPU work 1.03x bare with 2 workers at load 10,
    1.20x at load 1-4, where the extra workers make the model's threads wait.)
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    if torch.device(device).type == "cuda":
        return max(1, min(8, cores))
    return 1 if cores <= 2 else 2


# -- public entry point ---------------------------------------------------------------------------
def extract_features(
    encoder: Encoder | str,
    probe: ProbeSet,
    *,
    options: Mapping[str, Any] | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    caption_policy: str = "first",
    seed: int = 0,
    cache: bool | str | Path | FeatureCache = True,
    device: str | torch.device = "auto",
    progress: bool = True,
    distributed: bool | None = None,
    skip_bad: bool = False,
    store_dtype: str = "float32",
) -> FeatureSet:
    """Features of every probe row: images for an image encoder, captions for a text encoder.

    Image rows are decoded and preprocessed (``encoder.preprocess``) in DataLoader worker
    processes, collated, and run through ``encoder.forward`` under ``inference_mode`` (autocast
    and pinned memory on GPU). Text rows give captions per ``caption_policy``: ``"first"``,
    ``"random"`` (one caption per row, chosen by :meth:`ProbeSet.captions` from a hash of ``seed``
    and the row id, so the choice does not depend on other rows), or ``"mean"`` (every caption of
    the row is encoded and the row's embeddings averaged, as the reference code of Maniparambil
    et al. 2024 does), or ``"all"``: one output row per caption, every caption of every row in
    row order (ids ``"<row id>#<j>"``, :attr:`FeatureSet.caption_image` gives each caption's probe
    row), for training with several captions per image.

    An encoder fitted on the texts it is given (``needs_fit``, e.g. ``tfidf:``) and not fitted
    yet is first fitted on every caption of the probe.

    With a cache (the default), a finished extraction is returned without any model work, and an
    interrupted one resumes from its last shard. Given a spec string, a cache hit does not even
    build the encoder: the cache remembers which entry a cheap identity of the spec, its options
    and its weight files led to (:func:`alignkit.features.keys.lookup_key`), and the encoder is
    built only on a miss. In an initialised process group, or under ``torchrun`` with
    ``distributed=True``, the rows are split across ranks and every rank returns the whole set.
    With a cache no features travel between ranks: each rank writes its rows as shards, rank 0
    streams every rank's shards into the entry and every rank returns a memory map of it (ranks
    on several machines must share the cache folder, else the features are gathered as without
    a cache). Without a cache they are all-gathered: every rank holds the whole set in memory.

    Args:
        encoder: an :class:`~alignkit.encoders.base.Encoder`, or a spec for ``create_encoder``.
        probe: the probe rows.
        options: ``create_encoder`` options (``pooling``, ``layer``, backend options) when
            ``encoder`` is a spec; not allowed with an Encoder instance.
        batch_size: rows per forward pass (>= 1). Not part of the cache key.
        num_workers: image DataLoader workers; None -> :func:`default_num_workers`, 0 -> in-process.
        caption_policy: one of ``first``, ``random``, ``mean``, ``all`` (text encoders only).
        seed: chooses the captions of ``random``.
        cache: True (the default cache, ``$ALIGNKIT_CACHE_DIR``), False (no cache), a cache root
            folder (entries under ``<folder>/features``; a features folder is recognised), or a
            :class:`FeatureCache`.
        device: where a spec-built encoder runs (``"auto"``: CUDA, under torchrun the local rank's
            GPU, else CPU). An encoder instance runs where it is.
        progress: show a tqdm bar with items/s (rank 0 only).
        distributed: ``None`` (default): split the rows over the initialised default process
            group if there is one, never create one. ``True``: under torchrun with no group,
            create one for this call (gloo on CPU, NCCL on GPU) and destroy it before returning,
            so a trainer started later in the process does not inherit it. ``False``: never
            split, even in a process group.
        skip_bad: an image that cannot be decoded (unreadable or truncated bytes, not an image,
            zero size, a decompression bomb) is skipped with a warning instead of stopping the
            run: the result then lacks its row (fewer ids than the probe) and lists it in
            ``provenance["skipped_rows"]``; give the other modality's features and the probe
            the same rows with :func:`alignkit.features.skipped.without_skipped`. Without it
            the first such image raises, after the rows before it are saved in the cache's
            shards (a rerun resumes there).
        store_dtype: how the cache stores the features: ``"float32"`` or ``"float16"`` (the
            float32 features rounded to nearest; half the disk and memory). Part of the cache
            key; the features returned are the stored ones (float16 then), also without a cache.

    Returns:
        FeatureSet with ``(n, d)`` (or ``(L, n, d)`` for ``layer="all"``) CPU features in
        ``store_dtype`` (a memory map of the cache entry when read from the cache), the
        probe ids (caption ids for ``all``: n = the number of captions), and provenance
        (encoder spec, weights identity, config, caption policy, probe
        name and fingerprint, alignkit version, created time, cache key).

    Raises:
        AlignkitError: bad arguments (before any model work); an image that cannot be decoded,
            without ``skip_bad`` (one line naming the row, its file or shard and key).
    """
    fs = _extract_features(
        encoder, probe, options, batch_size, num_workers, caption_policy, seed, cache, device,
        progress, distributed, skip_bad, store_dtype,
    )  # fmt: skip
    return settle(fs, probe.name, skip_bad)


def _extract_features(
    encoder: Encoder | str,
    probe: ProbeSet,
    options: Mapping[str, Any] | None,
    batch_size: int,
    num_workers: int | None,
    caption_policy: str,
    seed: int,
    cache: bool | str | Path | FeatureCache,
    device: str | torch.device,
    progress: bool,
    distributed: bool | None,
    skip_bad: bool,
    store_dtype: str,
) -> FeatureSet:
    """:func:`extract_features` before its skipped rows are settled (they are NaN here)."""
    if distributed not in (None, True, False):
        raise AlignkitError(f"distributed must be None, True or False: got {distributed!r}")
    _check_run(probe, batch_size, num_workers, caption_policy)
    check_store_dtype(store_dtype)
    store = _resolve_cache(cache)
    lookup = None
    if isinstance(encoder, str):
        options = {**(options or {}), "device": _spec_device(device)}
        if store is not None and not _distributed.in_process_group():
            lookup = lookup_key(encoder, options, probe, caption_policy, seed, store_dtype)
            hit = _recall(store, lookup, encoder, probe, caption_policy)
            if hit is not None:
                return hit
    elif options:
        raise AlignkitError(
            f"options= are create_encoder options for a spec string; build the encoder with "
            f"them instead: got an Encoder instance and options {sorted(options)}"
        )
    enc = _resolve_encoder(encoder, device, options or {})
    _check_arguments(enc, probe)
    fit_to_probe(enc, probe)
    workers = default_num_workers(enc.device) if num_workers is None else num_workers
    key = feature_key(enc, probe, caption_policy, seed, store_dtype)
    args = (batch_size, workers, caption_policy, seed, progress, lookup, skip_bad, store_dtype)
    if distributed is True:
        with _distributed.process_group(enc.device) as ranks:
            return _extract(enc, probe, store, key, ranks, *args)
    ranks = _distributed.current_ranks(enc.device) if distributed is None else None
    if ranks is None and distributed is None:
        _distributed.warn_unsharded()
    return _extract(enc, probe, store, key, ranks, *args)


def _extract(
    enc: Encoder,
    probe: ProbeSet,
    store: FeatureCache | None,
    key: str,
    ranks: _distributed.Ranks | None,
    batch_size: int,
    workers: int,
    caption_policy: str,
    seed: int,
    progress: bool,
    lookup: str | None = None,
    skip_bad: bool = False,
    store_dtype: str = "float32",
) -> FeatureSet:
    """The extraction itself, over ``ranks`` (None: this process alone); ``lookup``: the memo
    key to remember for the result (see :func:`alignkit.features.keys.lookup_key`)."""
    per_caption = enc.modality == "text" and caption_policy == "all"
    ids = caption_ids(probe) if per_caption else probe.ids
    # found by what the rows encode: the images shown, the texts given
    content = content_rows(enc, probe, caption_policy, seed, store_dtype)
    if store is not None:
        hit = _for_probe(store.lookup(key, ids, content), probe)
        if hit is not None and enc.modality == "text" and "cached_from" in hit.provenance:
            cut = check_truncation(enc, probe, caption_policy, seed, warn=False)  # these texts'
            hit = FeatureSet(hit.features, hit.ids, {**_untruncated(hit.provenance), **cut})
        usable = hit is not None
        if ranks is not None:  # every rank must take the same branch: all hit, or all extract
            usable = _distributed.all_true(usable, ranks)
        if usable:
            log.info("%s on %s: %d rows from the feature cache", enc.name, probe.name, hit.n)
            recall_truncation(hit.provenance, probe)
            if lookup is not None and "cached_from" not in hit.provenance:
                store.remember(lookup, hit.provenance.get("cache_key", key))  # its own entry
            return hit

    main = ranks is None or ranks.is_main
    cut = check_truncation(enc, probe, caption_policy, seed, warn=main)  # {} without a limit
    blocks = _distributed.row_blocks(len(ids), batch_size, ranks.world if ranks else 1)
    start, stop = blocks[ranks.rank if ranks else 0]
    job = _Job(
        enc=enc,
        probe=probe,
        batch_size=batch_size,
        workers=workers,
        caption_policy=caption_policy,
        seed=seed,
        store=store,
        key=key,
        progress=progress and (ranks is None or ranks.is_main),
        label=enc.name if ranks is None else f"{enc.name} [rank 0 of {ranks.world}]",
        skip_bad=skip_bad,
        store_dtype=store_dtype,
    )
    streamed = ranks is None and store is not None  # the entry is written from its shards
    image = enc.modality == "image"
    try:
        with limit_threads(choose_threads()):  # model forwards: large work, the free CPUs
            pieces = job.run_pieces(start, stop)  # {first row: (..., rows, d)}
    except KeyboardInterrupt as exc:
        note = _interrupted_note(enc.name, probe, store, key, start, stop)
        log.warning("%s", note)
        raise ExtractionInterrupted(note) from exc
    provenance = {**_provenance(enc, probe, caption_policy, seed, key), **cut}
    provenance["store_dtype"] = store_dtype
    # image rows skipped now or by an earlier run are NaN: this process's, by index into ids
    nan = [a + i for a in sorted(pieces) for i in nan_rows(pieces[a])] if image else []
    found = (nan, job.skipped)
    result = None
    if streamed:
        provenance = marked(provenance, ids, *found)
        result = _commit_streamed(store, key, ids, provenance, content, pieces)
    elif ranks is not None and store is not None:  # rank 0 commits every rank's shards
        result = _distributed.commit_from_shards(store, key, ids, provenance, content, found, ranks)
    if result is None:  # no cache, or shards rank 0 cannot see: the features travel
        part = torch.cat([pieces[a] for a in sorted(pieces)], -2) if pieces else torch.empty(0, 0)
        if ranks:  # gathered as float32 (float16 values are exact in it), stored as they were
            part = _distributed.gather_rows(part, blocks, ranks).to(torch_dtype(store_dtype))
        result = FeatureSet(part, ids, provenance)
        if image:  # as above, over the whole (gathered) set, with every rank's reasons
            result = mark(result, _distributed.everyones(job.skipped, ranks))
        if store is not None and main:
            store.put(key, result, content, dtype=store_dtype)
            store.drop_shards(key)
    if store is not None and main and lookup is not None:
        store.remember(lookup, key)
    _distributed.barrier(ranks)
    return result


def _commit_streamed(
    store: FeatureCache,
    key: str,
    ids: tuple[str, ...],
    provenance: dict[str, Any],
    content: Any,
    pieces: dict[int, torch.Tensor],
) -> FeatureSet:
    """One process with a cache: the entry streamed from the shards on disk (memory: one
    shard), returned as a memory map of it, so a caller (the trainer) holds no copy of the
    whole set. When a shard could not be written (logged), from the pieces in memory."""
    dtype = str(provenance["store_dtype"])
    try:
        tensor, _ = map_tensor(store.commit_shards(key, ids, provenance, content, dtype))
    except AlignkitError:  # rows missing from the shards: write the entry from memory
        tensor = torch.cat([pieces[a] for a in sorted(pieces)], dim=-2)
        store.put(key, FeatureSet(tensor, ids, provenance), content, dtype=dtype)
        store.drop_shards(key)
    return FeatureSet(tensor, ids, provenance)


def _untruncated(provenance: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in provenance.items() if k != "truncation"}


def _for_probe(hit: FeatureSet | None, probe: ProbeSet) -> FeatureSet | None:
    """A cache hit read from another probe's entry, its provenance naming ``probe``."""
    if hit is None or "cached_from" not in hit.provenance:
        return hit
    provenance = {**hit.provenance, "probe": probe.name, "probe_fingerprint": probe.fingerprint}
    return FeatureSet(hit.features, hit.ids, provenance)


def fit_to_probe(encoder: Encoder, probe: ProbeSet) -> Encoder:
    """Fit an encoder that is fitted on the texts it is given (``needs_fit``, e.g. ``tfidf:``)
    and not fitted yet on every caption of ``probe``; any other encoder is returned untouched.

    Call it before :func:`~alignkit.features.keys.feature_key`: such an encoder has no weights
    identity until it is fitted, and fitting on the whole probe (not on the first batch) keeps
    its features independent of batching. :func:`extract_features` calls it itself.
    """
    if getattr(encoder, "needs_fit", False) and not getattr(encoder, "fitted", False):
        encoder.fit([c for row in probe.rows for c in row.captions])
    return encoder


class ExtractionInterrupted(KeyboardInterrupt):
    """Ctrl-C during an extraction; ``str(exc)`` says what the cache kept and how to resume."""


def _interrupted_note(
    name: str, probe: ProbeSet, store: FeatureCache | None, key: str, start: int, stop: int
) -> str:
    if store is None:
        return f"interrupted: {name} on {probe.name}: nothing kept (the cache is off)"
    try:
        kept = sum(b - a for a, b, _ in store.load_shards(key, start, stop))
    except OSError:
        kept = 0
    where = store._partial_dir(key)
    if not kept:
        return (
            f"interrupted: {name} on {probe.name}: no rows of it were saved yet (a shard is "
            f"written every {store.shard_batches} batches or {store.shard_seconds or 'inf'} s); "
            "earlier encoders stay cached"
        )
    return (
        f"interrupted: {name} on {probe.name}: {kept} of {stop - start} rows are kept in {where}; "
        "run the same command again to resume from there (same batch size: bitwise the same "
        "features)"
    )


def cached_features(
    encoder: str,
    probe: ProbeSet,
    *,
    options: Mapping[str, Any] | None = None,
    caption_policy: str = "first",
    seed: int = 0,
    cache: bool | str | Path | FeatureCache = True,
    device: str | torch.device = "auto",
    skip_bad: bool = False,
    store_dtype: str = "float32",
) -> FeatureSet | None:
    """The cached features :func:`extract_features` would return for the spec ``encoder``, found
    without building the encoder; None when the cache does not know them that way (then
    :func:`extract_features` builds the encoder, and remembers the way for next time).

    Arguments as for :func:`extract_features`. Under torchrun this always returns None (every
    rank must take the same branch).
    """
    if not isinstance(encoder, str):
        raise AlignkitError(f"encoder must be a spec string here: got {type(encoder).__name__}")
    store = _resolve_cache(cache)
    if store is None or _distributed.in_process_group():
        return None
    options = {**(options or {}), "device": _spec_device(device)}
    lookup = lookup_key(
        encoder, options, probe, caption_policy, seed, check_store_dtype(store_dtype)
    )
    hit = _recall(store, lookup, encoder, probe, caption_policy)
    return settle(hit, probe.name, skip_bad) if hit is not None else None


# -- argument handling ----------------------------------------------------------------------------


def _recall(
    store: FeatureCache, lookup: str | None, spec: str, probe: ProbeSet, caption_policy: str
) -> FeatureSet | None:
    """The cached features a lookup key was remembered to lead to, or None (then build)."""
    if lookup is None:
        return None
    key = store.recall(lookup)
    hit = store.get(key) if key is not None else None
    if hit is None or hit.provenance.get("encoder") != spec:
        return None
    # a text encoder under caption policy "all" has one row per caption; the modality is known
    # only from the entry here
    per_caption = hit.provenance.get("modality") == "text" and caption_policy == "all"
    if hit.ids != (caption_ids(probe) if per_caption else probe.ids):
        return None
    log.info("%s on %s: %d rows from the feature cache (not built)", spec, probe.name, hit.n)
    content = entry_rows(hit.provenance, probe)
    if content is not None:  # an entry from before the row index: let subsamples find it too
        store.index_rows(str(hit.provenance["cache_key"]), content)
    return hit
