"""Batched feature extraction: probe rows -> encoder -> :class:`FeatureSet`, cached and resumable.

How rows become batches is fixed by the row index alone: batch ``b`` is rows
``[b * batch_size, (b + 1) * batch_size)``, a cache shard is every ``shard_batches`` batches (and,
when that takes long, at the first batch boundary ``shard_seconds`` after the last shard), and a
``torchrun`` rank takes a contiguous block of whole batches. So a resumed run, a run on several
ranks and an uninterrupted single run put every row in the same batch and give bitwise the same
features (some models' numbers depend on what else is in the batch, e.g. padding in text models).

An interrupted extraction (Ctrl-C) logs what its shards kept and how to resume, then raises
:class:`ExtractionInterrupted` (a ``KeyboardInterrupt``) carrying that note.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from alignkit._threads import choose_threads, limit_threads
from alignkit.errors import AlignkitError, unknown_key
from alignkit.features import _distributed
from alignkit.features.cache import FeatureCache, effective_precision, feature_key, lookup_key
from alignkit.features.featureset import FeatureSet, caption_ids
from alignkit.probes.base import CAPTION_POLICIES

#: ``extract_features`` caption policies: the probe's one-row-per-image policies, plus ``all``
#: (one FeatureSet row per caption; see :attr:`FeatureSet.caption_image`).
EXTRACT_POLICIES = (*CAPTION_POLICIES, "all")

if TYPE_CHECKING:
    from alignkit.encoders.base import Encoder
    from alignkit.probes.base import ProbeRow, ProbeSet

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
    and its weight files led to (:func:`alignkit.features.cache.lookup_key`), and the encoder is
    built only on a miss. In an initialised process group, or under ``torchrun`` with
    ``distributed=True``, the rows are split across ranks and gathered, and every rank returns
    the whole set; rank 0 writes the cache.

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

    Returns:
        FeatureSet with ``(n, d)`` (or ``(L, n, d)`` for ``layer="all"``) float32 CPU features, the
        probe ids (caption ids for ``all``: n = the number of captions), and provenance
        (encoder spec, weights identity, config, caption policy, probe
        name and fingerprint, alignkit version, created time, cache key).
    """
    if distributed not in (None, True, False):
        raise AlignkitError(f"distributed must be None, True or False: got {distributed!r}")
    _check_run(probe, batch_size, num_workers, caption_policy)
    store = _resolve_cache(cache)
    lookup = None
    if isinstance(encoder, str):
        options = {**(options or {}), "device": _spec_device(device)}
        if store is not None and not _distributed.in_process_group():
            lookup = lookup_key(encoder, options, probe, caption_policy, seed)
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
    key = feature_key(enc, probe, caption_policy, seed)
    if distributed is True:
        with _distributed.process_group(enc.device) as ranks:
            return _extract(
                enc,
                probe,
                store,
                key,
                ranks,
                batch_size,
                workers,
                caption_policy,
                seed,
                progress,
                lookup,
            )
    ranks = _distributed.current_ranks(enc.device) if distributed is None else None
    if ranks is None and distributed is None:
        _distributed.warn_unsharded()
    return _extract(
        enc, probe, store, key, ranks, batch_size, workers, caption_policy, seed, progress, lookup
    )


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
) -> FeatureSet:
    """The extraction itself, over ``ranks`` (None: this process alone); ``lookup``: the memo
    key to remember for the result (see :func:`alignkit.features.cache.lookup_key`)."""
    per_caption = enc.modality == "text" and caption_policy == "all"
    ids = caption_ids(probe) if per_caption else probe.ids
    if store is not None:
        hit = store.get(key, ids=ids)
        usable = hit is not None
        if ranks is not None:  # every rank must take the same branch: all hit, or all extract
            usable = _distributed.all_true(usable, ranks)
        if usable:
            log.info("%s on %s: %d rows from the feature cache", enc.name, probe.name, hit.n)
            if lookup is not None:
                store.remember(lookup, key)
            return hit

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
    )
    try:
        with limit_threads(choose_threads()):  # model forwards: large work, the free CPUs
            part = job.run(start, stop)  # (..., stop - start, d)
    except KeyboardInterrupt as exc:
        note = _interrupted_note(enc.name, probe, store, key, start, stop)
        log.warning("%s", note)
        raise ExtractionInterrupted(note) from exc
    features = _distributed.gather_rows(part, blocks, ranks) if ranks else part
    result = FeatureSet(features, ids, _provenance(enc, probe, caption_policy, seed, key))
    if store is not None and (ranks is None or ranks.is_main):
        store.put(key, result)
        store.drop_shards(key)
        if lookup is not None:
            store.remember(lookup, key)
    _distributed.barrier(ranks)
    return result


