"""``timm:<model name>``: any timm image model; its own data config decides the preprocessing.

Token models (ViT family: anything with ``num_prefix_tokens``) support every image pooling and
per-block layers (timm ``forward_intermediates`` with the final norm applied to each block's
tokens, as DINOv2's ``get_intermediate_layers(norm=True)`` does). CNNs support ``default``/``mean``
pooling and per-stage layers (global average of each stage's feature map).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from alignkit._device import resolve_device
from alignkit.encoders._util import (
    ToRGB,
    check_layer_index,
    files_identity,
    freeze,
    parse_layer,
    pool_tokens,
    seeded,
    stack_padded,
)
from alignkit.encoders.base import Encoder, check_pooling
from alignkit.errors import AlignkitError

TOKEN_POOLINGS = ("default", "cls", "mean", "mean_all", "cls+mean")
CNN_POOLINGS = ("default", "mean")


class TimmEncoder(Encoder):
    """A timm model as a frozen image encoder.

    Args:
        model_id: a timm model name (``timm.list_models()``), e.g. ``vit_small_patch14_dinov2``.
        pretrained: load timm's pretrained weights (from the hub: needs a network, or a warm cache).
        checkpoint_path: a local checkpoint to load instead (state dict of the same architecture).
        random_init: random initialisation with ``seed`` (the ``random-init:`` control).
        model_kwargs: passed to ``timm.create_model`` (e.g. ``img_size``).
    """

    modality = "image"

    def __init__(
        self,
        model_id: str,
        *,
        spec: str,
        device: str | torch.device = "auto",
        pooling: str = "default",
        layer: str | int = "last",
        pretrained: bool = True,
        checkpoint_path: str | Path | None = None,
        random_init: bool = False,
        seed: int = 0,
        model_kwargs: dict[str, Any] | None = None,
        precision: str = "auto",
    ) -> None:
        import timm
        import timm.data

        self.name = spec
        self.device = resolve_device(device)
        self.precision = precision
        self._model_id = model_id
        if not timm.is_model(model_id):
            close = timm.list_models(f"*{model_id.split('.')[0][:12]}*")[:15]
            raise AlignkitError(
                f"unknown timm model {model_id!r}; expected a name from timm.list_models()"
                + (f", e.g. {', '.join(close)}" if close else "")
            )
        use_hub = pretrained and checkpoint_path is None and not random_init
        kwargs = dict(model_kwargs or {})
        if checkpoint_path is not None and not Path(checkpoint_path).is_file():
            raise AlignkitError(f"checkpoint_path must be a file: got {checkpoint_path!r}")
        try:
            with seeded(seed):
                model = timm.create_model(
                    model_id,
                    pretrained=use_hub,
                    checkpoint_path=str(checkpoint_path)
                    if checkpoint_path and not random_init
                    else "",
                    **kwargs,
                )
        except (OSError, RuntimeError, ValueError) as exc:
            if use_hub:
                raise AlignkitError(
                    f"could not fetch the pretrained weights of timm:{model_id} "
                    f"({type(exc).__name__}); "
                    "with no network pass checkpoint_path=<local file>, or pretrained=False"
                ) from exc
            raise AlignkitError(f"could not build timm:{model_id}: {exc}") from exc
        self.model = freeze(model).to(self.device)
        if random_init or not (use_hub or checkpoint_path):
            self._identity = f"random-init:seed={seed}:timm=={timm.__version__}"
        elif checkpoint_path is not None:
            self._identity = files_identity([checkpoint_path])
        else:
            cfg = model.pretrained_cfg or {}
            source = cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file") or "?"
            self._identity = f"timm=={timm.__version__}:{model_id}:{cfg.get('tag', '')}:{source}"

        self._data_config = timm.data.resolve_data_config({}, model=model)
        from torchvision import transforms as T

        self._preprocessor = T.Compose([ToRGB(), timm.data.create_transform(**self._data_config)])

        self._tokens = hasattr(model, "num_prefix_tokens") and hasattr(model, "blocks")
        self.layer = parse_layer(layer)
        if self._tokens:
            self.n_prefix = int(model.num_prefix_tokens)
            allowed = TOKEN_POOLINGS if self.n_prefix else ("default", "mean", "mean_all")
            self.pooling = check_pooling(pooling, allowed, spec)
            self.n_layers = len(model.blocks)
            width = int(model.embed_dim)
            self._layer_dims = [width] * self.n_layers
        else:
            self.pooling = check_pooling(pooling, CNN_POOLINGS, spec)
            if not hasattr(model, "forward_intermediates") and self.layer != "last":
                raise AlignkitError(
                    f"layer {layer!r} is not available for {spec}: timm gives it no per-stage "
                    "outputs; expected layer='last'"
                )
            self._layer_dims = [int(f["num_chs"]) for f in model.feature_info]
            self.n_layers = len(self._layer_dims)
            width = self._layer_dims[-1]
        if self.layer == "last":
            head = int(getattr(model, "head_hidden_size", model.num_features))
            self.dim = (
                head
                if self.pooling == "default"
                else width * (2 if self.pooling == "cls+mean" else 1)
            )
        elif self.layer == "all":
            self.dim = max(self._layer_dims) * (2 if self.pooling == "cls+mean" else 1)
        else:
            index = check_layer_index(self.layer, self.n_layers, spec)
            self.dim = self._layer_dims[index] * (2 if self.pooling == "cls+mean" else 1)
            if self.pooling == "default":
                self._intermediate_pooling()  # fails early when impossible

    # the model's own pooling, for intermediate blocks where its head does not apply
    def _intermediate_pooling(self) -> str:
        if not self._tokens:
            return "mean"
        pool = getattr(self.model, "global_pool", "token")
        if pool == "token" and self.n_prefix:
            return "cls"
        if pool == "avg":
            return "mean"
        raise AlignkitError(
            f"pooling 'default' of {self.name} ({pool!r}) has no per-layer form; "
            "expected one of: cls, mean, mean_all, cls+mean for intermediate layers"
        )

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device)
        model = self.model
        if self.layer == "last":
            feats = model.forward_features(x)  # tokens (B, T, D) or a map (B, C, H, W)
            if self.pooling == "default":
                return model.forward_head(feats, pre_logits=True)
            if self._tokens:
                return pool_tokens(feats, self.pooling, n_prefix=self.n_prefix)
            return feats.mean(dim=(2, 3))
        indices = (
            None
            if self.layer == "all"
            else [check_layer_index(self.layer, self.n_layers, self.name)]
        )
        pooling = self._intermediate_pooling() if self.pooling == "default" else self.pooling
        if self._tokens:
            outs = model.forward_intermediates(
                x,
                indices=indices,
                return_prefix_tokens=True,
                norm=True,
                output_fmt="NLC",
                intermediates_only=True,
            )  # [(patches (B, N, D), prefix (B, P, D))] per block
            pooled = [
                pool_tokens(torch.cat([prefix, patches], dim=1), pooling, n_prefix=self.n_prefix)
                if prefix is not None
                else pool_tokens(patches, pooling, n_prefix=0)
                for patches, prefix in (o if isinstance(o, tuple) else (o, None) for o in outs)
            ]
        else:
            outs = model.forward_intermediates(x, indices=indices, intermediates_only=True)
            pooled = [o.mean(dim=(2, 3)) for o in outs]  # (B, C_stage) per stage
        return pooled[0] if self.layer != "all" else stack_padded(pooled)

    def _forward_tokens(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward_features``: ViT prefix (CLS/register) + patch tokens (B, T, D), or a CNN's
        last map flattened (B, C, H, W) -> (B, H*W, C); mask all True."""
        feats = self.model.forward_features(batch.to(self.device))
        if feats.ndim == 4:
            feats = feats.flatten(2).transpose(1, 2)
        return feats, torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)

    def weights_identity(self) -> str:
        return self._identity

    def config(self) -> dict[str, Any]:
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self._data_config.items()}
        return {
            "pooling": self.pooling,
            "layer": self.layer,
            "model": self._model_id,
            "data_config": cfg,
        }


def create(model_id: str, **options: Any) -> TimmEncoder:
    return TimmEncoder(model_id, **options)
