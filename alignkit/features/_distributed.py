"""Extraction across the ranks of a ``torchrun`` job: who does which rows, and how the entry
is made from every rank's rows.

Rows are split into contiguous blocks of whole batches (batch ``b`` covers rows
``[b * batch_size, (b + 1) * batch_size)`` in every layout), so each row is computed in exactly the
batch a single process would put it in, and the features are bitwise those of a single-process
run on the same device.

With a cache (a folder every rank of a node sees), no features travel through the process group:
each rank writes its rows as resume shards, rank 0 streams every rank's shards into the entry
(:func:`commit_from_shards`; memory: one shard) and every rank returns a memory map of it. Only
the few rows an image could not be decoded in (``skip_bad``) and the provenance are sent. Without
a cache, or when rank 0 cannot see every rank's shards (ranks on several nodes, each with its own
cache folder), :func:`gather_rows` all-gathers the features to every rank instead (float32, the
whole set in every process's memory).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from alignkit.errors import AlignkitError

if TYPE_CHECKING:
    from alignkit.features.cache import FeatureCache
    from alignkit.features.featureset import FeatureSet
    from alignkit.features.keys import RowDigests

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """The process group extraction runs in."""

    rank: int
    world: int
    comm_device: torch.device  # where collective tensors must live (cuda for NCCL)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True inside a multi-process ``torchrun`` (``WORLD_SIZE`` > 1 and a rendezvous address)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "MASTER_ADDR" in os.environ


def in_process_group() -> bool:
    """True under torchrun or inside an initialised process group (rows are split over ranks)."""
    import torch.distributed as dist

    return launched_by_torchrun() or (dist.is_available() and dist.is_initialized())


def local_cuda_device() -> torch.device | None:
    """``cuda:$LOCAL_RANK`` under torchrun with GPUs, else None."""
    if launched_by_torchrun() and torch.cuda.is_available():
        return torch.device(
            "cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
        )
    return None


def current_ranks(device: torch.device | None = None) -> Ranks | None:
    """The initialised default process group to shard over; None when there is none or it has a
    single rank. Never creates one (see :func:`process_group`). ``device`` is unused; kept so
    older callers still work."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return None
    world = dist.get_world_size()
    if world == 1:
        return None
    backend = dist.get_backend()
    comm = (
        torch.device("cuda", torch.cuda.current_device())
        if backend == "nccl"
        else torch.device("cpu")
    )
    return Ranks(dist.get_rank(), world, comm)


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[Ranks | None]:
    """The process group of one distributed extraction, for callers that asked for one.

    An already initialised default group is used as it is and left alone. Under torchrun with
    none, this creates one from the environment (NCCL for a CUDA ``device``, else gloo) and
    destroys it on leaving, so no group that alignkit made outlives the call (a trainer started
    later in the same process creates its own). A single process yields None.
    """
    import torch.distributed as dist

    created = False
    if dist.is_available() and not dist.is_initialized() and launched_by_torchrun():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group(
            backend, store=_fresh_store(rank, world), rank=rank, world_size=world
        )
        created = True
        log.info(
            "created a %s process group for extraction: rank %d of %d",
            backend,
            dist.get_rank(),
            dist.get_world_size(),
        )
    try:
        yield current_ranks(device)
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


_store: list = []  # this process's connection to the torchrun store, made once
_groups_made = 0


def _fresh_store(rank: int, world: int) -> torch.distributed.PrefixStore:
    """A key space of the torchrun store that no earlier group of this process used.

    A group created from the environment writes its members' addresses under fixed keys, so a
    second one in the same process would read the first one's (closed) addresses; each group made
    here gets its own prefix instead. Every rank makes groups in the same order (extraction is
    collective), so the n-th group of every rank shares a prefix.
    """
    import datetime

    import torch.distributed as dist

    global _groups_made
    if not _store:
        agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
        _store.append(
            dist.TCPStore(
                os.environ["MASTER_ADDR"],
                int(os.environ["MASTER_PORT"]),
                world,
                is_master=rank == 0 and not agent,  # torchrun's agent hosts it otherwise
                timeout=datetime.timedelta(minutes=10),
                wait_for_workers=False,
            )
        )
    _groups_made += 1
    return dist.PrefixStore(f"alignkit-extraction-{_groups_made}", _store[0])


def warn_unsharded() -> None:
    """Under torchrun with no process group and no request for one: say that every rank
    extracts every row (once per process)."""
    global _warned
    if launched_by_torchrun() and not _warned:
        _warned = True
        log.warning(
            "running under torchrun with no process group: every rank extracts every row; pass "
            "distributed=True to extract_features (or initialise a process group) to split them"
        )


_warned = False