def fit_to_probe(encoder: Encoder, probe: ProbeSet) -> Encoder:
    """Fit an encoder that is fitted on the texts it is given (``needs_fit``, e.g. ``tfidf:``)
    and not fitted yet on every caption of ``probe``; any other encoder is returned untouched.

    Call it before :func:`~alignkit.features.cache.feature_key`: such an encoder has no weights
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
    lookup = lookup_key(encoder, options, probe, caption_policy, seed)
    return _recall(store, lookup, encoder, probe, caption_policy)


# -- argument handling ----------------------------------------------------------------------------
def _spec_device(device: str | torch.device) -> str | torch.device:
    """The device a spec-built encoder is built on (under torchrun, ``auto`` is the rank's GPU)."""
    if device == "auto" and _distributed.local_cuda_device() is not None:
        return _distributed.local_cuda_device()
    return device


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
    return hit


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
    import alignkit

    text = enc.modality == "text"
    return {
        "encoder": enc.name,
        "modality": enc.modality,
        "weights": enc.weights_identity(),
        "config": enc.config(),
        "pooling": getattr(enc, "pooling", "default"),
        "layer": getattr(enc, "layer", "last"),
        "precision": effective_precision(enc),
        "caption_policy": caption_policy if text else None,
        "seed": int(seed) if text and caption_policy == "random" else None,
        "probe": probe.name,
        "probe_fingerprint": probe.fingerprint,
        "alignkit_version": alignkit.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cache_key": key,
    }


# -- the work -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Failed:
    """A row that could not be read in a worker (raised as one clean error in the main process)."""

    row_id: str
    source: str
    reason: str


class _ImageRows(torch.utils.data.Dataset):
    """Probe rows by global index -> ``encoder.preprocess(image)``; runs in worker processes."""

    def __init__(self, rows: tuple[ProbeRow, ...], preprocess: Any) -> None:
        self.rows = rows
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Any:
        row = self.rows[index]
        try:
            return self.preprocess(row.load_image())
        except Exception as exc:  # reported with the row and file by the main process
            inside = hasattr(row.image, "read_bytes")  # a shard or table member names itself
            source = "<rendered>" if callable(row.image) and not inside else str(row.image)
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line
            return _Failed(row.id, source, reason)


class _Collate:
    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, items: list[Any]) -> Any:
        for item in items:
            if isinstance(item, _Failed):
                return item
        return self.collate(items)


def _preprocess_fn(enc: Encoder) -> Any:
    """What workers run per image: the backend's model-free ``preprocessor`` when the encoder
    uses the base ``preprocess`` (cheap to send to workers), else its own ``preprocess``."""
    from alignkit.encoders.base import Encoder as Base

    overridden = getattr(type(enc), "preprocess", None) is not Base.preprocess
    return enc.preprocess if overridden else getattr(enc, "preprocessor", enc.preprocess)


def _worker_context() -> str | None:
    """``fork`` on Linux: workers inherit the encoder instead of unpickling it (models with
    native sessions, e.g. onnxruntime, do not pickle; Python 3.14 makes forkserver the default)."""
    import multiprocessing
    import sys

    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return "fork"
    return None


def _to_device(batch: Any, device: torch.device, non_blocking: bool) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: _to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return type(batch)(_to_device(v, device, non_blocking) for v in batch)
    return batch


