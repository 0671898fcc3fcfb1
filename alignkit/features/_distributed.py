"""Extraction across the ranks of a ``torchrun`` job: who does which rows, and the gather.

Rows are split into contiguous blocks of whole batches (batch ``b`` covers rows
``[b * batch_size, (b + 1) * batch_size)`` in every layout), so each row is computed in exactly the
batch a single process would put it in, and the gathered features are bitwise those of a
single-process run on the same device.
"""

from __future__ import annotations

import atexit
import logging
import os
from dataclasses import dataclass

import torch

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


def current_ranks(device: torch.device) -> Ranks | None:
    """The process group to shard over. None for a single process.

    Under torchrun with no process group yet, this initialises the default one from the
    environment (NCCL for a CUDA ``device``, else gloo) and keeps it for later calls (the
    torchrun rendezvous cannot be joined twice by one process); it is destroyed at exit.
    """
    import torch.distributed as dist

    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if not launched_by_torchrun():
            return None
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
        atexit.register(_destroy_at_exit)
        log.info(
            "initialised a %s process group: rank %d of %d",
            backend,
            dist.get_rank(),
            dist.get_world_size(),
        )
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


def _destroy_at_exit() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


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


def barrier(ranks: Ranks | None) -> None:
    if ranks is not None:
        import torch.distributed as dist

        dist.barrier()


def gather_rows(part: torch.Tensor, blocks: list[tuple[int, int]], ranks: Ranks) -> torch.Tensor:
    """Concatenate every rank's ``(..., rows_r, d)`` block along the row axis, on every rank.

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
