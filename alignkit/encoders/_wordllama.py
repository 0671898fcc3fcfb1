"""``wordllama:<config>``: WordLlama static token embeddings (distilled from an LLM's token
embedding table), mean-pooled over a caption's tokens; no network, no transformer, microseconds a
caption. The weights ship inside the ``wordllama`` package (``l2_supercat``, 256-d)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from alignkit._device import resolve_device
from alignkit.encoders import _offline
from alignkit.encoders._util import no_layers, require
from alignkit.encoders.base import Encoder, check_pooling
from alignkit.errors import AlignkitError


class WordLlamaEncoder(Encoder):
    """WordLlama as a frozen text encoder: ``(n, dim)`` mean of static token vectors.

    Args:
        model_id: a WordLlama config shipped with the package (``l2_supercat``).
        dim: Matryoshka truncation width (64, 128, 256; default 256).
        normalize: L2-normalise each embedding (default False, as ``WordLlama.embed``).

    No caption is cut: WordLlama's inference tokenizer runs with ``no_truncation()`` and
    averages every token (``token_limit`` is None).
    """

    modality = "text"

    def __init__(
        self,
        model_id: str,
        *,
        spec: str,
        device: Any = "auto",
        pooling: str = "default",
        layer: str | int = "last",
        dim: int = 256,
        normalize: bool = False,
        precision: str = "auto",
    ) -> None:
        self.name = spec
        self.device = resolve_device(device)  # WordLlama runs on the CPU (numpy) whatever is asked
        self.precision = precision
        self.pooling = check_pooling(pooling, ("default",), spec)
        no_layers(layer, spec)
        registry_spec = f"wordllama:{model_id}"
        if registry_spec not in _offline.OFFLINE_MODELS:
            known = [
                s.split(":", 1)[1] for s in _offline.OFFLINE_MODELS if s.startswith("wordllama:")
            ]
            raise AlignkitError(
                f"unknown WordLlama model {model_id!r}; expected one of: {', '.join(known)}"
            )
        entry = _offline.OFFLINE_MODELS[registry_spec]
        with _root_logging_kept():  # finding the package's folder imports it too
            package_dir = Path(_offline.resolve(registry_spec))
            wordllama = require("wordllama", entry.pip)
        # the package's default loader looks in a misnamed folder, then tries the network
        self.model = wordllama.WordLlama.load(
            model_id,
            cache_dir=package_dir,
            dim=256,
            trunc_dim=dim if dim != 256 else None,
            disable_download=True,
        )
        self.dim = int(dim)
        self.normalize = bool(normalize)
        self._identity = entry.identity()

    def _forward(self, texts: list[str]) -> torch.Tensor:
        out = self.model.embed(list(texts), norm=self.normalize, return_np=True)
        return torch.as_tensor(out).reshape(len(texts), self.dim)

    def weights_identity(self) -> str:
        return self._identity

    def config(self) -> dict[str, Any]:
        return {
            "pooling": self.pooling,
            "layer": "last",
            "dim": self.dim,
            "normalize": self.normalize,
        }


@contextlib.contextmanager
def _root_logging_kept() -> Iterator[None]:
    """Contain ``import wordllama``: its ``__init__`` calls ``logging.basicConfig(level=INFO)``,
    which would turn on INFO logging for the whole process. The root logger's handlers and level
    are put back as they were."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


def create(model_id: str, **options: Any) -> WordLlamaEncoder:
    return WordLlamaEncoder(model_id, **options)
