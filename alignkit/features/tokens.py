"""Token-level features: per-token encoder states, float16 in the feature cache, memory-mapped.

``extract_tokens(encoder, probe)`` gives a :class:`TokenFeatureSet`: ``tokens`` ``(n, T, D)``
float16 and ``mask`` ``(n, T)`` bool (True = a real token) for CNN spatial maps (T = H x W), ViT
prefix + patch tokens and text token states (padded to the longest caption of the probe). See
:meth:`alignkit.encoders.base.Encoder.forward_tokens` for what each backend gives.

Storage, in the same content-addressed cache as pooled features (``FeatureCache.root``)::

    ab/ab12...ef.safetensors   tensors "tokens" (F16, n x T x D) and "mask" (BOOL, n x T); ids and
                               provenance in the header metadata (a plain safetensors file)
    ab/ab12...ef.json          sidecar: kind "tokens", shapes, byte size, sha256 (the commit marker)
    ab/ab12...ef.partial/      shards of an extraction in progress (resumable)

The key is :func:`~alignkit.features.keys.probe_key_fields` plus ``kind="tokens"``, so it never
equals the pooled entry's key. Shards are written as the extraction goes and the final file is
streamed from them, so neither extraction nor reading holds more than one shard in memory: the
``tokens`` tensor a reader gets is a read-only ``numpy.memmap`` of the file (pages come from disk
as they are touched), so a cache larger than RAM trains with bounded memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from alignkit.errors import AlignkitError
from alignkit.features import _distributed, _token_shards
from alignkit.features._token_shards import pad
from alignkit.features.cache import FeatureCache
from alignkit.features.featureset import ProvenanceMixin, caption_ids
from alignkit.features.keys import probe_key_fields

if TYPE_CHECKING:
    from alignkit.encoders.base import Encoder
    from alignkit.probes.base import ProbeSet

log = logging.getLogger(__name__)

TOKEN_FORMAT = 1
TOKEN_POLICIES = ("first", "random", "all")  # "mean" has no token form


@dataclass(frozen=True)
class TokenFeatureSet(ProvenanceMixin):
    """Token-level features of one encoder on a probe.

    Attributes:
        tokens: ``(n, T, D)`` float16; memory-mapped (read-only) when read from the cache.
        mask: ``(n, T)`` bool, True for real tokens; every row has at least one.
        ids: probe row ids (``"<row id>#<j>"`` caption ids for ``caption_policy="all"``).
        provenance: as for :class:`~alignkit.features.FeatureSet`, plus ``kind="tokens"``.
        path: the cache file the tensors map, or None.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    ids: tuple[str, ...]
    provenance: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        if self.tokens.ndim != 3 or tuple(self.mask.shape) != tuple(self.tokens.shape[:2]):
            raise AlignkitError(
                f"token features must be (n, T, D) with an (n, T) mask: got "
                f"{tuple(self.tokens.shape)} and {tuple(self.mask.shape)}"
            )
        if self.tokens.shape[0] != len(self.ids):
            raise AlignkitError(
                f"tokens and ids must describe the same rows: got {self.tokens.shape[0]} rows "
                f"and {len(self.ids)} ids"
            )

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[2])

    def pooled(self, rows: slice | None = None) -> torch.Tensor:
        """Masked mean over tokens, float32 ``(n, D)`` (computed a block of rows at a time)."""
        rows = rows or slice(0, self.n)
        out = []
        for a in range(rows.start or 0, rows.stop, 1024):
            b = min(a + 1024, rows.stop)
            t = self.tokens[a:b].float()
            m = self.mask[a:b].unsqueeze(-1).float()
            out.append((t * m).sum(1) / m.sum(1).clamp_min(1))
        return torch.cat(out) if out else torch.empty(0, self.dim)


