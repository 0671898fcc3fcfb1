"""Evaluate an aligned encoder pair: zero-shot classification, retrieval, human judgements.

The frozen encoders' raw features come from :func:`alignkit.extract_features` and so from the
feature cache (images, captions and prompts alike); only the small projector heads run here.
An :class:`AlignedPair` holds the two encoder specs and the two heads that map raw features to
the shared space.

Results are a flat dict ``{key: {"value", "n", "chance"}}`` with keys such as
``zeroshot/imagenet-samples/top1`` and ``retrieval/flickr8k:test/image_to_text_R@5``; recalls and
accuracies are fractions in [0, 1], ranks are 1-based.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from alignkit.errors import AlignkitError
from alignkit.evaluation.judgements import Judgements, correlations, read_judgements
from alignkit.evaluation.prompts import (
    caption_probe,
    prompt_probe,
    text_probe,
    zeroshot_templates,
)
from alignkit.evaluation.retrieval import retrieval
from alignkit.evaluation.zeroshot import ensemble_classifier, zeroshot
from alignkit.probes.labels import check_class_names

log = logging.getLogger(__name__)

Head = Callable[[torch.Tensor], torch.Tensor]
Metrics = dict[str, dict[str, Any]]


@dataclass
class AlignedPair:
    """Two frozen encoders and the heads that map their raw features into one shared space.

    Attributes:
        vision, text: encoder specs for :func:`alignkit.create_encoder`, or an already built
            :class:`~alignkit.encoders.Encoder`.
        image_head, text_head: ``(n, d_encoder) -> (n, d_shared)``; the output is L2-normalised
            here, so a head need not normalise.
        name: a label for tables (default ``"<vision> x <text>"``).
        encoder_options: ``create_encoder`` keyword options per modality (``{"image": {...},
            "text": {...}}``), e.g. pooling.
        weights: the encoders' ``weights_identity()`` at training time, per modality; a built
            encoder with other weights is refused (its features would be nonsense to the heads).
        dims: the heads' input widths per modality (when known); an encoder of another width is
            refused before any extraction.
        run_dir: the run folder the heads come from: an encoder fitted on the texts it is given
            (``needs_fit``, ``tfidf:``) built from a spec loads the training fit kept there
            (:func:`alignkit.training.folder.load_fit`). Without it such an encoder must be
            given built and fitted; a per-probe fit is refused.
    """

    vision: Any
    text: Any
    image_head: Head
    text_head: Head
    name: str = ""
    encoder_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    weights: Mapping[str, str] = field(default_factory=dict)
    dims: Mapping[str, int] = field(default_factory=dict)
    run_dir: str | Path | None = None

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"{_spec(self.vision)} x {_spec(self.text)}"


def _check_fitted(encoder: Any, pair: str) -> Any:
    """Refuse an encoder fitted on the texts it is given that is not fitted yet: extraction would
    fit it on each evaluation probe, not on the texts the heads were trained on."""
    if getattr(encoder, "needs_fit", False) and not getattr(encoder, "fitted", False):
        raise AlignkitError(
            f"{encoder.name} in {pair} is fitted on the texts it is given and has no fit here: "
            "give AlignedPair the run folder (run_dir=, as load_pair does) or the encoder fitted "
            "on the training captions, not a per-probe fit"
        )
    return encoder


def _spec(encoder: Any) -> str:
    return encoder if isinstance(encoder, str) else str(getattr(encoder, "name", encoder))


class _Features:
    """Builds each encoder once and takes every feature through the cache."""

    def __init__(
        self, pair: AlignedPair, cache: Any, device: str, progress: bool, skip_bad: bool = False
    ) -> None:
        self.pair, self.cache, self.device, self.progress = pair, cache, device, progress
        self.skip_bad = skip_bad
        self._built: dict[str, Any] = {}

    def encoder(self, modality: str) -> Any:
        spec = self.pair.vision if modality == "image" else self.pair.text
        if not isinstance(spec, str):
            return _check_fitted(spec, self.pair.name)
        if modality not in self._built:
            from alignkit.encoders import create_encoder

            options = dict(self.pair.encoder_options.get(modality, {}))
            enc = create_encoder(spec, device=self.device, **options)
            want = self.pair.weights.get(modality)
            if getattr(enc, "needs_fit", False) and self.pair.run_dir is not None:
                from alignkit.training.folder import load_fit

                load_fit(self.pair.run_dir, enc, want or "")
            _check_fitted(enc, self.pair.name)
            if want and enc.weights_identity() != want:
                raise AlignkitError(
                    f"{spec}: its weights ({enc.weights_identity()}) are not the ones the "
                    f"projector was trained on ({want}); install those weights or retrain"
                )
            width = self.pair.dims.get(modality)
            if width is not None and enc.dim != width:
                raise AlignkitError(
                    f"{spec} gives {enc.dim}-wide features here, but the {self.pair.name} "
                    f"projector takes {width}: config.json names another encoder (or other "
                    "options) than the run was trained on; retrain the run"
                )
            self._built[modality] = enc
        return self._built[modality]

    def embed(self, modality: str, probe: Any) -> torch.Tensor:
        from alignkit.features import extract_features

        fs = extract_features(
            self.encoder(modality), probe, cache=self.cache, progress=self.progress
        )
        return self._head(modality, fs.features)

    def images(self, probe: Any) -> tuple[torch.Tensor, Any, list[dict[str, str]]]:
        """Embedded images of ``probe`` ``(n_kept, d_shared)``, the probe of the rows kept, and
        the rows skipped (``skip_bad``; else it raises): those the probe dropped at load and
        those whose image extraction could not read."""
        from alignkit.features import extract_features
        from alignkit.features.skipped import without_skipped

        fs = extract_features(
            self.encoder("image"), probe, cache=self.cache, progress=self.progress,
            skip_bad=self.skip_bad,
        )  # fmt: skip
        kept, feats = without_skipped(probe, {"image": fs})
        skipped = list(kept.dropped)  # at load (a small probe's images are checked there) and later
        return self._head("image", feats["image"].features), kept, skipped

    def _head(self, modality: str, features: torch.Tensor) -> torch.Tensor:
        head = self.pair.image_head if modality == "image" else self.pair.text_head
        with torch.no_grad():
            out = head(features)
        return F.normalize(out.float(), dim=-1)  # (n, d_shared)


def _load(spec: str | Any, **kwargs: Any) -> Any:
    from alignkit.probes import ProbeSet, load_probe

    return spec if isinstance(spec, ProbeSet) else load_probe(spec, progress=False, **kwargs)


def check_zeroshot_probe(
    probe: Any, class_names: Sequence[str] | None = None, allow_duplicates: bool = False
) -> list[str]:
    """The class names of a labelled probe, or a one-line error (cheap: no model work); two
    labels with one name are an error unless ``allow_duplicates``."""
    names = list(class_names) if class_names is not None else list(probe.class_names or [])
    where = "class_names" if class_names is not None else f"probe {probe.name}'s class names"
    check_class_names(names, where, allow_duplicates=allow_duplicates)
    labels = probe.labels
    if not labels or any(label is None for label in labels):
        missing = sum(label is None for label in labels)
        raise AlignkitError(
            f"zero-shot classification needs a label on every row: probe {probe.name} has "
            f"{missing} of {len(labels)} rows without one; choose a labelled probe "
            "(e.g. imagenet-samples)"
        )
    if not names:
        raise AlignkitError(
            f"probe {probe.name} has labels but no class names; pass class_names "
            "(one name per label)"
        )
    top = max(labels)
    if top >= len(names):
        raise AlignkitError(
            f"probe {probe.name}: labels go up to {top}, so at least {top + 1} class names are "
            f"needed: got {len(names)}; pass a class-name list that matches the labels"
        )
    return names


def check_retrieval_probe(probe: Any) -> None:
    """A retrieval probe needs unique row ids and one or more captions per row."""
    ids = [row.id for row in probe.rows]
    if len(set(ids)) != len(ids):  # ProbeSet refuses this; a hand-made row list may not
        seen: set[str] = set()
        dups = sorted({i for i in ids if i in seen or seen.add(i)})
        raise AlignkitError(
            f"retrieval probe {probe.name} has duplicate row ids ({len(dups)}: "
            f"{', '.join(dups[:5])}); each image must be one row holding all its captions"
        )
    empty = [row.id for row in probe.rows if not row.captions]
    if empty:
        raise AlignkitError(
            f"retrieval probe {probe.name}: {len(empty)} rows have no caption "
            f"(first: {empty[0]!r}); every image needs one or more captions"
        )


def evaluate_pair(
    pair: AlignedPair,
    *,
    zeroshot_probes: Sequence[Any] = (),
    retrieval_probes: Sequence[Any] = (),
    templates: str | Path | Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    cache: Any = True,
    device: str = "cpu",
    progress: bool = False,
    allow_duplicate_class_names: bool = False,
    skip_bad: bool = False,
) -> Metrics:
    """Zero-shot classification and image<->text retrieval of one aligned pair.

    Args:
        pair: the encoders and heads (:class:`AlignedPair`).
        zeroshot_probes: labelled probes (specs such as ``"imagenet-samples"`` or ProbeSets).
        retrieval_probes: captioned probes (``"flickr8k:test"``).
        templates: prompt templates: ``imagenet80``, ``imagenet7``, ``single``, a file, or a
            list; None (the default): each probe's own (a CLIP_benchmark folder's
            ``zeroshot_classification_templates.txt``), else ``imagenet7``
            (:func:`~alignkit.evaluation.prompts.zeroshot_templates`).
        class_names: overrides the probes' class names (one per label).
        allow_duplicate_class_names: accept two labels with one name (identical prompts).
        cache: feature cache (see :func:`alignkit.extract_features`).
        device: where the encoders run on a cache miss.
        progress: extraction progress bars.
        skip_bad: leave out the rows whose image extraction cannot decode (their metrics then
            carry ``skipped_rows``: the count and the first few) instead of failing.

    Returns:
        flat metrics ``{"zeroshot/<probe>/top1": {"value", "n", "chance"}, ...}``; zero-shot
        entries also carry ``templates`` (where the templates came from: a set name, a file,
        ``"given"`` or ``"probe"``) and ``n_templates``.

    Raises:
        AlignkitError: a probe without labels (zero-shot), class names that do not cover the
            labels, duplicate retrieval ids: all checked before any model work.
    """
    zs = [_load(p) for p in zeroshot_probes]
    rt = [_load(p) for p in retrieval_probes]
    names = [check_zeroshot_probe(p, class_names, allow_duplicate_class_names) for p in zs]
    prompts_of = [zeroshot_templates(p, templates) for p in zs]  # checked before model work
    for p in rt:
        check_retrieval_probe(p)
    feats = _Features(pair, cache, device, progress, skip_bad)
    out: Metrics = {}
    for probe, cls, (used, source) in zip(zs, names, prompts_of, strict=True):
        log.info("zero-shot on %s: %d templates (%s)", probe.name, len(used), source)
        images, kept, skipped = feats.images(probe)
        prompts = feats.embed("text", prompt_probe(cls, used))
        weights = ensemble_classifier(prompts, len(cls))
        result = zeroshot(images, weights, [row.label for row in kept.rows])
        extra = {"templates": source, "n_templates": len(used), **_skipped(skipped)}
        for k, v in result.metrics().items():
            out[f"zeroshot/{probe.name}/{k}"] = {**v, **extra}
    for probe in rt:
        images, kept, skipped = feats.images(probe)
        captions, index = caption_probe(kept)
        texts = feats.embed("text", captions)
        for k, v in retrieval(images, texts, index).metrics().items():
            out[f"retrieval/{probe.name}/{k}"] = {**v, **_skipped(skipped)}
    return out


def _skipped(rows: list[dict[str, str]]) -> dict[str, Any]:
    from alignkit.features.skipped import skipped_note

    return {"skipped_rows": skipped_note(rows)} if rows else {}


# -- human judgements (CLIPScore protocol: alignkit.evaluation.judgements) ---------------------
def judgement_correlation(
    pair: AlignedPair,
    judgements: str | Path | Judgements,
    probe: Any = "flickr8k",
    *,
    cache: Any = True,
    device: str = "cpu",
    progress: bool = False,
    name: str | None = None,
    layout: str = "auto",
) -> Metrics:
    """Rank correlation between the model's image-caption cosine and human scores.

    Kendall tau-b and tau-c and Spearman rho (``scipy.stats``) between ``cos(image, caption)``
    in the shared space and the human score, over the correlation rows of
    :func:`~alignkit.evaluation.judgements.read_judgements`: for Flickr8k's official files, the
    CLIPScore protocol (Hessel et al. 2021: Expert, one row per expert rating and tau-c;
    CrowdFlower, one row per pair and tau-b). Only the judged images and captions are encoded
    (through the cache).

    ``name`` labels the keys (default: the file name); ``layout`` is the file's layout
    (``auto``, ``simple``, ``expert``, ``crowdflower``).

    Returns:
        ``{"judgements/<file>/kendall_tau_c": {"value", "n", "chance": 0.0, "p", "layout",
        "protocol"}, ...}``: each number says which layout and protocol it follows.
    """
    probe = _load(probe)
    if name is None:
        name = Path(judgements).name if not isinstance(judgements, Judgements) else "judgements"
    if not isinstance(judgements, Judgements):
        judgements = read_judgements(judgements, probe, layout)
    used = sorted(set(judgements.rows))
    where = {r: k for k, r in enumerate(used)}
    texts = list(dict.fromkeys(judgements.captions))
    at = {t: k for k, t in enumerate(texts)}
    feats = _Features(pair, cache, device, progress)
    images = feats.embed("image", probe.subset(used, name=f"{probe.name}[judged]"))
    captions = feats.embed("text", text_probe(texts, name=f"{name}:captions"))
    i = torch.tensor([where[r] for r in judgements.rows])
    t = torch.tensor([at[c] for c in judgements.captions])
    cosine = (images[i] * captions[t]).sum(-1).double().numpy()  # (rows,)
    return correlations(cosine, judgements, name)
