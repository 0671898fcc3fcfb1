"""`alignkit train` on real Flickr8k with two offline encoders: far above chance (small subsets)."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.cli import main

pytestmark = [pytest.mark.real, pytest.mark.slow]

VISION = "torchvision:mobilenet_v2"
TEXT = "onnx:paraphrase-MiniLM-L3-v2"


def _recall_at_k(sim: torch.Tensor, text_to_image: torch.Tensor, k: int) -> tuple[float, float]:
    """Naive loops: image->text (any of its captions in the top k), text->image."""
    i2t = t2i = 0
    for i in range(sim.shape[0]):
        top = torch.topk(sim[i], k).indices.tolist()
        i2t += any(int(text_to_image[j]) == i for j in top)
    for j in range(sim.shape[1]):
        t2i += int(text_to_image[j]) in torch.topk(sim[:, j], k).indices.tolist()
    return 100.0 * i2t / sim.shape[0], 100.0 * t2i / sim.shape[1]


def test_train_on_flickr8k_subset_beats_chance(data_dir, tmp_path, capsys):
    import alignkit
    from alignkit.probes import load_probe

    out = tmp_path / "run"
    main_args = [
        "train", "--quiet", "--vision", VISION, "--text", TEXT, "--probe", "flickr8k:train",
        "--n", "300", "--val", "flickr8k:dev", "--val-n", "100", "--captions", "all",
        "--batch-size", "64", "--epochs", "40", "--patience", "5", "--width", "256",
        "--out", str(out), "--device", "cpu",
    ]  # fmt: skip
    try:
        main(main_args)
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr().err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["probe"]["n"] == 300 and cfg["val"]["n"] == 100
    assert cfg["val_metrics"]["i2t_r5"] > 20  # dev subsample, chance about 5

    # the saved pair, from raw test images and captions, on 100 test images x 500 captions
    test = load_probe("flickr8k:test").subsample(100, seed=1)
    aligned = alignkit.load_aligned(out, device="cpu")
    images = [row.load_image() for row in test.rows]
    captions = [c for row in test.rows for c in row.captions]
    text_to_image = torch.tensor([i for i, row in enumerate(test.rows) for _ in row.captions])
    sim = aligned.similarity(images, captions)  # (100, 500)
    assert sim.shape == (100, 500)
    i2t, t2i = _recall_at_k(sim, text_to_image, 5)
    # chance: i2t R@5 = 1 - C(495,5)/C(500,5) = 4.9 %, t2i R@5 = 5 %
    assert i2t > 25 and t2i > 20, (i2t, t2i)


def test_flickr8k_test_split_as_val_is_refused_before_any_extraction(data_dir, tmp_path, capsys):
    """Issue 16 item 7: early stopping on test recall would choose the weights by the test."""
    from _cli import run_cli

    out = tmp_path / "run"
    args = ["train", "--quiet", "--vision", VISION, "--text", TEXT, "--n", "300",
            "--val", "flickr8k:test", "--out", str(out),
            "--cache", str(tmp_path / "cache")]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 1 and "flickr8k:test is the 'test' split" in err and "--val-test-split" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    assert not (tmp_path / "cache").exists()
