"""``hf:<hub id or local folder>``: a transformers ``AutoModel`` as an image or text encoder.

Images: ViT, DINOv2, CLIP/SigLIP vision towers, ConvNeXt and other ``AutoModel`` vision backbones;
preprocessing follows the model's saved image-processor config (resize, crop, mean/std).
Text: encoders (BERT, RoBERTa, MPNet, ...; default pooling masked mean) and decoder language models
(GPT-2, Llama, ...; left padding with position ids that skip the padding, default pooling the last
token). Layers come from ``output_hidden_states`` (the embedding output is left out; the last entry
is the model's final, normed output, so ``layer=-1`` equals ``layer="last"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from alignkit._device import resolve_device
from alignkit.encoders._util import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_layer_index,
    files_identity,
    freeze,
    image_transform,
    log,
    parse_layer,
    pool_tokens,
    seeded,
    stack_padded,
    tokenizer_counts,
)
from alignkit.encoders.base import Encoder, check_pooling
from alignkit.errors import AlignkitError

IMAGE_POOLINGS = ("default", "cls", "mean", "mean_all", "cls+mean")
TEXT_POOLINGS = ("default", "cls", "mean", "last", "cls+mean")
CONV_POOLINGS = ("default", "mean")

_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _is_causal(config: Any) -> bool:
    """Decoder LM: its type has a causal-LM head class and no masked-LM one (BERT/RoBERTa have
    both)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = config.model_type
    return (
        kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def _is_vision(config: Any) -> bool:
    return hasattr(config, "num_channels") and not hasattr(config, "vocab_size")


class HFEncoder(Encoder):
    """A transformers model as a frozen encoder.

    Args:
        model_id: a hub id (needs a network or a warm cache) or a local folder saved with
            ``save_pretrained`` (model, and its tokenizer or image processor).
        modality: ``"image"`` or ``"text"``; inferred from the config, required only to pick a tower
            of a two-tower model (CLIP, SigLIP), where it defaults to ``"image"``.
        max_length: tokens kept per caption (default: the tokenizer's limit, at most 512).
        causal: force decoder-LM handling on or off (default: inferred from the model type).
        revision: hub revision.
        random_init: same architecture, random weights from ``seed`` (the ``random-init:`` control).
    """

    def __init__(
        self,
        model_id: str,
        *,
        spec: str,
        device: str | torch.device = "auto",
        pooling: str = "default",
        layer: str | int = "last",
        modality: str | None = None,
        max_length: int | None = None,
        causal: bool | None = None,
        revision: str | None = None,
        random_init: bool = False,
        seed: int = 0,
        precision: str = "auto",
    ) -> None:
        import transformers
        from transformers import AutoConfig, AutoModel

        self.name = spec
        self.device = resolve_device(device)
        self.precision = precision
        self._model_id = model_id
        local = Path(model_id).expanduser()
        source = str(local) if local.is_dir() else model_id
        try:
            config = AutoConfig.from_pretrained(source, revision=revision)
        except (OSError, ValueError) as exc:
            raise AlignkitError(
                f"could not load the config of hf:{model_id}: it is not a local folder and the hub "
                f"is unreachable or has no such model ({type(exc).__name__}); `alignkit "
                "list-encoders` lists those that load offline here"
            ) from exc
        two_tower = hasattr(config, "vision_config") and hasattr(config, "text_config")
        if modality is None:
            modality = "image" if two_tower or _is_vision(config) else "text"
        if modality not in ("image", "text"):
            raise AlignkitError(f"modality must be 'image' or 'text': got {modality!r}")
        self.modality = modality
        try:
            with seeded(seed):
                if random_init:
                    model = AutoModel.from_config(config)
                else:
                    model = AutoModel.from_pretrained(source, revision=revision)
        except (OSError, ValueError) as exc:
            raise AlignkitError(f"could not load the weights of hf:{model_id}: {exc}") from exc
        if two_tower:
            model = model.vision_model if modality == "image" else model.text_model
        self.model = freeze(model).to(self.device)
        self._hf_config = model.config

        if random_init:
            self._identity = f"random-init:seed={seed}:transformers=={transformers.__version__}"
        elif local.is_dir():
            files = [p for p in sorted(local.iterdir()) if p.suffix in _WEIGHT_SUFFIXES]
            self._identity = files_identity(files) if files else f"local:{local.resolve()}"
        else:
            commit = getattr(config, "_commit_hash", None) or revision or "unknown-revision"
            self._identity = f"hub:{model_id}@{commit}"

        self.layer = parse_layer(layer)
        self.n_layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
        self._conv = False
        width = int(getattr(model.config, "hidden_size", 0) or 0)
        if self.modality == "image":
            self._init_image(source, config, pooling, width)
        else:
            self._init_text(source, pooling, max_length, causal, config, width)
        if isinstance(self.layer, int):
            check_layer_index(self.layer, self.n_layers, spec)

    # -- images --------------------------------------------------------------------------------
    def _init_image(self, source: str, config: Any, pooling: str, width: int) -> None:
        # CNN backbones (ConvNeXt, ResNet, ...) have per-stage widths and no token width
        self._conv = hasattr(config, "hidden_sizes") and not hasattr(config, "hidden_size")
        if self._conv:  # ConvNeXt-like: stages of different widths
            self.pooling = check_pooling(pooling, CONV_POOLINGS, self.name)
            self._layer_dims = [int(h) for h in config.hidden_sizes]
            self.n_layers = len(self._layer_dims)
            self.dim = self._layer_dims[-1] if self.layer != "all" else max(self._layer_dims)
            if isinstance(self.layer, int):
                self.dim = self._layer_dims[check_layer_index(self.layer, self.n_layers, self.name)]
        else:
            self.pooling = check_pooling(pooling, IMAGE_POOLINGS, self.name)
            self.dim = width * (2 if self.pooling == "cls+mean" else 1)
        self._transform_config = self._image_config(source, config)
        self._preprocessor = image_transform(**self._transform_config)

    def _image_config(self, source: str, config: Any) -> dict[str, Any]:
        from transformers import AutoImageProcessor

        vision = getattr(config, "vision_config", config)
        try:
            proc = AutoImageProcessor.from_pretrained(source)
        except (OSError, ValueError, TypeError) as exc:
            size = int(getattr(vision, "image_size", 224))
            log.warning(
                "hf:%s has no image processor config (%s); using %d px and ImageNet mean/std",
                self._model_id,
                type(exc).__name__,
                size,
            )
            return {
                "resize": (size, size),
                "crop": None,
                "mean": IMAGENET_MEAN,
                "std": IMAGENET_STD,
            }
        size = dict(getattr(proc, "size", None) or {})
        if "shortest_edge" in size:
            resize: Any = int(size["shortest_edge"])
        elif "height" in size:
            resize = (int(size["height"]), int(size["width"]))
        else:
            resize = int(getattr(vision, "image_size", 224))
        crop = None
        if getattr(proc, "do_center_crop", False):
            crop_size = dict(getattr(proc, "crop_size", None) or {})
            crop = int(crop_size.get("height", resize if isinstance(resize, int) else resize[0]))
        resample = getattr(proc, "resample", 2)
        return {
            "resize": resize,
            "crop": crop,
            "mean": tuple(float(v) for v in (proc.image_mean or IMAGENET_MEAN)),
            "std": tuple(float(v) for v in (proc.image_std or IMAGENET_STD)),
            "interpolation": _PIL_RESAMPLE.get(int(resample), "bilinear"),
        }

    # -- text ----------------------------------------------------------------------------------
    def _init_text(
        self,
        source: str,
        pooling: str,
        max_length: int | None,
        causal: bool | None,
        config: Any,
        width: int,
    ) -> None:
        from transformers import AutoTokenizer

        self._causal = _is_causal(config) if causal is None else bool(causal)
        allowed = TEXT_POOLINGS
        if pooling == "mean_all":
            raise AlignkitError(
                f"pooling 'mean_all' is an image-token pooling; for text {self.name} expected one "
                f"of: {', '.join(allowed)} ('mean' already averages every non-padding token)"
            )
        self.pooling = check_pooling(pooling, allowed, self.name)
        try:
            tok = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise AlignkitError(
                f"could not load the tokenizer of hf:{self._model_id}: {exc}"
            ) from exc
        if self._causal:
            tok.padding_side = "left"  # the last token of every row sits at position -1
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        self.tokenizer = tok
        limit = min(
            int(tok.model_max_length)
            if tok.model_max_length and tok.model_max_length < 1e6
            else 512,
            int(getattr(config, "max_position_embeddings", 512) or 512),
            512,
        )
        self.max_length = int(max_length) if max_length else limit
        self.token_limit = self.max_length  # longer captions are cut (Encoder.truncation)
        self.dim = width * (2 if self.pooling == "cls+mean" else 1)

    def _token_counts(self, texts: list[str]) -> list[int]:
        return tokenizer_counts(self.tokenizer, texts)

    def _text_default(self) -> str:
        return "last" if self._causal else "mean"

    # -- forward -------------------------------------------------------------------------------
    def _hidden(self, out: Any) -> list[torch.Tensor]:
        """Per-layer outputs without the embedding output; the last is the final (normed) one."""
        hidden = list(out.hidden_states[1:])
        if not self._conv_like(out):
            hidden[-1] = out.last_hidden_state
        return hidden

    def _conv_like(self, out: Any) -> bool:
        return out.last_hidden_state.ndim == 4

    def _forward(self, batch: Any) -> torch.Tensor:
        return self._forward_image(batch) if self.modality == "image" else self._forward_text(batch)

    def _forward_image(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.device)
        want_layers = self.layer != "last"
        out = self.model(pixel_values=pixels, output_hidden_states=want_layers)
        if self._conv:
            if not want_layers:
                pooled = getattr(out, "pooler_output", None)
                if self.pooling == "default" and pooled is not None:
                    return pooled.flatten(1)
                return out.last_hidden_state.mean(dim=(2, 3))
            maps = list(out.hidden_states[1:])  # (B, C_s, H_s, W_s) per stage
            pooled_maps = [m.mean(dim=(2, 3)) for m in maps]
            if self.layer == "all":
                return stack_padded(pooled_maps)
            return pooled_maps[check_layer_index(self.layer, self.n_layers, self.name)]
        n_patch = self._n_patches(pixels)
        if not want_layers:
            tokens = out.last_hidden_state  # (B, T, D)
            n_prefix = tokens.shape[1] - n_patch
            if self.pooling == "default":
                pooled = getattr(out, "pooler_output", None)
                if pooled is not None:
                    return pooled
            return pool_tokens(tokens, self._pool_for(n_prefix), n_prefix=n_prefix)
        hidden = self._hidden(out)  # L x (B, T, D)
        n_prefix = hidden[0].shape[1] - n_patch
        pooling = self._pool_for(n_prefix)
        if self.layer == "all":
            return torch.stack([pool_tokens(h, pooling, n_prefix=n_prefix) for h in hidden])
        return pool_tokens(hidden[self.layer], pooling, n_prefix=n_prefix)

    def _n_patches(self, pixels: torch.Tensor) -> int:
        vision = self._hf_config
        patch = getattr(vision, "patch_size", None)
        if isinstance(patch, (list, tuple)):
            patch = patch[0]
        return (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)

    def _pool_for(self, n_prefix: int) -> str:
        """The token pooling to apply; "default" without a pooler head is CLS (or mean without
        a class token)."""
        pooling = self.pooling
        if pooling == "default":
            pooling = "cls" if n_prefix > 0 else "mean"
        if pooling in ("cls", "cls+mean") and n_prefix == 0:
            raise AlignkitError(
                f"pooling {self.pooling!r} needs a class token, and {self.name} has none; "
                "expected one of: default, mean, mean_all"
            )
        return pooling

    def _forward_text(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        inputs = {
            k: v.to(self.device)
            for k, v in enc.items()
            if k in ("input_ids", "attention_mask", "token_type_ids")
        }
        mask = inputs["attention_mask"]
        if self._causal:
            # left padding: number the real tokens 0, 1, 2, ... as an unpadded sequence would be
            inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        want_layers = self.layer != "last"
        out = self.model(**inputs, output_hidden_states=want_layers)
        pooling = self._text_default() if self.pooling == "default" else self.pooling
        if not want_layers:
            return pool_tokens(out.last_hidden_state, pooling, mask=mask)
        hidden = self._hidden(out)
        if self.layer == "all":
            return torch.stack([pool_tokens(h, pooling, mask=mask) for h in hidden])
        return pool_tokens(hidden[self.layer], pooling, mask=mask)

    def _forward_tokens(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Last-layer tokens: text token states and attention mask; ViT prefix + patch tokens;
        a conv model's last map flattened (B, C, H, W) -> (B, H*W, C)."""
        if self.modality == "image":
            out = self.model(pixel_values=batch.to(self.device))
            tokens = out.last_hidden_state
            if tokens.ndim == 4:
                tokens = tokens.flatten(2).transpose(1, 2)
            return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        enc = self.tokenizer(
            batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        inputs = {
            k: v.to(self.device)
            for k, v in enc.items()
            if k in ("input_ids", "attention_mask", "token_type_ids")
        }
        if self._causal:
            mask = inputs["attention_mask"]
            inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.model(**inputs)
        return out.last_hidden_state, inputs["attention_mask"].bool()

    def weights_identity(self) -> str:
        return self._identity

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "pooling": self.pooling,
            "layer": self.layer,
            "model": self._model_id,
        }
        if self.modality == "image":
            cfg["transform"] = {
                k: (list(v) if isinstance(v, tuple) else v)
                for k, v in self._transform_config.items()
            }
        else:
            cfg.update(max_length=self.max_length, causal=self._causal)
        return cfg


def create(model_id: str, **options: Any) -> HFEncoder:
    return HFEncoder(model_id, **options)
