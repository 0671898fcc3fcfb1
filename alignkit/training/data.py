"""The data contract of projector training: paired features of images and their captions.

Shapes (``n_images`` image rows, ``n_texts`` caption rows, ``T`` tokens, ``d`` feature width)::

    TokenFeatures
        tokens  (n, T, d)  float16 / float32 (may be ``torch.from_numpy`` of a ``np.memmap``)
        mask    (n, T)     bool, True = a real token (padding is False)
        cls     (n, d)     or None: the image CLS token, kept apart from the patch tokens

    PairedFeatures
        image          (n_images, d_v) float16 / float32 tensor (may be a memory-mapped feature
                       cache entry), or TokenFeatures with n = n_images
        text           (n_texts, d_t)  likewise, or TokenFeatures with n = n_texts
        text_to_image  (n_texts,)      int64: the image row each caption describes
        image_ids      list[str]       n_images stable probe-row ids

Image rows are the unit of splitting and of batching: a training batch is a set of image rows,
and its captions are drawn from those images (one at random per image, or all of them;
``TrainConfig.captions``). Pooled and token tensors are indexed one batch at a time (a batch keeps
the stored dtype; training upcasts it on its device), so a memory-mapped cache larger than RAM
trains with memory bounded by the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from alignkit.errors import AlignkitError

__all__ = ["TokenFeatures", "PairedFeatures", "Batch", "make_batch", "to_device"]


@dataclass(frozen=True)
class TokenFeatures:
    """Token-level features of ``n`` items: ``tokens (n, T, d)``, ``mask (n, T)`` (True = valid),
    ``cls (n, d)`` or None.

    For images, ``tokens`` are the patch tokens (ViT) or spatial positions (CNN) and ``cls`` the
    CLS token where the encoder has one; for texts, ``tokens`` are the token states and ``mask``
    the attention mask (``cls`` is not used). Every row needs at least one valid token.
    Rows are read lazily: the tensors may be memory-mapped, and nothing here copies them whole.
    """

    tokens: Tensor
    mask: Tensor
    cls: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.tokens, Tensor) or self.tokens.ndim != 3:
            got = tuple(self.tokens.shape) if isinstance(self.tokens, Tensor) else type(self.tokens)
            raise AlignkitError(f"TokenFeatures.tokens must be a (n, T, d) tensor: got {got}")
        if not self.tokens.is_floating_point():
            raise AlignkitError(
                f"TokenFeatures.tokens must be float16/float32: got {self.tokens.dtype}"
            )
        n, t, d = self.tokens.shape
        if not isinstance(self.mask, Tensor) or tuple(self.mask.shape) != (n, t):
            got = tuple(self.mask.shape) if isinstance(self.mask, Tensor) else type(self.mask)
            raise AlignkitError(f"TokenFeatures.mask must have shape ({n}, {t}): got {got}")
        if self.mask.dtype != torch.bool:
            raise AlignkitError(f"TokenFeatures.mask must be a bool tensor: got {self.mask.dtype}")
        if self.cls is not None and (
            not isinstance(self.cls, Tensor) or tuple(self.cls.shape) != (n, d)
        ):
            got = tuple(self.cls.shape) if isinstance(self.cls, Tensor) else type(self.cls)
            raise AlignkitError(
                f"TokenFeatures.cls must have shape ({n}, {d}) or be None: got {got}"
            )
        empty = (~self.mask.any(dim=1)).nonzero()
        if len(empty):
            raise AlignkitError(
                f"every row of TokenFeatures.mask needs a valid token: {len(empty)} rows have "
                f"none (first: row {int(empty[0])})"
            )

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def dim(self) -> int:
        return self.tokens.shape[2]

    def take(self, rows: Tensor) -> TokenFeatures:
        """The rows ``rows`` (int64, any order) as new in-memory tensors: only those rows are read
        from a memory-mapped cache. Padding columns beyond the longest selected row are dropped."""
        mask = self.mask[rows]
        width = int(mask.sum(dim=1).max()) if len(rows) else 0
        # keep the first `width` positions when padding sits at the end (the usual layout)
        if width and bool(mask[:, width:].any()):
            width = mask.shape[1]
        tokens = self.tokens[rows][:, :width] if width else self.tokens[rows]
        mask = mask[:, :width] if width else mask
        cls = None if self.cls is None else self.cls[rows]
        return TokenFeatures(tokens, mask, cls)


Features = Tensor | TokenFeatures


def _rows(x: Features) -> int:
    return len(x) if isinstance(x, TokenFeatures) else x.shape[0]


def _dim(x: Features) -> int:
    return x.dim if isinstance(x, TokenFeatures) else x.shape[1]


@dataclass(frozen=True)
class PairedFeatures:
    """Features of ``n_images`` images and ``n_texts`` captions, each caption pointing at its image.

    ``image``: (n_images, d_v) tensor or :class:`TokenFeatures`; ``text``: (n_texts, d_t) tensor or
    :class:`TokenFeatures`; ``text_to_image``: (n_texts,) int64 in ``[0, n_images)``;
    ``image_ids``: one distinct id per image row. Every image needs at least one caption.
    Raises :class:`AlignkitError` (one line) when any of that does not hold.
    """

    image: Features
    text: Features
    text_to_image: Tensor
    image_ids: list[str]
    # (n_images + 1,) offsets into `caption_order`: the captions of image i are
    # caption_order[caption_start[i]:caption_start[i + 1]]
    caption_order: Tensor = field(init=False, repr=False)
    caption_start: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name, x, width in (("image", self.image, "d_v"), ("text", self.text, "d_t")):
            if isinstance(x, Tensor):
                if x.ndim != 2 or not x.is_floating_point():
                    raise AlignkitError(
                        f"PairedFeatures.{name} must be a float (n, {width}) tensor or "
                        f"TokenFeatures: got {x.dtype} tensor of shape {tuple(x.shape)}"
                    )
            elif not isinstance(x, TokenFeatures):
                raise AlignkitError(
                    f"PairedFeatures.{name} must be a tensor or TokenFeatures: "
                    f"got {type(x).__name__}"
                )
        n_images, n_texts = _rows(self.image), _rows(self.text)
        t2i = self.text_to_image
        if (
            not isinstance(t2i, Tensor)
            or t2i.dtype != torch.int64
            or tuple(t2i.shape) != (n_texts,)
        ):
            got = f"{t2i.dtype} {tuple(t2i.shape)}" if isinstance(t2i, Tensor) else type(t2i)
            raise AlignkitError(
                f"PairedFeatures.text_to_image must be an int64 tensor of shape ({n_texts},), one "
                f"image row per caption: got {got}"
            )
        if n_texts and (int(t2i.min()) < 0 or int(t2i.max()) >= n_images):
            raise AlignkitError(
                f"PairedFeatures.text_to_image must lie in [0, {n_images}): got values in "
                f"[{int(t2i.min())}, {int(t2i.max())}]"
            )
        if len(self.image_ids) != n_images:
            raise AlignkitError(
                f"PairedFeatures.image_ids must name every image row: got {len(self.image_ids)} "
                f"ids for {n_images} image rows"
            )
        if len(set(self.image_ids)) != n_images:
            raise AlignkitError("PairedFeatures.image_ids must be distinct: got repeated ids")
        counts = torch.bincount(t2i, minlength=n_images)
        if n_images and int(counts.min()) == 0:
            missing = int((counts == 0).nonzero()[0])
            raise AlignkitError(
                f"every image needs at least one caption: {int((counts == 0).sum())} images have "
                f"none (first: row {missing}, id {self.image_ids[missing]!r})"
            )
        object.__setattr__(self, "caption_order", torch.argsort(t2i, stable=True))
        start = torch.zeros(n_images + 1, dtype=torch.int64)
        start[1:] = torch.cumsum(counts, 0)
        object.__setattr__(self, "caption_start", start)

    @property
    def n_images(self) -> int:
        return _rows(self.image)

    @property
    def n_texts(self) -> int:
        return _rows(self.text)

    @property
    def image_dim(self) -> int:
        return _dim(self.image)

    @property
    def text_dim(self) -> int:
        return _dim(self.text)

    @property
    def token_level(self) -> tuple[bool, bool]:
        """(image is token-level, text is token-level)."""
        return isinstance(self.image, TokenFeatures), isinstance(self.text, TokenFeatures)

    def captions_per_image(self) -> Tensor:
        """(n_images,) int64: how many captions each image has."""
        return self.caption_start[1:] - self.caption_start[:-1]


@dataclass(frozen=True)
class Batch:
    """One global batch: ``image`` rows (B, ...) and ``text`` rows (M, ...) in the same order as
    ``text_to_image`` (M,), which indexes the batch's images (0..B-1); captions are grouped by
    image, so image slices and their captions' slices are contiguous (ranks take slices)."""

    image: Features
    text: Features
    text_to_image: Tensor
    image_rows: Tensor  # (B,) rows of PairedFeatures
    text_rows: Tensor  # (M,) rows of PairedFeatures

    def text_slice(self, image_start: int, image_stop: int) -> slice:
        """The caption positions belonging to batch images ``image_start:image_stop``."""
        lo = int(torch.searchsorted(self.text_to_image, image_start))
        hi = int(torch.searchsorted(self.text_to_image, image_stop))
        return slice(lo, hi)


