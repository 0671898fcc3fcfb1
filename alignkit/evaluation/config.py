"""``EvaluateConfig``: what ``alignkit evaluate`` evaluates, each setting declared once.

The fields carry their help, flag and config-file key (:func:`alignkit.options.option`; the
shared ones from :mod:`alignkit.vocabulary`); ``alignkit evaluate`` builds its options from them
and docs/evaluation.md's option table is generated from them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from alignkit.errors import AlignkitError
from alignkit.options import option
from alignkit.vocabulary import shared


@dataclass(frozen=True)
class EvaluateConfig:
    """What to evaluate trained runs on, and how.

    Attributes:
        zeroshot: labelled probes for zero-shot classification.
        retrieval: captioned probes for image-text retrieval.
        judgements: a TSV of human judgements (image, caption, score); judgements_probe: the
            probe its images and captions come from.
        templates: zero-shot prompt templates (``imagenet80``, ``imagenet7``, ``single``, a file);
            None: each probe's own (CLIP_benchmark's templates file), else ``imagenet7``.
        class_names: a file of class names, one a line, in label order.
        n: a seeded, stable subsample of every evaluation probe (None or 0: all rows).
        allow_overlap: evaluate on rows the run was trained or validated on (the numbers are
            then marked as not held out).
        device, cache: where the encoders run and where features are cached.
    """

    zeroshot: tuple[str, ...] = option(
        (),
        "Labelled probe for zero-shot classification (repeatable).",
        metavar="PROBE",
        repeat=True,
    )
    retrieval: tuple[str, ...] = option(
        (),
        "Captioned probe for image<->text retrieval, e.g. flickr8k:test (repeatable).",
        metavar="PROBE",
        repeat=True,
    )
    judgements: str | None = option(
        None,
        "Human judgements: a TSV of image, caption, score, or Flickr8k's ExpertAnnotations.txt / "
        "CrowdFlowerAnnotations.txt (CLIPScore protocol): Kendall tau-b/c and Spearman against "
        "the model's cosine.",
        metavar="FILE",
        type=str,
    )
    judgements_probe: str = option(
        "flickr8k", "The probe the --judgements images and captions come from.", metavar="PROBE"
    )
    templates: str | None = option(
        None,
        "Prompt templates: imagenet80, imagenet7, single, or a file. Default: the probe's own "
        "(a CLIP_benchmark folder's zeroshot_classification_templates.txt), else imagenet7.",
        metavar="NAME",
        type=str,
    )
    class_names: str | None = shared("class_names", help_extra="Given, it overrides the probe's.")
    image_column: str | None = shared("image_column")
    caption_columns: tuple[str, ...] = shared("caption_columns")
    id_column: str | None = shared("id_column")
    label_column: str | None = shared("label_column")
    allow_duplicate_class_names: bool = option(
        False, "Accept two labels with one class name (their prompts are identical)."
    )
    n: int | None = shared("n", default=None, help_extra="Here: of every evaluation probe.")
    allow_overlap: bool = option(
        False,
        "Evaluate on rows the run was trained or validated on (same row id and captions, or same "
        "image); the numbers are marked as not held out in metrics.json and the table.",
    )
    seed: int = shared("seed")
    skip_bad: bool = shared("skip_bad")
    device: str = shared("device")
    cache: str | bool = shared("cache")

    def __post_init__(self) -> None:
        for name in ("zeroshot", "retrieval"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if self.n == 0:
            object.__setattr__(self, "n", None)
        if self.n is not None and self.n < 1:
            raise AlignkitError(f"n must be a positive row count (or 0 for all rows): got {self.n}")

    def replace(self, **changes: Any) -> EvaluateConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


__all__ = ["EvaluateConfig"]
