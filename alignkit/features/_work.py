"""The work of an extraction: probe rows in fixed batches through DataLoader workers
(images) or the tokenizer (captions), then the encoder's forward, with the rows saved to the
cache shard by shard so that an interrupted run resumes (see :mod:`alignkit.features.extract`
for why batches are fixed by the row index alone).

An image that cannot be decoded (unreadable or truncated bytes, not an image, zero size, a
decompression bomb) stops the run with its row, after the rows before it are saved as a shard;
with ``skip_bad`` its row is run on a blank stand-in image (so every batch keeps the rows and
the size of a clean run) and its features are set to NaN, which marks it as skipped in the
shards and the cache entry (:mod:`alignkit.features.skipped`).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from alignkit.errors import AlignkitError
from alignkit.features.skipped import BadImage
from alignkit.features.store import map_tensor, torch_dtype

if TYPE_CHECKING:
    from alignkit.encoders.base import Encoder
    from alignkit.features.cache import FeatureCache
    from alignkit.probes.base import ProbeRow, ProbeSet

log = logging.getLogger("alignkit.features.extract")


@dataclass(frozen=True)
class _Failed:
    """A row that could not be read in a worker (raised as one clean error in the main process)."""

    row_id: str
    source: str
    reason: str
    stand_in: Any = None  # the preprocessed blank image run in the row's place (None: none)


#: Rows skipped with ``skip_bad`` that get a warning each; the rest are counted.
WARN_ROWS = 5
_STAND_IN_SIDE = 224  # the blank image a skipped row is preprocessed as


class _ImageRows(torch.utils.data.Dataset):
    """Probe rows by global index -> ``encoder.preprocess(image)``; runs in worker processes.
    A PIL decompression-bomb warning counts as a failure here (a bomb is not a probe image)."""

    def __init__(self, rows: tuple[ProbeRow, ...], preprocess: Any) -> None:
        self.rows = rows
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Any:
        from PIL import Image

        row = self.rows[index]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = row.load_image()
                if image.width < 1 or image.height < 1:
                    raise ValueError(f"empty image ({image.width}x{image.height})")
                return self.preprocess(image)
        except Exception as exc:  # reported with the row and file by the main process
            inside = hasattr(row.image, "read_bytes")  # a shard or table member names itself
            source = "<rendered>" if callable(row.image) and not inside else str(row.image)
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line
            try:
                stand_in = self.preprocess(Image.new("RGB", (_STAND_IN_SIDE, _STAND_IN_SIDE)))
            except Exception:  # noqa: BLE001 - then the row cannot be skipped, only reported
                stand_in = None
            return _Failed(row.id, source, reason, stand_in)


class _Collate:
    """Items -> ``(batch, failures)``: failed rows collated as their stand-ins, and
    ``[(position in the batch, _Failed), ...]``; a failure without a stand-in alone."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, items: list[Any]) -> Any:
        failures = [(k, item) for k, item in enumerate(items) if isinstance(item, _Failed)]
        if any(f.stand_in is None for _, f in failures):
            return None, failures
        kept = [item.stand_in if isinstance(item, _Failed) else item for item in items]
        return self.collate(kept), failures


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


