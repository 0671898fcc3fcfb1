"""An encoder never changes the weights it loads (issue 8, item 1), on every backend that loads
weights from a file: after ``create_encoder`` and after encoding, every parameter and buffer
equals the file, every module is in eval mode and no parameter asks for gradients.

Fast: small random models written to a temporary file first, with BatchNorm running statistics
set far from their initial values, so a forward pass in training mode (which pulls them toward
the batch's statistics and counts ``num_batches_tracked``) would show. The same checks on the
real packaged weights are in ``test_encoders_reference.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from encoders import tiny  # tests/encoders/tiny.py
from safetensors.torch import load_file

from alignkit.encoders import create_encoder

IMAGES = tiny.images(3, size=(64, 56))


def _distinct_batchnorm_stats(model: torch.nn.Module, seed: int = 0) -> int:
    """Give every BatchNorm running statistics unlike any batch's (mean 3 +- 1, var 5..9) and a
    count of 7; returns how many BatchNorm layers there are."""
    gen = torch.Generator().manual_seed(seed)
    n = 0
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(3 + torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(5 + 4 * torch.rand(m.running_var.shape, generator=gen))
            m.num_batches_tracked.fill_(7)
            n += 1
    return n


def assert_frozen_as_file(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    """Every tensor of the file equals the model's (bitwise), and the model is frozen. (Some
    files also hold buffers that the model no longer saves, e.g. BERT's ``position_ids``.)"""
    state = {**dict(model.named_buffers()), **model.state_dict()}
    missing = sorted(set(expected) - set(state))
    assert not missing, f"keys of the file not in the model: {missing[:5]}"
    changed = [k for k, v in expected.items() if not torch.equal(state[k].cpu(), v)]
    assert not changed, f"{len(changed)} tensors differ from the file, e.g. {changed[:5]}"
    assert not any(m.training for m in model.modules()), "a module is in training mode"
    assert not any(p.requires_grad for p in model.parameters()), "a parameter requires grad"


@pytest.mark.parametrize("layer", ["last", "all"])
def test_torchvision_cnn_keeps_the_weights_of_its_file(tmp_path: Path, layer: str) -> None:
    """The width probe of ``torchvision:`` once ran a forward in training mode: the running
    statistics moved and ``num_batches_tracked`` became 1 (8 with the stats set here)."""
    import torchvision

    model = torchvision.models.mobilenet_v2()
    assert _distinct_batchnorm_stats(model) > 40
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(model.state_dict(), path)
    expected = torch.load(path, weights_only=True)
    enc = create_encoder("torchvision:mobilenet_v2", weights=path, layer=layer, device="cpu")
    assert_frozen_as_file(enc.model, expected)
    enc.encode(IMAGES)
    assert_frozen_as_file(enc.model, expected)


def test_efficientnet_lite_keeps_the_weights_of_its_file(tmp_path: Path) -> None:
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    model = lite.EfficientNet.from_name("efficientnet-lite0")
    assert _distinct_batchnorm_stats(model) > 40
    path = tmp_path / "lite0.pth"
    torch.save(model.state_dict(), path)
    expected = torch.load(path, weights_only=True)
    enc = create_encoder(
        "efficientnet-lite:efficientnet_lite0", weights=path, layer="all", device="cpu"
    )
    assert_frozen_as_file(enc.model, expected)
    enc.encode(IMAGES[:1])
    assert_frozen_as_file(enc.model, expected)


@pytest.mark.parametrize("arch", ["test_efficientnet", "test_resnet"])
def test_timm_checkpoint_is_kept_as_loaded(tmp_path: Path, arch: str) -> None:
    import timm

    model = timm.create_model(arch)
    assert _distinct_batchnorm_stats(model) > 0
    path = tmp_path / f"{arch}.pth"
    torch.save(model.state_dict(), path)
    expected = torch.load(path, weights_only=True)
    enc = create_encoder(f"timm:{arch}", checkpoint_path=path, layer="all", device="cpu")
    assert_frozen_as_file(enc.model, expected)
    enc.encode(IMAGES)
    assert_frozen_as_file(enc.model, expected)


def test_hf_vision_model_with_batchnorm_is_kept_as_saved(tmp_path: Path) -> None:
    from transformers import ResNetConfig, ResNetModel

    cfg = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", image_size=32
    )
    model = ResNetModel(cfg)
    assert _distinct_batchnorm_stats(model) > 0
    model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        '{"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 32},'
        ' "crop_pct": 0.875, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}'
    )
    expected = load_file(tmp_path / "model.safetensors")
    enc = create_encoder(f"hf:{tmp_path}", layer="all", device="cpu")
    assert_frozen_as_file(enc.model, expected)
    enc.encode(IMAGES)
    assert_frozen_as_file(enc.model, expected)


def test_sentence_transformer_and_hf_text_models_are_kept_as_saved(tmp_path: Path) -> None:
    bert = tiny.save_bert(tmp_path / "bert")
    st = tiny.save_sentence_transformer(tmp_path / "st", bert)
    [weights] = sorted(st.rglob("model.safetensors"))
    expected = load_file(weights)
    enc = create_encoder(f"st:{st}", layer="all", device="cpu")
    auto = enc.model[0].auto_model
    assert_frozen_as_file(auto, {k.removeprefix("bert."): v for k, v in expected.items()})
    assert not any(m.training for m in enc.model.modules())
    enc.encode(tiny.CAPTIONS)
    assert_frozen_as_file(auto, {k.removeprefix("bert."): v for k, v in expected.items()})

    hf = create_encoder(f"hf:{bert}", device="cpu")
    assert_frozen_as_file(hf.model, load_file(bert / "model.safetensors"))
