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


@pytest.mark.distributed
@pytest.mark.slow  # two torchrun ranks import torch and train: ~30 s on the loaded machine
def test_under_torchrun_rank_0_alone_prepares_and_writes_the_run_folder(tmp_path):
    """Every rank used to prepare the folder and write run.json and config.json (with
    --overwrite, two ranks each moved "the earlier run" aside): now rank 0 alone does, the
    others wait for it, and the run ends done."""
    out, log = tmp_path / "run", tmp_path / "writes.txt"
    argv = ["train", "-v", "random:image-8", "-t", "random:text-12", "-p", "synthetic", "-n", "48"]
    argv += ["--out", str(out), "--cache", "off", "--device", "cpu", "--quiet", "--width", "8"]
    argv += ["--epochs", "2", "--batch-size", "16"]
    for extra in ([], ["--overwrite"]):  # a new folder, then a finished run replaced
        log.unlink(missing_ok=True)
        done = launch([str(Path(__file__).with_name("_train_cli_rank_worker.py")), str(log),
                       *argv, *extra], timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        writes = log.read_text().splitlines()
        assert sorted(set(writes)) == [
            "0 _write_config", "0 end_out_dir", "0 prepare_out_dir", "0 write_run_file"
        ], writes  # fmt: skip
        assert json.loads((out / "run.json").read_text())["status"] == "done"
        assert (out / "config.json").is_file()
    assert not list(tmp_path.glob(".run.old-*"))  # the replaced run is gone, nothing left aside