def row_blocks(n: int, batch_size: int, world: int) -> list[tuple[int, int]]:
    """Contiguous row blocks ``[(start, stop)]`` per rank, each a whole number of batches
    (the last may end early at ``n``); batches are dealt as evenly as possible."""
    n_batches = -(-n // batch_size)
    bounds = [(r * n_batches) // world for r in range(world + 1)]
    return [
        (min(bounds[r] * batch_size, n), min(bounds[r + 1] * batch_size, n)) for r in range(world)
    ]


def all_true(flag: bool, ranks: Ranks) -> bool:
    """True on every rank when ``flag`` is true on every rank."""
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=ranks.comm_device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def everyones(items: list, ranks: Ranks | None) -> list:
    """Every rank's ``items`` (a few small objects, e.g. skipped-row records) in rank order,
    on every rank; ``items`` itself without ranks."""
    if ranks is None:
        return items
    import torch.distributed as dist

    parts: list = [None] * ranks.world
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


def barrier(ranks: Ranks | None) -> None:
    if ranks is not None:
        import torch.distributed as dist

        dist.barrier()


def commit_from_shards(
    store: FeatureCache,
    key: str,
    ids: tuple[str, ...],
    provenance: dict[str, Any],
    content: RowDigests | None,
    found: tuple[list[int], list[dict[str, str]]],
    ranks: Ranks,
) -> FeatureSet | None:
    """The entry of ``key`` committed by rank 0 from every rank's shards on disk, returned on
    every rank as a memory map of it; None on every rank when rank 0 does not see shards covering
    every row (then gather with :func:`gather_rows`). Collective: every rank calls it after
    writing all its rows as shards.

    ``found``: this rank's skipped rows (``skip_bad``): their indices into ``ids`` (NaN in the
    shards) and the records of those this run skipped (``_Job.skipped``); rank 0 lists every
    rank's in ``provenance["skipped_rows"]``. Every rank returns rank 0's provenance (the entry's,
    with its ``created`` time).

    Raises:
        AlignkitError: rank 0 could not write the entry (on every rank, naming why).
    """
    import torch.distributed as dist

    from alignkit.features._shards import first_gap
    from alignkit.features.featureset import FeatureSet
    from alignkit.features.skipped import marked
    from alignkit.features.store import map_tensor

    barrier(ranks)  # every rank's shards are on disk
    seen = not ranks.is_main or first_gap(store.load_shards(key)) == len(ids)
    if not all_true(seen, ranks):
        log.warning(
            "rank 0 does not see every rank's resume shards in %s (ranks on several machines, "
            "each with its own cache folder?): gathering the features of %d rows to every rank",
            store.root, len(ids),
        )  # fmt: skip
        return None
    rows, records = found
    rows, records = everyones(rows, ranks), everyones(records, ranks)  # never features
    reply: list = [None]
    if ranks.is_main:
        provenance = marked(provenance, ids, sorted(rows), records)
        try:
            dtype = str(provenance["store_dtype"])
            store.commit_shards(key, ids, provenance, content, dtype)
            reply = [provenance]
        except (AlignkitError, OSError) as exc:  # said on every rank, not only here
            reply = [f"rank 0 could not write feature cache entry {key}: {exc}"]
    dist.broadcast_object_list(reply, src=0)
    if isinstance(reply[0], str):
        raise AlignkitError(reply[0])
    tensor, _ = map_tensor(store.path(key))
    return FeatureSet(tensor, ids, reply[0])


def gather_rows(part: torch.Tensor, blocks: list[tuple[int, int]], ranks: Ranks) -> torch.Tensor:
    """Concatenate every rank's ``(..., rows_r, d)`` block along the row axis, on every rank
    (without a cache: nothing on disk to share; see the module's docstring).

    ``part`` is this rank's block (float32, CPU); returns ``(..., n, d)`` float32 on CPU.
    """
    import torch.distributed as dist

    # a rank with no rows does not know the trailing shape: agree on it first
    shapes: list = [None] * ranks.world
    dist.all_gather_object(shapes, tuple(part.shape) if part.shape[-2] > 0 else None)
    template = next(s for s in shapes if s is not None)
    lead, dim = tuple(template[:-2]), template[-1]
    width = max(b - a for a, b in blocks)
    padded = torch.zeros((*lead, width, dim), dtype=torch.float32)
    rows = part.shape[-2]
    if rows:
        padded[..., :rows, :] = part
    padded = padded.to(ranks.comm_device)
    pieces = [torch.empty_like(padded) for _ in range(ranks.world)]
    dist.all_gather(pieces, padded)
    return torch.cat(
        [piece[..., : b - a, :].cpu() for piece, (a, b) in zip(pieces, blocks, strict=True)], dim=-2
    )
