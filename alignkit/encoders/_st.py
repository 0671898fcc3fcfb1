"""``st:<model id or folder>``: a sentence-transformers model with its own pooling and
normalisation.

Registry-shipped ids (``st:sentence-transformers/all-MiniLM-L6-v2``, ``.../all-mpnet-base-v2``) load
from their installed PyPI packages with no network; other ids load from the hub or a local folder.
``pooling="default"`` with ``layer="last"`` is exactly ``SentenceTransformer.encode`` (its pooling,
any Dense layers, its Normalize). Other poolings and layers pool the underlying transformer's token
states (``output_hidden_states``) with no normalisation; ``default`` at an intermediate layer uses
the model's pooling mode (mean / cls / last token) and its Normalize, if it has one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from alignkit._device import resolve_device
from alignkit.encoders import _offline
from alignkit.encoders._util import (
    check_layer_index,
    files_identity,
    freeze,
    parse_layer,
    pool_tokens,
    seeded,
    tokenizer_counts,
)
from alignkit.encoders.base import Encoder, check_pooling
from alignkit.errors import AlignkitError

POOLINGS = ("default", "cls", "mean", "last", "cls+mean")
_ST_MODES = {
    "mean": "mean",
    "cls": "cls",
    "lasttoken": "last",
    "mean_tokens": "mean",
    "cls_token": "cls",
}


def _pooling_mode(module: Any) -> str:
    mode = getattr(module, "pooling_mode", None)
    if mode is None and hasattr(module, "get_pooling_mode_str"):
        mode = module.get_pooling_mode_str()
    return str(mode or "mean")


class STEncoder(Encoder):
    """A sentence-transformers model as a frozen text encoder.

    Args:
        model_id: hub id (registry-shipped ones resolve to their package), or a local folder.
        max_length: tokens kept per caption (default: the model's ``max_seq_length``).
        random_init: the same transformer with random weights from ``seed`` (tokenizer and pooling
            kept): the ``random-init:`` control.
    """

    modality = "text"

    def __init__(
        self,
        model_id: str,
        *,
        spec: str,
        device: str | torch.device = "auto",
        pooling: str = "default",
        layer: str | int = "last",
        max_length: int | None = None,
        random_init: bool = False,
        seed: int = 0,
        precision: str = "auto",
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.name = spec
        self.device = resolve_device(device)
        self.precision = precision
        self._model_id = model_id
        registry_spec = f"st:{model_id}"
        local = Path(model_id).expanduser()
        if registry_spec in _offline.OFFLINE_MODELS:
            entry = _offline.OFFLINE_MODELS[registry_spec]
            if entry.installed:
                source = str(_offline.resolve(registry_spec))
                identity = entry.identity()
            else:  # users with a network still get it from the hub
                source, identity = model_id, None
        elif local.is_dir():
            source = str(local)
            weights = [p for p in sorted(local.rglob("*")) if p.suffix in (".safetensors", ".bin")]
            identity = files_identity(weights) if weights else f"local:{local.resolve()}"
        else:
            source, identity = model_id, None
        try:
            model = SentenceTransformer(source, device=str(self.device))
        except (OSError, ValueError) as exc:
            hint = "; `alignkit list-encoders` lists those that load offline here"
            if registry_spec in _offline.OFFLINE_MODELS:
                hint = f"; to load it offline: {_offline.OFFLINE_MODELS[registry_spec].pip}"
            raise AlignkitError(
                f"could not load st:{model_id} from {source} ({type(exc).__name__}: the hub is "
                f"unreachable or has no such model){hint}"
            ) from exc
        transformer = model[0]
        if random_init:
            from transformers import AutoModel

            with seeded(seed):
                fresh = AutoModel.from_config(transformer.auto_model.config)
            # in place: newer sentence-transformers make `auto_model` a read-only property
            transformer.auto_model.load_state_dict(fresh.state_dict())
            import sentence_transformers

            version = sentence_transformers.__version__
            identity = f"random-init:seed={seed}:sentence-transformers=={version}"
        if identity is None:
            commit = (
                getattr(transformer.auto_model.config, "_commit_hash", None) or "unknown-revision"
            )
            identity = f"hub:{model_id}@{commit}"
        self._identity = identity
        self.model = freeze(model)
        if max_length:
            self.model.max_seq_length = int(max_length)
        self.max_length = int(self.model.max_seq_length)
        self.token_limit = self.max_length  # longer captions are cut (Encoder.truncation)
        self._auto = transformer.auto_model
        self._mode = _ST_MODES.get(_pooling_mode(model[1]) if len(model) > 1 else "mean", "mean")
        self._normalize = any(type(m).__name__ == "Normalize" for m in model)

        if pooling == "mean_all":
            raise AlignkitError(
                f"pooling 'mean_all' is an image-token pooling; for text {spec} expected one of: "
                f"{', '.join(POOLINGS)} ('mean' already averages every non-padding token)"
            )
        self.pooling = check_pooling(pooling, POOLINGS, spec)
        self.layer = parse_layer(layer)
        self.n_layers = int(self._auto.config.num_hidden_layers)
        if isinstance(self.layer, int):
            check_layer_index(self.layer, self.n_layers, spec)
        width = int(self._auto.config.hidden_size)
        if self.pooling == "default" and self.layer == "last":
            dim_fn = (
                getattr(model, "get_embedding_dimension", None)
                or model.get_sentence_embedding_dimension
            )
            self.dim = int(dim_fn())
        else:
            self.dim = width * (2 if self.pooling == "cls+mean" else 1)

    def _tokenize(self, texts: list[str]) -> dict[str, Any]:
        fn = getattr(self.model, "preprocess", None) or self.model.tokenize
        feats = fn(texts)
        return {
            k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in feats.items()
        }

    def _forward(self, texts: list[str]) -> torch.Tensor:
        feats = self._tokenize(texts)
        if self.pooling == "default" and self.layer == "last":
            return self.model(feats)["sentence_embedding"]
        inputs = {
            k: feats[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in feats
        }
        mask = inputs["attention_mask"]
        out = self._auto(**inputs, output_hidden_states=True)
        hidden = list(out.hidden_states[1:])  # L x (B, T, D), embedding output left out
        hidden[-1] = out.last_hidden_state
        pooling = self._mode if self.pooling == "default" else self.pooling

        def pool(h: torch.Tensor) -> torch.Tensor:
            v = pool_tokens(h, pooling, mask=mask)
            if self.pooling == "default" and self._normalize:
                v = torch.nn.functional.normalize(v, dim=-1)
            return v

        if self.layer == "all":
            return torch.stack([pool(h) for h in hidden])
        index = -1 if self.layer == "last" else self.layer
        return pool(hidden[index])

    def _token_counts(self, texts: list[str]) -> list[int]:
        return tokenizer_counts(self.model.tokenizer, texts)

    def _forward_tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Last-layer token states (B, T, hidden) and the attention mask (B, T)."""
        feats = self._tokenize(texts)
        inputs = {
            k: feats[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in feats
        }
        out = self._auto(**inputs)
        return out.last_hidden_state, inputs["attention_mask"].bool()

    def weights_identity(self) -> str:
        return self._identity

    def config(self) -> dict[str, Any]:
        return {
            "pooling": self.pooling,
            "layer": self.layer,
            "model": self._model_id,
            "max_length": self.max_length,
            "st_pooling": self._mode,
            "normalize": self._normalize and self.pooling == "default",
        }


def create(model_id: str, **options: Any) -> STEncoder:
    return STEncoder(model_id, **options)
