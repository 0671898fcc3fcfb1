"""Two gloo ranks under torchrun see the global batch: loss, gradients and a short training run
equal one process on the same global batches (float64, to 1e-6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _launch import launch
from _training_support import ddp_cases, ddp_train_config, ddp_train_set

from alignkit.training import TrainConfig, build_model, train_projector
from alignkit.training.build import ModelSpec
from alignkit.training.distributed import DistContext, split_bounds
from alignkit.training.trainer import batch_loss

WORKER = Path(__file__).with_name("_train_ddp_worker.py")


def test_split_bounds_cover_every_row_in_near_equal_slices():
    assert split_bounds(7, 2) == [0, 3, 7]
    assert split_bounds(2, 3) == [0, 0, 1, 2]
    for n, w in [(1, 1), (10, 3), (64, 8)]:
        b = split_bounds(n, w)
        assert (
            b[0] == 0
            and b[-1] == n
            and max(y - x for x, y in zip(b, b[1:], strict=False)) <= -(-n // w)
        )


@pytest.mark.distributed
def test_two_ranks_give_the_one_process_loss_gradients_and_weights(tmp_path):
    args = {"out": str(tmp_path), "config": ddp_train_config()}
    proc = launch([str(WORKER), json.dumps(args)])
    err = proc.stderr
    assert proc.returncode == 0, err[-3000:]

    for name, (config, data, batch) in ddp_cases().items():
        torch.manual_seed(0)
        model = build_model(config, ModelSpec.of(data)).double()
        loss, value, _ = batch_loss(
            model, model, batch, DistContext(), torch.device("cpu"), torch.float64
        )
        loss.backward()
        for rank in (0, 1):
            got = torch.load(tmp_path / f"{name}.rank{rank}.pt")
            assert got["loss"] == pytest.approx(value, rel=1e-6, abs=1e-6), name
            for k, p in model.named_parameters():
                torch.testing.assert_close(
                    got["grads"][k], p.grad, rtol=1e-6, atol=1e-6, msg=f"{name} {k}"
                )

    single = train_projector(
        TrainConfig(**ddp_train_config()), ddp_train_set(), progress=False, device="cpu"
    )
    for rank in (0, 1):
        weights = torch.load(tmp_path / f"trained.rank{rank}.pt")
        for k, v in single.model.state_dict().items():
            torch.testing.assert_close(weights[k], v, rtol=1e-6, atol=1e-6, msg=k)
    assert (tmp_path / "run" / "projector.safetensors").exists()  # rank 0 wrote the run