def _take(x: Features, rows: Tensor) -> Features:
    """Rows ``rows`` (B,) of ``x``, in that order, as a new tensor in ``x``'s dtype. The rows are
    read in ascending order (forward through a memory-mapped store), then put back in the
    batch's order; nothing but these rows is read."""
    if isinstance(x, TokenFeatures):
        return x.take(rows)
    if len(rows) < 2 or bool((rows[1:] >= rows[:-1]).all()):
        return x[rows]
    order = torch.argsort(rows)  # (B,): the read order
    out = torch.empty((len(rows), *x.shape[1:]), dtype=x.dtype)
    out[order] = x[rows[order]]
    return out


def _choose_captions(
    data: PairedFeatures, image_rows: Tensor, captions: str, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """(text_rows (M,), text_to_image (M,) in 0..B-1) for the images ``image_rows`` (B,)."""
    start = data.caption_start[image_rows]
    count = data.caption_start[image_rows + 1] - start
    if captions == "one":
        # one caption of each image, uniformly at random
        pick = (
            torch.rand(len(image_rows), generator=generator, dtype=torch.float64) * count
        ).long()
        return data.caption_order[start + pick], torch.arange(len(image_rows))
    if captions == "all":
        local = torch.repeat_interleave(torch.arange(len(image_rows)), count)  # (M,)
        offset = torch.arange(len(local)) - torch.repeat_interleave(
            torch.cumsum(count, 0) - count, count
        )
        return data.caption_order[start[local] + offset], local
    raise AlignkitError(f"captions must be 'one' or 'all': got {captions!r}")


def make_batch(
    data: PairedFeatures, image_rows: Tensor, captions: str, generator: torch.Generator
) -> Batch:
    """Read the rows of one batch (only those rows, from memory-mapped caches too)."""
    text_rows, text_to_image = _choose_captions(data, image_rows, captions, generator)
    return Batch(
        image=_take(data.image, image_rows),
        text=_take(data.text, text_rows),
        text_to_image=text_to_image,
        image_rows=image_rows,
        text_rows=text_rows,
    )


def to_device(x: Features, device: torch.device, dtype: torch.dtype) -> Features:
    """Move features to ``device`` as ``dtype`` (masks stay bool)."""
    if isinstance(x, TokenFeatures):
        cls = None if x.cls is None else x.cls.to(device, dtype)
        # rebuilt without re-validation cost being an issue: the mask check is one reduction
        return TokenFeatures(x.tokens.to(device, dtype), x.mask.to(device), cls)
    return x.to(device, dtype)


def slice_features(x: Features, s: slice) -> Features:
    """Rows ``s`` of features (a view)."""
    if isinstance(x, TokenFeatures):
        return TokenFeatures(x.tokens[s], x.mask[s], None if x.cls is None else x.cls[s])
    return x[s]
