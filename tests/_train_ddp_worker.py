"""Run under torchrun (2 CPU ranks, gloo) by test_training_distributed.py: one global batch's loss
and gradients per (loss, captions, token level) case, then a short train_projector run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

from _training_support import ddp_cases, ddp_train_set  # noqa: E402

from alignkit.training import TrainConfig, build_model, train_projector  # noqa: E402
from alignkit.training.build import ModelSpec  # noqa: E402
from alignkit.training.distributed import DistContext  # noqa: E402
from alignkit.training.trainer import batch_loss  # noqa: E402


def main() -> None:
    args = json.loads(sys.argv[1])
    out = Path(args["out"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ctx = DistContext(rank, world)
    from torch.nn.parallel import DistributedDataParallel

    for name, (config, data, batch) in ddp_cases().items():
        torch.manual_seed(0)
        model = build_model(config, ModelSpec.of(data)).double()
        ddp = DistributedDataParallel(model)
        local, value, _ = batch_loss(model, ddp, batch, ctx, torch.device("cpu"), torch.float64)
        (local * world).backward()  # DDP averages over ranks
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        torch.save({"loss": value, "grads": grads}, out / f"{name}.rank{rank}.pt")

    config, train = TrainConfig.from_dict(args["config"]), ddp_train_set()
    result = train_projector(config, train, out_dir=out / "run", progress=False, device="cpu")
    torch.save(result.model.state_dict(), out / f"trained.rank{rank}.pt")
    assert dist.is_initialized()  # train_projector did not destroy a group it did not create
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
