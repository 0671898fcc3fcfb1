"""Image <-> text retrieval: Recall@k, median and mean rank, in bounded memory.

Semantics (those of CLIP_benchmark's ``zeroshot_retrieval``, made explicit):

* **text -> image**: every caption is a query against all images; its one ground-truth image is
  the image it describes. With 5 captions per image there are 5x as many queries as images.
* **image -> text**: every image is a query against all captions; it is a hit at k when *any* of
  its captions is among the top k. Its rank is the rank of its best-ranked caption.

Ranks are exact and computed without sorting: a query's rank is 1 + the number of gallery items
that are *not* ground truth and score at least as high as its best ground-truth item. So ties are
broken **pessimistically**: a non-ground-truth item whose score equals the ground truth's counts
as ranked above it (a constant encoder gets rank = gallery size, never a lucky rank 1). Ties among
ground-truth items do not matter (any of them is a hit). Scores are dot products in the
embeddings' dtype; pass L2-normalised embeddings for cosine similarity.

Memory: queries are processed in blocks of ``query_block`` rows against gallery blocks of
``gallery_block`` rows, so at most a ``query_block x gallery_block`` score matrix exists at once
(64 MiB at the defaults in float32) plus O(n_queries) counters, whatever the gallery size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alignkit.errors import AlignkitError

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


def first_positive_ranks(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    positives: torch.Tensor,
    *,
    query_block: int = 1024,
    gallery_block: int = 16384,
) -> torch.Tensor:
    """1-based rank of each query's best-scoring ground-truth gallery item, ties pessimistic.

    Args:
        queries: ``(n_q, d)`` embeddings.
        gallery: ``(n_g, d)`` embeddings, same dtype and device.
        positives: ``(n_q, p)`` LongTensor of ground-truth gallery indices per query, padded
            with ``-1``; every query needs at least one.
        query_block, gallery_block: block sizes (memory ~ ``query_block * gallery_block``).

    Returns:
        ``(n_q,)`` LongTensor in ``1 .. n_g - (number of the query's positives) + 1``:
        ``1 + #{j not a positive : s_qj >= max_positive s_qg}``.
    """
    _check_embeddings(queries, gallery)
    if positives.ndim != 2 or positives.shape[0] != queries.shape[0]:
        raise AlignkitError(
            f"positives must be (n_queries, p) = ({queries.shape[0]}, p): "
            f"got {tuple(positives.shape)}"
        )
    if positives.numel() and int(positives.max()) >= gallery.shape[0]:
        raise AlignkitError(
            f"positives index a gallery of {gallery.shape[0]} items: got index "
            f"{int(positives.max())}"
        )
    if positives.shape[1] == 0 or bool((positives.max(dim=1).values < 0).any()):
        raise AlignkitError("every query needs at least one ground-truth gallery item")
    positives = positives.to(queries.device)
    ranks = torch.empty(queries.shape[0], dtype=torch.long)
    with torch.no_grad():
        for a in range(0, queries.shape[0], query_block):
            q = queries[a : a + query_block]  # (B, d)
            pos = positives[a : a + query_block]  # (B, p)
            ranks[a : a + q.shape[0]] = _block_ranks(q, gallery, pos, gallery_block).cpu()
    return ranks


def _block_ranks(
    q: torch.Tensor, gallery: torch.Tensor, pos: torch.Tensor, gallery_block: int
) -> torch.Tensor:
    # Every score a rank compares comes from one product, ``q @ block.T``: the ground truth's
    # score is read out of the same matrix as its competitors', so an exactly tied wrong item
    # compares equal (a separate einsum rounds differently and can lift the truth by an ulp).
    # When the gallery spans several blocks, pass 1 finds the best ground-truth score and pass 2
    # counts; both passes make the identical calls, so they see identical bits.
    valid = pos >= 0  # (B, p)
    rows = torch.arange(q.shape[0], device=q.device)[:, None].expand_as(pos)  # (B, p)
    starts = range(0, gallery.shape[0], gallery_block)
    best = torch.full((q.shape[0],), -math.inf, dtype=q.dtype, device=q.device)  # (B,)
    kept: list[torch.Tensor] = []
    for g0 in starts:
        scores = q @ gallery[g0 : g0 + gallery_block].T  # (B, C)
        inside = _inside(pos, valid, g0, scores.shape[1])
        if bool(inside.any()):
            local = torch.full_like(scores, -math.inf)
            local[rows[inside], (pos - g0)[inside]] = scores[rows[inside], (pos - g0)[inside]]
            best = torch.maximum(best, local.max(dim=1).values)
        if len(starts) == 1:
            kept.append(scores)
    above = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    for i, g0 in enumerate(starts):
        scores = kept[i] if kept else q @ gallery[g0 : g0 + gallery_block].T  # (B, C)
        inside = _inside(pos, valid, g0, scores.shape[1])
        scores[rows[inside], (pos - g0)[inside]] = -math.inf  # the truth never counts above itself
        above += (scores >= best[:, None]).sum(dim=1)
    return above + 1


def _inside(pos: torch.Tensor, valid: torch.Tensor, g0: int, width: int) -> torch.Tensor:
    """(B, p) mask of the ground-truth indices that fall in the gallery block starting at g0."""
    return valid & (pos >= g0) & (pos < g0 + width)


@dataclass(frozen=True)
class RetrievalResult:
    """Ranks of both directions. ``recall(k)`` and the summaries derive from them."""

    image_to_text: torch.Tensor  # (n_images,) ranks of each image's best caption
    text_to_image: torch.Tensor  # (n_texts,) ranks of each caption's image
    n_images: int
    n_texts: int
    captions_per_image: torch.Tensor  # (n_images,)

    def metrics(self, ks: Sequence[int] = DEFAULT_KS) -> dict[str, dict[str, float]]:
        """``{name: {"value", "n", "chance"}}`` for ``{image_to_text,text_to_image}_R@k``
        (fractions in [0, 1]), ``_median_rank`` and ``_mean_rank`` (1-based). ``chance`` is the
        expected value for scores that ignore the content (uniformly random rankings)."""
        out: dict[str, dict[str, float]] = {}
        for name, ranks, gallery, n_pos in (
            ("image_to_text", self.image_to_text, self.n_texts, self.captions_per_image),
            ("text_to_image", self.text_to_image, self.n_images, torch.ones(self.n_texts)),
        ):
            n = int(ranks.numel())
            for k in ks:
                out[f"{name}_R@{k}"] = {
                    "value": float((ranks <= k).double().mean()),
                    "n": n,
                    "chance": _chance_recall(k, gallery, n_pos),
                }
            out[f"{name}_median_rank"] = {
                "value": float(ranks.double().median()),
                "n": n,
                "chance": _chance_median(gallery, n_pos),
            }
            out[f"{name}_mean_rank"] = {
                "value": float(ranks.double().mean()),
                "n": n,
                "chance": float(((gallery + 1) / (n_pos.double() + 1)).mean()),
            }
        return out


def retrieval(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    text_image: Sequence[int] | torch.Tensor,
    *,
    query_block: int = 1024,
    gallery_block: int = 16384,
) -> RetrievalResult:
    """Image -> text and text -> image ranks of a captioned gallery (see the module docstring).

    Args:
        image_embeddings: ``(n_images, d)``; L2-normalise them for cosine similarity.
        text_embeddings: ``(n_texts, d)``, one row per caption.
        text_image: ``(n_texts,)`` the image index (``0 .. n_images - 1``) each caption describes.
            Every image needs at least one caption.
        query_block, gallery_block: block sizes of the chunked scoring.

    Returns:
        a :class:`RetrievalResult`; ``.metrics()`` gives Recall@1/5/10, median and mean rank.

    Raises:
        AlignkitError: mismatched shapes or widths, non-finite embeddings, a caption pointing at
            no image, or an image with no caption.
    """
    _check_embeddings(image_embeddings, text_embeddings)
    text_image = torch.as_tensor(text_image, dtype=torch.long).reshape(-1)
    n_images, n_texts = image_embeddings.shape[0], text_embeddings.shape[0]
    if text_image.numel() != n_texts:
        raise AlignkitError(
            f"text_image must give one image index per caption: got {text_image.numel()} "
            f"indices for {n_texts} captions"
        )
    if n_texts and (int(text_image.min()) < 0 or int(text_image.max()) >= n_images):
        raise AlignkitError(
            f"text_image must index the {n_images} images (0..{n_images - 1}): got values in "
            f"{int(text_image.min())}..{int(text_image.max())}"
        )
    counts = torch.bincount(text_image, minlength=n_images)
    if n_images and int(counts.min()) == 0:
        missing = int((counts == 0).sum())
        raise AlignkitError(
            f"every image needs at least one caption: {missing} of {n_images} images have none "
            f"(first: index {int((counts == 0).nonzero()[0])})"
        )
    # captions of each image, padded with -1: (n_images, max captions)
    order = torch.argsort(text_image, stable=True)
    width = int(counts.max()) if n_images else 0
    slot = torch.arange(n_texts) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    image_pos = torch.full((n_images, width), -1, dtype=torch.long)
    image_pos[text_image[order], slot] = order
    i2t = first_positive_ranks(
        image_embeddings,
        text_embeddings,
        image_pos,
        query_block=query_block,
        gallery_block=gallery_block,
    )
    t2i = first_positive_ranks(
        text_embeddings,
        image_embeddings,
        text_image[:, None],
        query_block=query_block,
        gallery_block=gallery_block,
    )
    return RetrievalResult(i2t, t2i, n_images, n_texts, counts)


def _check_embeddings(a: torch.Tensor, b: torch.Tensor) -> None:
    for name, x in (("queries/images", a), ("gallery/texts", b)):
        if not isinstance(x, torch.Tensor) or x.ndim != 2:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise AlignkitError(f"{name} embeddings must be a 2-D tensor (n, d): got {shape}")
        if not torch.isfinite(x).all():
            raise AlignkitError(f"{name} embeddings hold NaN or Inf values")
    if a.shape[1] != b.shape[1]:
        raise AlignkitError(
            f"image and text embeddings must share one width (the aligned space): got {a.shape[1]} "
            f"and {b.shape[1]}"
        )
    if a.dtype != b.dtype or a.device != b.device:
        raise AlignkitError(
            f"embeddings must share dtype and device: got {a.dtype} on {a.device} and "
            f"{b.dtype} on {b.device}"
        )


def _p_none_in_top(k: int, gallery: int, n_pos: int) -> float:
    """P(none of n_pos positives among the top k of a uniformly random order of `gallery`)."""
    if k >= gallery - n_pos + 1:
        return 0.0
    # C(gallery - n_pos, k) / C(gallery, k)
    return math.exp(
        math.lgamma(gallery - n_pos + 1)
        - math.lgamma(gallery - n_pos - k + 1)
        - math.lgamma(gallery + 1)
        + math.lgamma(gallery - k + 1)
    )


def _chance_recall(k: int, gallery: int, n_pos: torch.Tensor) -> float:
    values, counts = torch.unique(n_pos.long(), return_counts=True)
    total = sum(
        (1.0 - _p_none_in_top(k, gallery, int(v))) * int(c)
        for v, c in zip(values, counts, strict=True)
    )
    return total / max(1, int(n_pos.numel()))


def _chance_median(gallery: int, n_pos: torch.Tensor) -> float:
    """Median of the first-positive rank under random orders (the most common positive count)."""
    p = int(torch.mode(n_pos.long()).values) if n_pos.numel() else 1
    lo, hi = 1, gallery  # smallest r with P(rank <= r) >= 1/2; P grows with r
    while lo < hi:
        mid = (lo + hi) // 2
        if 1.0 - _p_none_in_top(mid, gallery, p) >= 0.5:
            hi = mid
        else:
            lo = mid + 1
    return float(lo)
