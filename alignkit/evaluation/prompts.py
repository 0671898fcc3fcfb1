"""Prompt templates and the text-only probes that carry captions and prompts through the cache.

Zero-shot classification turns class names into sentences with templates (Radford et al. 2021,
"Learning Transferable Visual Models From Natural Language Supervision"): the 80 ImageNet
templates of the CLIP paper, the 7 of them its authors found best as a small ensemble, or the
single template ``"a photo of a {}."``. The lists live as data files in ``templates/``.

Every text an encoder sees here goes through :func:`alignkit.extract_features` and so through the
feature cache: :func:`caption_probe` makes one probe row per caption (retrieval, training on all
captions) and :func:`prompt_probe` one row per (class, template) prompt. Both are ordinary
:class:`~alignkit.probes.ProbeSet` s whose fingerprints depend only on their texts (and, for
captions, the source rows), so a prompt set is extracted once per text encoder and reused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from PIL import Image

from alignkit.errors import AlignkitError, unknown_key
from alignkit.probes.base import ProbeRow, ProbeSet
from alignkit.probes.labels import check_templates, fill_template

SINGLE_TEMPLATE = "a photo of a {}."
#: The template set zero-shot uses on a probe that ships no templates of its own.
DEFAULT_TEMPLATE_SET = "imagenet7"
#: The template source :func:`zeroshot_templates` reports for a probe's own templates.
PROBE_TEMPLATES = "probe"


def _packaged(name: str) -> tuple[str, ...]:
    text = resources.files("alignkit.evaluation").joinpath("templates", name).read_text("utf-8")
    return tuple(line for line in text.splitlines() if line.strip())


# name -> loader of the template list (literal registry; files read on first use)
TEMPLATE_SETS: dict[str, str] = {
    "imagenet80": "imagenet80.txt",  # CLIP paper, all 80 ImageNet templates
    "imagenet7": "imagenet7.txt",  # CLIP paper, the 7-template subset
    "single": "",  # "a photo of a {}."
}


def load_templates(spec: str | Path | Sequence[str]) -> tuple[str, ...]:
    """Prompt templates by name (:data:`TEMPLATE_SETS`), from a file (one template a line), or as
    a given list. Each is formatted with a class name here, as :func:`prompt_probe` will format
    it, so a bad one fails before any work: it needs exactly one class-name field, ``{}``,
    ``{0}`` or ``{c}`` (CLIP_benchmark's files), and ``{{``/``}}`` for literal braces.

    Raises:
        AlignkitError: an unknown name, an empty list, or a template that cannot be filled (one
            line naming the template: ``"a {style} photo of a {}"``, a stray brace, two fields).
    """
    if isinstance(spec, (list, tuple)):
        templates = tuple(spec)
        where = "the templates given"
    elif isinstance(spec, str) and spec in TEMPLATE_SETS:
        templates = (SINGLE_TEMPLATE,) if spec == "single" else _packaged(TEMPLATE_SETS[spec])
        where = f"template set {spec!r}"
    elif Path(spec).expanduser().is_file():
        path = Path(spec).expanduser()
        templates = tuple(s for s in path.read_text("utf-8").splitlines() if s.strip())
        where = str(path)
    else:
        raise unknown_key("template set (or an existing file)", str(spec), tuple(TEMPLATE_SETS))
    return check_templates(templates, where)


def zeroshot_templates(
    probe: ProbeSet, templates: str | Path | Sequence[str] | None = None
) -> tuple[tuple[str, ...], str]:
    """The prompt templates zero-shot classification uses on ``probe``, and where they come from.

    Given ``templates`` (a set name, a file or a list; see :func:`load_templates`) win. Else the
    probe's own (``probe.templates``: a CLIP_benchmark folder's
    ``zeroshot_classification_templates.txt``), else :data:`DEFAULT_TEMPLATE_SET`.

    Returns:
        ``(templates, source)``: ``source`` is the set name or file given, ``"given"`` for a
        list, :data:`PROBE_TEMPLATES` for the probe's own, or the default set's name.

    Raises:
        AlignkitError: an unknown set name, or a template that cannot be filled.
    """
    if templates is not None:
        source = "given" if isinstance(templates, (list, tuple)) else str(templates)
        return load_templates(templates), source
    own = getattr(probe, "templates", None)
    if own:
        return check_templates(own, f"probe {probe.name}'s templates"), PROBE_TEMPLATES
    return load_templates(DEFAULT_TEMPLATE_SET), DEFAULT_TEMPLATE_SET


def _no_image() -> Image.Image:
    """Placeholder image of a text-only row (never decoded: only text encoders read these rows)."""
    return Image.new("RGB", (1, 1))


def _text_digest(text: str) -> str:
    return hashlib.sha256(f"text-only\x00{text}".encode()).hexdigest()


def prompt_probe(class_names: Sequence[str], templates: Sequence[str]) -> ProbeSet:
    """One row per (class, template): row ``c * len(templates) + t`` has the caption
    ``templates[t]`` filled with ``class_names[c]`` (:func:`~alignkit.probes.labels.fill_template`),
    id ``"{c}/{t}"`` and label ``c``.

    Its fingerprint depends only on the prompts, so every probe with the same class names and
    templates shares its text features in the cache.
    """
    if not class_names:
        raise AlignkitError("class_names must name one or more classes: got none")
    templates = check_templates(templates, "templates")
    rows = []
    for c, name in enumerate(class_names):
        for t, template in enumerate(templates):
            text = fill_template(template, name)
            rows.append(ProbeRow(f"{c}/{t}", _no_image, (text,), c, {}, _text_digest(text)))
    key = hashlib.sha256("\x00".join(templates).encode()).hexdigest()[:12]
    return ProbeSet(
        f"prompts[{len(class_names)} classes x {len(templates)} templates,{key}]",
        tuple(rows),
        tuple(class_names),
    )


def caption_probe(probe: ProbeSet) -> tuple[ProbeSet, list[int]]:
    """Every caption of ``probe`` as its own row, and the index of each caption's image row.

    Row ids are ``"{row id}#{k}"`` for the k-th caption; rows keep their image path and digest,
    so the caption probe's fingerprint follows the source rows.

    Returns:
        ``(captions, image_index)``: a ProbeSet of ``sum(len(row.captions))`` rows and, for each,
        the index (``0 .. len(probe) - 1``) of the row it came from.
    """
    rows, index = [], []
    for i, row in enumerate(probe.rows):
        for k, caption in enumerate(row.captions):
            rows.append(
                ProbeRow(
                    f"{row.id}#{k}",
                    row.image,
                    (caption,),
                    row.label,
                    {"image_id": row.id},
                    row.digest or row.image_digest(),
                )
            )
            index.append(i)
    if not rows:
        raise AlignkitError(f"probe {probe.name} has no captions")
    return ProbeSet(f"{probe.name}:captions", tuple(rows), probe.class_names), index


def text_probe(texts: Sequence[str], name: str = "texts") -> ProbeSet:
    """One text-only row per string (ids ``"0"``, ``"1"``, ...): judged captions, user texts.
    The fingerprint depends only on the texts and their order."""
    if not texts:
        raise AlignkitError("texts must hold one or more strings: got none")
    rows = tuple(
        ProbeRow(str(i), _no_image, (t,), None, {}, _text_digest(t)) for i, t in enumerate(texts)
    )
    return ProbeSet(name, rows)
