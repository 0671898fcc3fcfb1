"""The data-dependent default recipe (issue 17 item 1): resolve_recipe and what the trainer records.

The expected values below are worked out by hand from the rule in the module docstring of
alignkit.training.recipe (batch: the largest power of two <= n/4 within [16, 512], never above
n; epochs: 10, or more where 10 would be fewer than 60 optimizer steps), not read back from the
code.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
from _training_support import synthetic_pairs

from alignkit.errors import AlignkitError
from alignkit.training import TrainConfig, train_projector
from alignkit.training.recipe import resolve_recipe


def test_defaults_are_auto_and_resolve_by_size():
    config = TrainConfig()
    assert (config.batch_size, config.epochs) == ("auto", "auto")
    # n: (batch, epochs); steps an epoch = n // batch
    expected = {
        6000: (512, 10),  # 1500 -> 1024 -> cap 512; 11 steps an epoch: the recipe tuned at 6,000
        20000: (512, 10),  # capped at 512: 39 steps an epoch, 390 steps
        2000: (256, 10),  # 500 -> 256; 7 an epoch, 70 steps
        1000: (128, 10),  # 250 -> 128; 7 an epoch (the run: 1 step of 512 an epoch)
        500: (64, 10),  # 125 -> 64; 7 an epoch
        180: (32, 12),  # 45 -> 32; 5 an epoch -> ceil(60 / 5) = 12
        60: (16, 20),  # 15 -> 8 -> floor 16; 3 an epoch -> ceil(60 / 3) = 20
        3: (3, 60),  # fewer images than the smallest batch: the whole set, 1 step an epoch
    }
    for n, (batch, epochs) in expected.items():
        resolved, notes = resolve_recipe(config, n)
        assert (resolved.batch_size, resolved.epochs) == (batch, epochs), n
        assert resolved.differences(config).keys() == {"batch_size", "epochs"}
        said = " ".join(note.message for note in notes)
        assert f"batch_size auto -> {batch} " in said and f"epochs auto -> {epochs} " in said


def test_user_values_are_kept_and_checked():
    mine = TrainConfig(batch_size=100, epochs=3, lr=5e-4)
    resolved, notes = resolve_recipe(mine, 1000)
    assert resolved == mine and notes == []  # 10 steps an epoch x 3 = 30 steps: no warning
    resolved, notes = resolve_recipe(dataclasses.replace(mine, epochs=2), 1000)
    assert resolved.epochs == 2 and [n.warning for n in notes] == [True]  # 20 steps: warned
    # only one of the two given: the other fits the given one
    resolved, _ = resolve_recipe(TrainConfig(batch_size=250), 1000)
    assert (resolved.batch_size, resolved.epochs) == (250, 15)  # 4 steps an epoch: ceil(60/4)
    resolved, _ = resolve_recipe(TrainConfig(epochs=7), 1000)
    assert (resolved.batch_size, resolved.epochs) == (128, 7)
    # a batch larger than the data is refused, not clamped (it used to be clamped silently)
    with pytest.raises(AlignkitError, match=r"batch size of 512 is larger than .*180 images"):
        resolve_recipe(TrainConfig(batch_size=512), 180)
    assert resolve_recipe(TrainConfig(batch_size=180), 180)[0].batch_size == 180


def test_short_user_schedule_and_tiny_data_warn():
    # the case: 1,000 images, batch 512, 10 epochs = 10 optimizer steps
    _, notes = resolve_recipe(TrainConfig(batch_size=512, epochs=10), 1000)
    warnings = [n.message for n in notes if n.warning]
    assert len(warnings) == 1 and "only 10 optimizer steps" in warnings[0]
    _, notes = resolve_recipe(TrainConfig(), 3)
    assert any(n.warning and "only 3 training images" in n.message for n in notes)
    for n in (100, 6000):
        _, notes = resolve_recipe(TrainConfig(), n)
        assert not any(note.warning for note in notes), n
    with pytest.raises(AlignkitError, match="at least 2 training images"):
        resolve_recipe(TrainConfig(), 1)


def test_auto_validation_rejects_other_words():
    with pytest.raises(AlignkitError, match="TrainConfig.epochs must be a positive int: got 'x'"):
        TrainConfig(epochs="x")
    assert TrainConfig.from_dict({"batch_size": "auto"}).batch_size == "auto"


@pytest.mark.slow  # two short trainings: a few seconds idle, a minute on the loaded machine
def test_trainer_records_the_resolved_recipe(tmp_path, caplog):
    """The run uses and records the resolved values: the result, the checkpoint's config, the
    number of steps; an auto config resumes its own run; tiny data warns through the log."""
    from safetensors import safe_open

    train = synthetic_pairs(40, seed=0)  # auto: batch 16 (floor), 2 steps an epoch, 30 epochs
    config = TrainConfig(width=8, patience=None, eval_every=30)  # 2 checkpoints
    result = train_projector(config, train, out_dir=tmp_path, progress=False, device="cpu")
    assert (result.config.batch_size, result.config.epochs) == (16, 30)
    assert result.steps == 60
    assert any("batch_size auto -> 16" in note for note in result.notes)
    with safe_open(str(tmp_path / "checkpoint.safetensors"), framework="pt") as f:
        saved = json.loads(f.metadata()["config"])
    assert (saved["batch_size"], saved["epochs"]) == (16, 30)
    again = train_projector(config, train, out_dir=tmp_path, progress=False, device="cpu")
    assert again.steps == 60  # the finished run is found, not refused as another config
    for a, b in zip(result.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(a, b)

    with caplog.at_level(logging.WARNING, logger="alignkit"):
        train_projector(config, synthetic_pairs(3, seed=1), progress=False, device="cpu")
    assert "only 3 training images" in caplog.text
    with pytest.raises(AlignkitError, match="batch size of 512 is larger"):
        train_projector(TrainConfig(batch_size=512, width=8), train, progress=False)


@pytest.mark.slow  # encoders built and a short training: ~10 s on the loaded machine
def test_run_folder_config_records_the_resolved_recipe(tmp_path):
    """config.json of a run (what `alignkit train` writes) holds the values used, not "auto"."""
    from alignkit.training.pair import train_pair

    out = tmp_path / "run"
    config = TrainConfig(width=8, eval_every=30)
    train_pair("random:image-8", "random:text-12", "synthetic", config, out, n=48, cache=False,
               progress=False, device="cpu")  # fmt: skip
    written = json.loads((out / "config.json").read_text())
    # 48 images: 12 -> 8 -> floor 16; 3 steps an epoch -> 20 epochs
    assert (written["train_config"]["batch_size"], written["train_config"]["epochs"]) == (16, 20)
    assert written["steps"] == 60
    assert any("only 48 training images" in note for note in written["recipe_notes"])


def test_train_pair_logs_each_recipe_warning_once(tmp_path, caplog):
    """train_pair logs the recipe's notes before extraction; the trainer, handed the same recipe,
    used to log them again (issue 18: a new user saw every warning twice)."""
    from alignkit.training.pair import train_pair

    config = TrainConfig(width=8, epochs=1, batch_size=8)  # 24 images: 3 steps, too few
    with caplog.at_level(logging.INFO, logger="alignkit"):
        train_pair("random:image-8", "random:text-12", "synthetic", config, tmp_path / "run",
                   n=24, cache=False, progress=False, device="cpu")  # fmt: skip
    messages = [r.getMessage() for r in caplog.records]
    few_images = [m for m in messages if m.startswith("only 24 training images")]
    few_steps = [m for m in messages if m.startswith("epochs=1 x 3 steps an epoch")]
    assert len(few_images) == 1 and len(few_steps) == 1, messages