def missing_chunks(
    start: int, stop: int, shard_rows: int, covered: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Row ranges of ``[start, stop)`` that the ``covered`` ranges (shards already written)
    leave out, cut at global multiples of ``shard_rows`` so that each is one future shard and
    batches start where an uninterrupted run starts them (a shard saved by time ends on a batch
    boundary, so the batches after it are the same too). ``start`` is a batch boundary."""
    gaps, cursor = [], start
    for a, b in sorted(covered):
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
    skip_bad: bool = False
    skipped: list[dict[str, str]] = field(default_factory=list)  # rows skipped by this run
    store_dtype: str = "float32"  # what shards and the result hold (alignkit.features.store)

    def run(self, start: int, stop: int) -> torch.Tensor:
        """Features of rows ``[start, stop)``, ``(..., stop - start, d)`` on the CPU in the
        stored dtype: shards already in the cache are loaded, the rest computed (float32) and
        rounded to the stored dtype, then saved shard by shard."""
        pieces = self.run_pieces(start, stop)
        if not pieces:  # a rank with no rows
            return torch.empty((0, 0))
        return torch.cat([pieces[a] for a in sorted(pieces)], dim=-2)

    def run_pieces(self, start: int, stop: int) -> dict[int, torch.Tensor]:
        """As :meth:`run`, the rows as ``{first row: (..., rows, d)}`` pieces; a piece saved as
        a shard is a memory map of it, so memory holds only rows whose shard is not written
        (at most one shard's worth, unless writing failed)."""
        from tqdm.auto import tqdm

        pieces: dict[int, torch.Tensor] = {}  # row offset -> (..., rows, d)
        if self.store is not None:
            for a, _, tensor in self.store.load_shards(self.key, start, stop):
                pieces[a] = tensor
        shard_rows = self.batch_size * (self.store.shard_batches if self.store else 1 << 20)
        covered = [(a, a + t.shape[-2]) for a, t in pieces.items()]
        chunks = missing_chunks(start, stop, shard_rows, covered)
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
            dtype = torch_dtype(self.store_dtype)
            outputs = compute(batches)
            for lo, hi in batches:
                try:
                    out = next(outputs)
                except BadImage:  # keep the rows before it, so that a rerun resumes there
                    if held and self.store is not None:
                        self._save_shard(held_from, lo, held)
                    raise
                held.append(out.to(dtype))
                bar.update(hi - lo)
                chunk_done = chunk is not None and hi == chunk[1]
                overdue = every is not None and time.monotonic() - saved_at >= every
                if chunk_done or overdue:  # keep the rows since the last shard, save them
                    # written from the batch outputs: a shard-sized concatenation per shard
                    # would fragment the heap (memory grew with the set, not the shard)
                    saved = None if self.store is None else self._save_shard(held_from, hi, held)
                    # the file's map replaces the rows in memory
                    pieces[held_from] = (
                        map_tensor(saved)[0] if saved is not None else torch.cat(held, dim=-2)
                    )
                    held = []
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
        return pieces

    def _save_shard(self, a: int, b: int, block: list[torch.Tensor]) -> Path | None:
        try:
            return self.store.put_shard(self.key, a, b, block, self.store_dtype)
        except OSError as exc:  # shards only make resuming cheaper; never fail the run for one
            log.warning("could not write a resume shard of rows [%d, %d): %s", a, b, exc)
            return None

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
        for (a, b), (batch, failures) in zip(batches, loader, strict=True):
            if failures and (not self.skip_bad or batch is None):
                raise BadImage(self._bad_image(failures[0][1]))
            out = self._forward(_to_device(batch, self.enc.device, non_blocking=cuda))
            if out.shape[-2] != b - a:
                raise AlignkitError(
                    f"{self.enc.name}.forward returned {out.shape[-2]} rows for a batch of {b - a}"
                )
            if failures:  # (..., b - a, d): the stand-ins' rows become NaN, the skipped mark
                out = out.clone()  # (an inference-mode tensor cannot be written in place)
                out[..., [k for k, _ in failures], :] = float("nan")
                self._note_skipped([f for _, f in failures])
            yield out

    def _bad_image(self, failed: _Failed) -> str:
        if failed.stand_in is None and self.skip_bad:
            advice = f"{self.enc.name} cannot preprocess a blank stand-in, so it cannot be skipped"
        else:
            advice = "pass skip_bad=True to skip such rows"
        kept = "; the rows before it are kept in the feature cache and a rerun resumes there"
        return (
            f"probe {self.probe.name}: cannot read the image of row {failed.row_id!r} "
            f"({failed.source}): {failed.reason}; {advice}" + (kept if self.store else "")
        )

    def _note_skipped(self, failed: list[_Failed]) -> None:
        for f in failed:
            if len(self.skipped) < WARN_ROWS:
                log.warning(
                    "probe %s: skipping row %r (%s): %s (skip_bad=True)",
                    self.probe.name, f.row_id, f.source, f.reason,
                )  # fmt: skip
            self.skipped.append({"id": f.row_id, "where": f.source, "reason": f.reason})

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