# -- the file format ------------------------------------------------------------------------------
def read_tokens(path: str | Path) -> TokenFeatureSet:
    """Map a token file written by :func:`extract_tokens` (or any safetensors file with F16
    ``tokens`` (n, T, D) and BOOL ``mask`` (n, T)): ``tokens`` is a read-only memory map."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > min(path.stat().st_size, 1 << 30):  # not a safetensors header length
                raise ValueError(f"header length {size} does not fit the file")
            head = json.loads(f.read(size))
        tok, msk = head["tokens"], head["mask"]
        if tok["dtype"] != "F16" or msk["dtype"] != "BOOL":
            raise ValueError(f"dtypes {tok['dtype']} / {msk['dtype']}, expected F16 / BOOL")
        n, t, d = tok["shape"]
        base = 8 + size
        tokens = np.memmap(
            path, np.float16, "r", offset=base + tok["data_offsets"][0], shape=(n, t, d)
        )
        mask = np.fromfile(path, np.uint8, count=n * t, offset=base + msk["data_offsets"][0])
        meta = head.get("__metadata__") or {}
        ids = tuple(json.loads(meta["ids"]))
        provenance = json.loads(meta.get("provenance", "{}"))
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise AlignkitError(
            f"expected a token-feature safetensors file (F16 'tokens', BOOL 'mask', ids in the "
            f"metadata) at {path}: {exc}"
        ) from exc
    with warnings.catch_warnings():  # the map is read-only by design; torch warns about that
        warnings.simplefilter("ignore", UserWarning)
        tokens_t = torch.from_numpy(tokens)
    return TokenFeatureSet(
        tokens_t, torch.from_numpy(mask.reshape(n, t).astype(bool)), ids, provenance, path
    )


# -- the key and the cache entry -----------------------------------------------------------------
def token_key(
    encoder: Encoder, probe: ProbeSet, caption_policy: str = "first", seed: int = 0
) -> str:
    """Cache key (32 hex digits) of the token features of ``encoder`` on ``probe``."""
    fields = {
        **probe_key_fields(encoder, probe, caption_policy, seed),
        "kind": "tokens",
        "token_format": TOKEN_FORMAT,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def _cached(store: FeatureCache, key: str, ids: tuple[str, ...]) -> TokenFeatureSet | None:
    path = store.path(key)
    try:
        side = json.loads(path.with_suffix(".json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("token cache entry %s has an unreadable sidecar, rebuilding it: %s", key, exc)
        return None
    problem = None
    if (
        side.get("kind") != "tokens"
        or side.get("token_format") != TOKEN_FORMAT
        or side.get("key") != key
    ):
        problem = "not a token entry of this format"
    elif not path.is_file() or path.stat().st_size != side.get("size"):
        problem = "tensor file missing or truncated"  # size check only: hashing GBs on every read
    if problem is None:  # would cost more than the read; `sha256` in the sidecar is for audits
        try:
            fs = read_tokens(path)
            if fs.ids != ids:
                problem = "its row ids differ from the probe's"
            else:
                return fs
        except AlignkitError as exc:
            problem = str(exc)
    log.warning("token cache entry %s is unusable, rebuilding it: %s", key, problem)
    return None


# -- extraction ----------------------------------------------------------------------------------
def extract_tokens(
    encoder: Encoder | str,
    probe: ProbeSet,
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    caption_policy: str = "first",
    seed: int = 0,
    cache: bool | str | Path | FeatureCache = True,
    device: str | torch.device = "auto",
    progress: bool = True,
    distributed: bool | None = None,
) -> TokenFeatureSet:
    """Token-level features of every probe row (every caption for ``caption_policy="all"``).

    Same batching, workers, caption choice and cache folder as
    :func:`~alignkit.features.extract_features`; the tokens are stored float16 (the mask as bool)
    and come back memory-mapped from the cache. Text token counts are padded to the longest item
    of the probe (the mask marks the padding). An interrupted extraction resumes from its last
    shard, also with another number of ranks.

    Under ``torchrun`` (``distributed`` as for :func:`~alignkit.features.extract_features`) with
    a cache, the rows are split over the ranks as there: each rank writes its block as shards,
    rank 0 commits the entry from every rank's shards (the ranks must share the cache folder)
    and every rank returns a map of it; no tokens travel between ranks. Without a cache every
    rank extracts every row (there is nothing on disk to share, and tokens are not gathered).

    Args:
        encoder: an Encoder with token features (``encoder.has_tokens``), or a spec.
        caption_policy: ``first``, ``random`` or ``all`` (text encoders); ``mean`` has no tokens.
        cache: True, a folder or a FeatureCache; False keeps the tokens in memory (no file).
        distributed: None: split the rows over an initialised process group, never create one;
            True: under torchrun with no group, create one for this call; False: never split.

    Returns:
        TokenFeatureSet with ``tokens`` (n, T, D) float16 and ``mask`` (n, T) bool.

    Raises:
        AlignkitError: the encoder has no token features, an unknown caption policy, bad
            arguments (checked before any model work); under torchrun, rank 0 does not see
            every rank's shards (no shared cache folder).
    """
    from alignkit.features._arguments import (
        _check_arguments,
        _check_run,
        _resolve_cache,
        _resolve_encoder,
    )

    enc = _resolve_encoder(encoder, device, {})
    if caption_policy not in TOKEN_POLICIES:
        raise AlignkitError(
            f"caption_policy for token features must be one of: {', '.join(TOKEN_POLICIES)}: got "
            f"{caption_policy!r} ('mean' averages pooled caption embeddings and has no tokens)"
        )
    _check_run(probe, batch_size, num_workers, caption_policy)
    _check_arguments(enc, probe)
    if not getattr(enc, "has_tokens", False):
        enc._forward_tokens(None)  # raises the backend's one-line "no token features" error
    store = _resolve_cache(cache)
    text = enc.modality == "text"
    ids = caption_ids(probe) if text and caption_policy == "all" else probe.ids
    if distributed not in (None, True, False):
        raise AlignkitError(f"distributed must be None, True or False: got {distributed!r}")
    key = token_key(enc, probe, caption_policy, seed)
    job = _TokenJob(enc, probe, batch_size, num_workers, caption_policy, seed, progress)
    prov = _token_provenance(enc, probe, caption_policy, seed, key)
    if store is None:  # every rank, if any, extracts every row
        blocks = list(job.batches(0, len(ids)))
        t = max(tok.shape[1] for tok, _ in blocks)
        tokens = torch.cat([pad(tok, t) for tok, _ in blocks])
        mask = torch.cat([pad(m, t) for _, m in blocks])
        return TokenFeatureSet(tokens, mask, ids, prov)
    if distributed is True:
        with _distributed.process_group(enc.device) as ranks:
            return _extract_to_cache(job, store, key, ids, prov, ranks)
    ranks = _distributed.current_ranks() if distributed is None else None
    return _extract_to_cache(job, store, key, ids, prov, ranks)


def _token_provenance(
    enc: Encoder, probe: ProbeSet, policy: str, seed: int, key: str
) -> dict[str, Any]:
    from alignkit.features._arguments import _origin

    text = enc.modality == "text"
    return {
        "kind": "tokens",
        "encoder": enc.name,
        "modality": enc.modality,
        "weights": enc.weights_identity(),
        "config": enc.config(),
        "dtype": "float16",
        # ViT CLS/register tokens in front of the patch tokens (timm's num_prefix_tokens)
        "prefix_tokens": 0 if text else int(getattr(enc, "n_prefix", 0) or 0),
        **_origin(enc, probe, policy, seed, key),
    }


def _extract_to_cache(
    job: _TokenJob,
    store: FeatureCache,
    key: str,
    ids: tuple[str, ...],
    prov: dict[str, Any],
    ranks: _distributed.Ranks | None,
) -> TokenFeatureSet:
    """The cached entry, else this process's rows (a rank's block) written as shards, the entry
    committed from every shard by rank 0, and mapped on every rank."""
    hit = _cached(store, key, ids)
    usable = hit is not None
    if ranks is not None:  # every rank takes the same branch: all hit, or all extract
        usable = _distributed.all_true(usable, ranks)
    if usable:
        return hit
    n = len(ids)
    start, stop = (0, n) if ranks is None else _distributed.row_blocks(
        n, job.batch_size, ranks.world
    )[ranks.rank]  # fmt: skip
    job.progress = job.progress and (ranks is None or ranks.is_main)
    _token_shards.write_rows(job, store, key, start, stop)
    if ranks is None:
        return read_tokens(_token_shards.commit(store, key, ids, prov, TOKEN_FORMAT))
    import torch.distributed as dist

    _distributed.barrier(ranks)  # every rank's shards are on disk
    reply: list = [None]
    if ranks.is_main:
        try:
            _token_shards.commit(store, key, ids, prov, TOKEN_FORMAT)
        except (AlignkitError, OSError) as exc:  # said on every rank, not only here
            reply = [f"rank 0 could not write token cache entry {key}: {exc}"]
    dist.broadcast_object_list(reply, src=0)
    if reply[0] is not None:
        raise AlignkitError(reply[0])
    return read_tokens(store.path(key))


@dataclass
class _TokenJob:
    enc: Encoder
    probe: ProbeSet
    batch_size: int
    num_workers: int | None
    caption_policy: str
    seed: int
    progress: bool

    def batches(self, start: int, stop: int):
        """Yield ``(tokens (B, T, D) float16, mask (B, T) bool)`` for items [start, stop)."""
        from tqdm.auto import tqdm

        spans = [(a, min(a + self.batch_size, stop)) for a in range(start, stop, self.batch_size)]
        bar = tqdm(
            total=stop - start,
            unit="item",
            desc=f"{self.enc.name} tokens",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        try:
            source = self._images(spans) if self.enc.modality == "image" else self._texts(spans)
            for (a, b), batch in zip(spans, source, strict=True):
                tok, mask = self.enc.forward_tokens(batch)
                if tok.shape[0] != b - a:
                    raise AlignkitError(
                        f"{self.enc.name}.forward_tokens returned {tok.shape[0]} rows for a "
                        f"batch of {b - a}"
                    )
                bar.update(b - a)
                yield tok.detach().to("cpu", torch.float16), mask.detach().cpu()
        finally:
            bar.close()

    def _images(self, spans):
        from alignkit.features._work import (
            _Collate,
            _Failed,
            _ImageRows,
            _preprocess_fn,
            _to_device,
            _worker_context,
        )
        from alignkit.features.extract import default_num_workers

        workers = (
            default_num_workers(self.enc.device) if self.num_workers is None else self.num_workers
        )
        workers = min(workers, len(spans))
        loader = torch.utils.data.DataLoader(
            _ImageRows(self.probe.rows, _preprocess_fn(self.enc)),
            batch_sampler=[list(range(a, b)) for a, b in spans],
            num_workers=workers,
            collate_fn=_Collate(self.enc.collate),
            prefetch_factor=2 if workers else None,
            multiprocessing_context=_worker_context() if workers else None,
        )
        for batch, failures in loader:  # token features skip no rows (their store is by row)
            if failures:
                bad: _Failed = failures[0][1]
                raise AlignkitError(
                    f"probe {self.probe.name}: cannot read the image of row {bad.row_id!r} "
                    f"({bad.source}): {bad.reason}"
                )
            yield _to_device(batch, self.enc.device, non_blocking=False)

    def _texts(self, spans):
        rows = self.probe.rows
        if self.caption_policy == "all":
            chosen = [c for row in rows for c in row.captions]
        else:
            chosen = self.probe.captions(self.caption_policy, self.seed)
        for a, b in spans:
            yield self.enc.collate([self.enc.preprocess(c) for c in chosen[a:b]])


__all__ = ["TOKEN_POLICIES", "TokenFeatureSet", "extract_tokens", "read_tokens", "token_key"]
