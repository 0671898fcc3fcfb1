"""Tiny random-initialised models saved to disk, so every backend is tested offline in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

WORDS = (
    "a an the dog dogs cat man woman child children boy girl runs running plays playing on in at "
    "grass beach water snow street bike ball red blue white black two three with of and is are "
    "sits jumps rides holds near park field shirt"
).split()


def images(n: int, seed: int = 0, size: tuple[int, int] = (48, 40)) -> list[Image.Image]:
    """n random RGB images (deterministic), of a non-square size to exercise resize and crop."""
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)) for _ in range(n)
    ]


CAPTIONS = [
    "a dog runs on the grass",
    "two children play with a red ball in the park",
    "a man rides a bike",
    "the cat sits",
    "a woman in a blue shirt holds a child near the water at the beach",
]


def save_wordpiece_tokenizer(folder: Path, max_length: int = 64) -> None:
    """A BERT-style uncased WordPiece tokenizer ([CLS] ... [SEP]) over :data:`WORDS`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(WORDS)) + [".", ","])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )
    fast.save_pretrained(folder)


def save_wordlevel_lm_tokenizer(folder: Path) -> None:
    """A decoder-LM style tokenizer: whitespace words, an end-of-text token, no padding token."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>"] + sorted(set(WORDS)) + [".", ","])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", model_max_length=64
    )
    fast.save_pretrained(folder)


def save_bert(folder: Path) -> Path:
    from transformers import BertConfig, BertModel

    save_wordpiece_tokenizer(folder)
    torch.manual_seed(123)  # not the seed random-init:... uses by default
    cfg = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(cfg).eval().save_pretrained(folder)
    return folder


def save_decoder(folder: Path, kind: str) -> Path:
    from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel

    save_wordlevel_lm_tokenizer(folder)
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = GPT2Config(
            vocab_size=64,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=64,
            bos_token_id=1,
            eos_token_id=1,
        )
        model = GPT2Model(cfg)
    else:
        cfg = LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            bos_token_id=1,
            eos_token_id=1,
            pad_token_id=None,
        )
        model = LlamaModel(cfg)
    model.eval().save_pretrained(folder)
    return folder


def save_vision(folder: Path, kind: str) -> Path:
    """Tiny ViT / DINOv2 with 2 registers / CLIP vision tower at 32 px, patch 8, with an image
    processor config that resizes to 32 x 32."""
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        ConvNextConfig,
        ConvNextModel,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    torch.manual_seed(0)
    common = dict(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    if kind == "vit":
        model = ViTModel(ViTConfig(**common))
    elif kind == "dinov2":
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**common, num_register_tokens=2))
    elif kind == "clip":
        model = CLIPVisionModel(CLIPVisionConfig(**common))
    else:  # a CNN: stages of widths 8, 16, 24
        model = ConvNextModel(
            ConvNextConfig(hidden_sizes=[8, 16, 24], depths=[1, 1, 1], num_stages=3, image_size=32)
        )
    model.eval().save_pretrained(folder)
    ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(folder)
    return folder


def save_sentence_transformer(folder: Path, bert_dir: Path) -> Path:
    from sentence_transformers import SentenceTransformer, models

    word = models.Transformer(str(bert_dir), max_seq_length=32)
    pool = models.Pooling(word.auto_model.config.hidden_size, pooling_mode="mean")
    SentenceTransformer(modules=[word, pool, models.Normalize()], device="cpu").save(str(folder))
    return folder
