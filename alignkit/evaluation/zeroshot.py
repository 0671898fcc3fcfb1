"""Zero-shot classification with prompt ensembles (Radford et al. 2021, CLIP, section 3.1.4).

Each class gets one text embedding per prompt template; the class's classifier weight is the
ensemble L2-normalise -> mean over templates -> L2-normalise again (CLIP's notebook and open_clip's
``build_zero_shot_classifier`` do the same). An image is assigned the class whose weight has the
highest dot product with its (L2-normalised) embedding.

Metrics: top-1 and top-5 accuracy, and mean per-class recall (top-1 recall averaged over the
classes that have images: the balanced accuracy). Ties are broken pessimistically, as in
:mod:`alignkit.evaluation.retrieval`: a wrong class scoring exactly as high as the true class
counts as ranked above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alignkit.errors import AlignkitError
from alignkit.evaluation.retrieval import first_positive_ranks


def ensemble_classifier(prompt_embeddings: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Class weights from prompt embeddings.

    Args:
        prompt_embeddings: ``(n_classes * n_templates, d)``, class-major: row
            ``c * n_templates + t`` is template t of class c (the order of
            :func:`~alignkit.evaluation.prompts.prompt_probe`).
        n_classes: number of classes.

    Returns:
        ``(n_classes, d)`` unit-norm class weights: per class, normalise each prompt embedding,
        average, normalise again.
    """
    if prompt_embeddings.ndim != 2:
        raise AlignkitError(
            f"prompt embeddings must be (n_classes * n_templates, d): got shape "
            f"{tuple(prompt_embeddings.shape)}"
        )
    n, d = prompt_embeddings.shape
    if n_classes < 1 or n % n_classes:
        raise AlignkitError(
            f"prompt embeddings must hold n_templates rows per class: got {n} rows for "
            f"{n_classes} classes"
        )
    per_class = F.normalize(prompt_embeddings, dim=-1).reshape(n_classes, n // n_classes, d)
    return F.normalize(per_class.mean(dim=1), dim=-1)  # (C, d)


@dataclass(frozen=True)
class ZeroShotResult:
    """The rank of every image's true class (1 = predicted correctly)."""

    ranks: torch.Tensor  # (n_images,) 1-based, pessimistic ties
    labels: torch.Tensor  # (n_images,)
    n_classes: int

    def metrics(self, ks: Sequence[int] = (1, 5)) -> dict[str, dict[str, float]]:
        """``{name: {"value", "n", "chance"}}``: ``top{k}`` and ``mean_per_class_recall``,
        fractions in [0, 1]; chance = k / n_classes and 1 / n_classes."""
        n = int(self.ranks.numel())
        out = {
            f"top{k}": {
                "value": float((self.ranks <= k).double().mean()),
                "n": n,
                "chance": min(1.0, k / self.n_classes),
            }
            for k in ks
        }
        hit = (self.ranks == 1).double()
        present = torch.unique(self.labels)
        per_class = torch.stack([hit[self.labels == c].mean() for c in present])
        out["mean_per_class_recall"] = {
            "value": float(per_class.mean()),
            "n": n,
            "chance": 1.0 / self.n_classes,
        }
        return out


def zeroshot(
    image_embeddings: torch.Tensor,
    class_weights: torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    *,
    block: int = 4096,
) -> ZeroShotResult:
    """Rank of the true class of each image among all classes.

    Args:
        image_embeddings: ``(n, d)`` image embeddings in the aligned space (normalised inside).
        class_weights: ``(n_classes, d)`` from :func:`ensemble_classifier`.
        labels: ``(n,)`` true class indices in ``0 .. n_classes - 1``.
        block: images scored at once (memory ~ ``block * n_classes``).

    Raises:
        AlignkitError: shapes that disagree, a label outside the classes.
    """
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if image_embeddings.ndim != 2 or labels.numel() != image_embeddings.shape[0]:
        raise AlignkitError(
            f"need one label per image: got {labels.numel()} labels for image embeddings of shape "
            f"{tuple(image_embeddings.shape)}"
        )
    n_classes = class_weights.shape[0]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise AlignkitError(
            f"labels must index the {n_classes} class names (0..{n_classes - 1}): got values in "
            f"{int(labels.min())}..{int(labels.max())}; give a class-name list that matches the "
            "labels"
        )
    images = F.normalize(image_embeddings, dim=-1).to(class_weights.dtype)
    ranks = first_positive_ranks(
        images, class_weights, labels[:, None], query_block=block, gallery_block=n_classes
    )
    return ZeroShotResult(ranks, labels, n_classes)
