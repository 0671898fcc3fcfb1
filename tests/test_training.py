"""train_projector: learning, determinism, exact resume, early stopping, errors, files."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest
import torch
from _training_support import synthetic_pairs

from alignkit.errors import AlignkitError
from alignkit.training import PairedFeatures, TrainConfig, load_model, train_projector
from alignkit.training.trainer import _SimulatedStop, learning_rate, retrieval_recall

FAST = TrainConfig(width=16, batch_size=32, epochs=6, lr=3e-3, eval_every=3, patience=None)


def _weights(result) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def _assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_recall_matches_a_loop_over_queries():
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(7, 4, generator=g), torch.randn(12, 4, generator=g)
    t2i = torch.randint(0, 7, (12,), generator=g)
    t2i[:7] = torch.arange(7)  # every image has a caption
    got = retrieval_recall(image, text, t2i, ks=(1, 3))
    s = image @ text.T
    for k in (1, 3):
        hits = sum(
            any(int(t2i[j]) == i for j in torch.topk(s[i], k).indices.tolist()) for i in range(7)
        )
        assert got[f"i2t_r{k}"] == pytest.approx(100 * hits / 7)
        hits = sum(int(t2i[j]) in torch.topk(s[:, j], k).indices.tolist() for j in range(12))
        assert got[f"t2i_r{k}"] == pytest.approx(100 * hits / 12)
    # ties count against the query: every score equal -> only R@k with k >= all candidates hits
    flat = retrieval_recall(torch.ones(3, 2), torch.ones(3, 2), torch.arange(3), ks=(1, 3))
    assert flat["i2t_r1"] == 0.0 and flat["t2i_r1"] == 0.0
    assert flat["i2t_r3"] == 100.0 and flat["t2i_r3"] == 100.0


def test_learning_rate_warms_up_then_follows_a_cosine():
    config = TrainConfig(lr=0.1, warmup=0.1)
    lrs = [learning_rate(config, s, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.1)
    assert lrs[55] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


@pytest.mark.parametrize("loss", ["clip", "siglip"])
@pytest.mark.parametrize("tokens", [False, True])
def test_training_aligns_well_above_chance(loss, tokens):
    train = synthetic_pairs(96, tokens=tokens, seed=0)
    val = synthetic_pairs(40, tokens=tokens, seed=1, id_prefix="val")  # same relation, new rows
    projector = "residual" if tokens else "mlp"
    config = dataclasses.replace(FAST, loss=loss, projector=projector, epochs=20)
    result = train_projector(config, train, val, progress=False)
    # chance R@5 is 5/40 = 12.5% (i2t with 3 captions about 35%)
    assert result.metrics["t2i_r5"] > 50 and result.metrics["i2t_r5"] > 60
    first = result.history.iloc[0]
    assert result.history["train_loss"].iloc[-1] < first["train_loss"]


def test_all_captions_put_every_caption_in_the_batch(monkeypatch):
    from alignkit.training import trainer

    seen = []
    original = trainer.batch_loss

    def spy(model, forward, batch, *args, **kwargs):
        seen.append(len(batch.text_rows))
        return original(model, forward, batch, *args, **kwargs)

    monkeypatch.setattr(trainer, "batch_loss", spy)
    train = synthetic_pairs(64, captions=3)
    train_projector(dataclasses.replace(FAST, epochs=1, captions="all"), train, progress=False)
    assert seen == [96, 96]  # 2 batches of 32 images x 3 captions
    seen.clear()
    train_projector(dataclasses.replace(FAST, epochs=1, captions="one"), train, progress=False)
    assert seen == [32, 32]


def test_same_seed_is_bitwise_the_same_run_and_another_seed_is_not():
    train = synthetic_pairs(64)
    a = train_projector(FAST, train, progress=False)
    b = train_projector(FAST, train, progress=False)
    _assert_bitwise_equal(_weights(a), _weights(b))
    c = train_projector(dataclasses.replace(FAST, seed=1), train, progress=False)
    assert not torch.equal(
        _weights(a)["image.proj.linear.weight"], _weights(c)["image.proj.linear.weight"]
    )


@pytest.mark.parametrize(
    "config, tokens",
    [
        (dataclasses.replace(FAST, dropout=0.2, projector="residual", eval_every=4), False),
        (dataclasses.replace(FAST, loss="siglip", captions="all", eval_every=5), True),
    ],
)
def test_a_run_stopped_mid_epoch_resumes_to_bitwise_the_same_weights(tmp_path, config, tokens):
    train = synthetic_pairs(64, tokens=tokens)
    val = synthetic_pairs(24, tokens=tokens, seed=3, id_prefix="v")  # same relation
    whole = train_projector(config, train, val, tmp_path / "whole", progress=False)
    # 2 batches per epoch; stop at step 7 (mid-epoch 4), the last checkpoint is step 4 or 5
    with pytest.raises(_SimulatedStop):
        train_projector(config, train, val, tmp_path / "cut", progress=False, _stop_at_step=7)
    resumed = train_projector(config, train, val, tmp_path / "cut", progress=False)
    _assert_bitwise_equal(_weights(whole), _weights(resumed))
    assert resumed.best_step == whole.best_step
    cols = [c for c in whole.history if c != "elapsed_s"]
    pd.testing.assert_frame_equal(whole.history[cols], resumed.history[cols])
    again = train_projector(config, train, val, tmp_path / "cut", progress=False)  # finished
    _assert_bitwise_equal(_weights(whole), _weights(again))


def test_resume_refuses_another_config_or_other_features(tmp_path):
    train = synthetic_pairs(64)
    with pytest.raises(_SimulatedStop):
        train_projector(FAST, train, out_dir=tmp_path, progress=False, _stop_at_step=4)
    with pytest.raises(AlignkitError, match=r"another config \(lr: 0.003 -> 0.01\)") as err:
        train_projector(dataclasses.replace(FAST, lr=1e-2), train, out_dir=tmp_path, progress=False)
    assert "\n" not in str(err.value)
    wider = synthetic_pairs(64, d_image=20)
    with pytest.raises(AlignkitError, match="image_dim 12 \\(data: 20\\)"):
        train_projector(FAST, wider, out_dir=tmp_path, progress=False)
    other_rows = synthetic_pairs(64, id_prefix="other")
    with pytest.raises(AlignkitError, match="holds a run on other training rows"):
        train_projector(FAST, other_rows, out_dir=tmp_path, progress=False)
    # resume=False starts over
    fresh = train_projector(FAST, wider, out_dir=tmp_path, progress=False, resume=False)
    assert fresh.steps == 12


def test_early_stopping_keeps_the_best_weights(tmp_path):
    train = synthetic_pairs(64)
    noise = synthetic_pairs(30, seed=9, maps=5, id_prefix="v")  # another relation: recall wanders
    config = dataclasses.replace(FAST, epochs=60, eval_every=2, patience=3)
    result = train_projector(config, train, noise, tmp_path, progress=False)
    h = result.history
    assert result.stopped_early and len(h) < 60
    best_row = h["mean_recall"].idxmax()
    assert h.loc[best_row, "step"] == result.best_step
    assert len(h) - 1 - best_row == 3  # exactly `patience` validations after the best
    loaded, cfg, _, _ = load_model(tmp_path / "projector.safetensors")
    assert cfg == config
    _assert_bitwise_equal(_weights(result), {k: v for k, v in loaded.state_dict().items()})
    assert (tmp_path / "history.csv").exists() and (tmp_path / "history.png").stat().st_size > 0
    csv = pd.read_csv(tmp_path / "history.csv")
    assert list(csv["step"]) == list(h["step"])


def test_nan_loss_stops_naming_the_step_and_batch(tmp_path):
    train = synthetic_pairs(64)
    image = train.image.clone()
    image[40] = float("nan")
    bad = PairedFeatures(image, train.text, train.text_to_image, train.image_ids)
    with pytest.raises(
        AlignkitError, match=r"loss became nan at step \d+ \(epoch 1, batch \d of 2"
    ) as err:
        train_projector(FAST, bad, out_dir=tmp_path, progress=False)
    assert "features hold NaN/Inf" in str(err.value) and "\n" not in str(err.value)


def test_validation_overlapping_training_is_refused():
    train = synthetic_pairs(64)
    val = synthetic_pairs(10)  # ids img0..img9 are training ids too
    with pytest.raises(AlignkitError, match="shares 10 image ids with the training set"):
        train_projector(FAST, train, val, progress=False)


def test_config_errors_name_the_field_and_the_choices():
    with pytest.raises(AlignkitError, match="TrainConfig.projector.*expected one of: glu, linear"):
        TrainConfig(projector="attention")
    with pytest.raises(AlignkitError, match="TrainConfig.batch_size must be a positive int: got 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(AlignkitError, match="unknown TrainConfig keys \\['lr_max'\\]"):
        TrainConfig.from_dict({"lr_max": 1.0})


def test_progress_bar_can_be_turned_off(capsys):
    train = synthetic_pairs(64)
    train_projector(dataclasses.replace(FAST, epochs=1), train, progress=False)
    assert capsys.readouterr().err == ""
    train_projector(dataclasses.replace(FAST, epochs=1), train, progress=True)
    assert "train" in capsys.readouterr().err


def test_callers_rng_is_left_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_projector(dataclasses.replace(FAST, epochs=1), synthetic_pairs(64), progress=False)
    torch.testing.assert_close(torch.rand(3), expected)


KILLED_RUN = """
import sys, dataclasses
sys.path.insert(0, {tests!r})
from _training_support import synthetic_pairs
from alignkit.training import TrainConfig, train_projector
config = TrainConfig(**{config!r})
train_projector(config, synthetic_pairs(64), out_dir={out!r}, progress=False, device="cpu")
"""


@pytest.mark.slow
def test_a_killed_process_resumes_to_bitwise_the_same_weights(tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from safetensors import safe_open

    config = dataclasses.replace(FAST, epochs=100, eval_every=1, dropout=0.1, projector="residual")
    out = tmp_path / "killed"
    code = KILLED_RUN.format(
        tests=str(Path(__file__).parent), config=config.to_dict(), out=str(out)
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    ckpt = out / "checkpoint.safetensors"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)  # a few more steps: the kill lands mid-epoch, maybe mid-write
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert ckpt.exists(), err.decode()[-2000:]
    with safe_open(str(ckpt), framework="pt") as f:
        step = json.loads(f.metadata()["step"])
    assert 0 < step < 200, "the run must be cut before its end for this test to mean anything"
    # the killed run used one thread; so must these: a GEMM's bits depend on its thread count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed = train_projector(config, synthetic_pairs(64), out_dir=out, progress=False)
        whole = train_projector(
            config, synthetic_pairs(64), out_dir=tmp_path / "whole", progress=False
        )
    finally:
        torch.set_num_threads(threads)
    _assert_bitwise_equal(_weights(whole), _weights(resumed))


def test_plot_history_draws_on_the_axes_it_is_given():
    from matplotlib.figure import Figure

    from alignkit.training import plot_history

    train, val = synthetic_pairs(64), synthetic_pairs(20, seed=2, id_prefix="v")
    result = train_projector(dataclasses.replace(FAST, epochs=2), train, val, progress=False)
    ax = Figure().add_subplot()
    assert plot_history(result.history, ax=ax) is ax
    assert [line.get_label() for line in ax.get_lines()] == ["train loss", "val loss"]
    assert list(ax.get_lines()[0].get_xdata()) == list(result.history["step"])


def test_nan_loss_names_a_checkpoint_only_when_one_was_written(tmp_path):
    """Issue 16 item 14: the message said "the last checkpoint is in DIR" with none written."""
    train = synthetic_pairs(64)
    poisoned = PairedFeatures(
        torch.full_like(train.image, math.nan), train.text, train.text_to_image, train.image_ids
    )
    with pytest.raises(AlignkitError, match="at step 1 .*no checkpoint was written") as err:
        train_projector(FAST, poisoned, out_dir=tmp_path / "a", progress=False)
    assert "last checkpoint" not in str(err.value)
    assert not (tmp_path / "a" / "checkpoint.safetensors").exists()
    with pytest.raises(_SimulatedStop):  # a checkpoint at step 3 (eval_every=3), killed at 4
        train_projector(FAST, train, out_dir=tmp_path / "b", progress=False, _stop_at_step=4)
    with pytest.raises(AlignkitError, match=r"at step 4 .*the last checkpoint \(step 3\) is in"):
        train_projector(FAST, poisoned, out_dir=tmp_path / "b", progress=False)