@dataclass
class _Job:
    enc: Encoder
    probe: ProbeSet
    batch_size: int
    workers: int
    caption_policy: str
    seed: int
    store: FeatureCache | None
    key: str
    progress: bool
    label: str  # progress bar title

    def run(self, start: int, stop: int) -> torch.Tensor:
        """Features of rows ``[start, stop)``, ``(..., stop - start, d)`` float32 CPU: shards
        already in the cache are loaded, the rest computed and saved shard by shard."""
        from tqdm.auto import tqdm

        pieces: dict[int, torch.Tensor] = {}  # row offset -> (..., rows, d)
        if self.store is not None:
            for a, _, tensor in self.store.load_shards(self.key, start, stop):
                pieces[a] = tensor
        chunks = self._missing_chunks(start, stop, pieces)
        done = (stop - start) - sum(b - a for a, b in chunks)
        if done:
            log.info(
                "%s: resuming, %d of %d rows already in shards", self.enc.name, done, stop - start
            )
        bar = tqdm(
            total=stop - start,
            initial=done,
            unit="item",
            desc=self.label,
            disable=not self.progress,
            dynamic_ncols=True,
            leave=False,
        )
        t0 = time.perf_counter()
        try:
            # batches never straddle a chunk: each chunk (one future shard) is whole batches
            batches = [
                (lo, min(lo + self.batch_size, hi))
                for first, hi in chunks
                for lo in range(first, hi, self.batch_size)
            ]
            compute = self._image_batches if self.enc.modality == "image" else self._text_batches
            pending = iter(chunks)
            chunk = next(pending, None)
            held: list[torch.Tensor] = []  # batch outputs since the last shard
            held_from = chunk[0] if chunk else start  # first row of `held`
            every = self.store.shard_seconds if self.store is not None else None
            saved_at = time.monotonic()
            for (lo, hi), out in zip(batches, compute(batches), strict=True):
                held.append(out)
                bar.update(hi - lo)
                chunk_done = chunk is not None and hi == chunk[1]
                overdue = every is not None and time.monotonic() - saved_at >= every
                if chunk_done or overdue:  # keep the rows since the last shard, save them
                    pieces[held_from] = torch.cat(held, dim=-2)
                    held = []
                    if self.store is not None:
                        self._save_shard(held_from, hi, pieces[held_from])
                    saved_at = time.monotonic()
                    held_from = hi
                    if chunk_done:
                        chunk = next(pending, None)
                        held_from = chunk[0] if chunk else hi
        finally:
            bar.close()
        log.info(
            "%s: %d rows in %.1f s", self.enc.name, stop - start - done, time.perf_counter() - t0
        )
        if not pieces:  # a rank with no rows
            return torch.empty((0, 0))
        return torch.cat([pieces[a] for a in sorted(pieces)], dim=-2)

    def _missing_chunks(
        self, start: int, stop: int, pieces: dict[int, torch.Tensor]
    ) -> list[tuple[int, int]]:
        """Row ranges still to compute, cut at global multiples of the shard size so that each
        is one future shard and batches start where an uninterrupted run starts them (a shard
        saved by time ends on a batch boundary, so the batches after it are the same too)."""
        shard_rows = self.batch_size * (self.store.shard_batches if self.store else 1 << 20)
        covered = sorted((a, a + t.shape[-2]) for a, t in pieces.items())
        gaps, cursor = [], start
        for a, b in covered:
            if a > cursor:
                gaps.append((cursor, a))
            cursor = max(cursor, b)
        if cursor < stop:
            gaps.append((cursor, stop))
        chunks = []
        for a, b in gaps:
            while a < b:
                edge = min(b, (a // shard_rows + 1) * shard_rows)
                chunks.append((a, edge))
                a = edge
        return chunks

    def _save_shard(self, a: int, b: int, block: torch.Tensor) -> None:
        try:
            self.store.put_shard(self.key, a, b, block)
        except OSError as exc:  # shards only make resuming cheaper; never fail the run for one
            log.warning("could not write a resume shard of rows [%d, %d): %s", a, b, exc)

    def _forward(self, batch: Any) -> torch.Tensor:
        out = self.enc.forward(batch)
        if out.ndim not in (2, 3):
            raise AlignkitError(
                f"{self.enc.name}.forward must return (B, dim) or (layers, B, dim): got shape "
                f"{tuple(out.shape)}"
            )
        return out.detach().to("cpu", torch.float32)

    def _image_batches(self, batches: list[tuple[int, int]]) -> Iterator[torch.Tensor]:
        if not batches:
            return
        cuda = self.enc.device.type == "cuda"
        workers = min(self.workers, len(batches))
        loader = torch.utils.data.DataLoader(
            _ImageRows(self.probe.rows, _preprocess_fn(self.enc)),
            batch_sampler=[list(range(a, b)) for a, b in batches],
            num_workers=workers,
            collate_fn=_Collate(self.enc.collate),
            pin_memory=cuda,
            prefetch_factor=2 if workers else None,  # batches in flight per worker
            multiprocessing_context=_worker_context() if workers else None,
        )
        for (a, b), batch in zip(batches, loader, strict=True):
            if isinstance(batch, _Failed):
                raise AlignkitError(
                    f"probe {self.probe.name}: cannot read the image of row {batch.row_id!r} "
                    f"({batch.source}): {batch.reason}"
                )
            out = self._forward(_to_device(batch, self.enc.device, non_blocking=cuda))
            if out.shape[-2] != b - a:
                raise AlignkitError(
                    f"{self.enc.name}.forward returned {out.shape[-2]} rows for a batch of {b - a}"
                )
            yield out

    def _text_batches(self, batches: list[tuple[int, int]]) -> Iterator[torch.Tensor]:
        rows = self.probe.rows
        mean = self.caption_policy == "mean"
        if self.caption_policy == "all":  # batches index captions, not rows
            chosen = [c for row in rows for c in row.captions]
        elif not mean:  # one caption per row; `random` depends on (seed, row id) only
            chosen = self.probe.captions(self.caption_policy, self.seed)
        for a, b in batches:
            counts = [len(rows[i].captions) for i in range(a, b)] if mean else None
            captions = [c for i in range(a, b) for c in rows[i].captions] if mean else chosen[a:b]
            batch = self.enc.collate([self.enc.preprocess(c) for c in captions])
            out = self._forward(_to_device(batch, self.enc.device, non_blocking=False))
            if out.shape[-2] != len(captions):
                raise AlignkitError(
                    f"{self.enc.name}.forward returned {out.shape[-2]} rows for "
                    f"{len(captions)} captions"
                )
            if counts is not None:  # (..., sum(counts), d) -> (..., b - a, d): mean per row
                out = torch.stack([part.mean(dim=-2) for part in out.split(counts, dim=-2)], dim=-2)
            yield out
