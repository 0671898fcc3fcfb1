"""Checks on the words that stand for labels: class-name lists and prompt templates.

Both are checked where a user hands them over (a file, a probe's ``classnames.txt``, a Python
list, a template set), before any model runs, so that a bad one costs one line instead of a
finished image extraction.

* Class names: two labels with the same name get identical prompts, so a zero-shot classifier
  can never tell them apart (the CLIP notebooks' ImageNet list names labels 657 and 744 both
  ``missile``). A repeated name is an error unless the caller opts in.
* Templates: a template holds exactly one replacement field for the class name: ``{}``,
  ``{0}``, or ``{c}`` as CLIP_benchmark's template files write it; ``{{`` and ``}}`` are literal
  braces. :func:`fill_template` is the one way a template is formatted, and
  :func:`check_templates` formats each template the same way before any work.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from alignkit.errors import AlignkitError

CLASS_FIELDS = ("", "0", "c")
"""Replacement fields that stand for the class name: ``{}``, ``{0}``, ``{c}`` (CLIP_benchmark)."""


def check_class_names(
    names: Sequence[str], where: str, *, allow_duplicates: bool = False
) -> tuple[str, ...]:
    """``names`` as a tuple, after checking that no two labels share a name.

    Args:
        names: one readable name per label, in label order.
        where: what the list is, for the message (``"--class-names names.txt"``).
        allow_duplicates: accept repeated names (their classes get identical prompts).

    Raises:
        AlignkitError: an empty name, or a repeated one (naming both labels), unless allowed.
    """
    names = tuple(str(n) for n in names)
    first: dict[str, int] = {}
    for label, name in enumerate(names):
        if not name.strip():
            raise AlignkitError(f"{where}: class name {label} is empty; give every label a name")
        if name in first and not allow_duplicates:
            raise AlignkitError(
                f"{where}: class names {first[name]} and {label} are both {name!r}: their prompts "
                "would be identical, so the classes could never be told apart; rename one, or pass "
                "allow_duplicate_class_names=True"
            )
        first.setdefault(name, label)
    return names


def fill_template(template: str, name: str) -> str:
    """``template`` with the class name in its one field (``{}``, ``{0}`` or ``{c}``)."""
    return template.format(name, c=name)


def template_problem(template: object) -> str | None:
    """Why ``template`` cannot be filled with a class name, or ``None`` when it can."""
    if not isinstance(template, str):
        return f"is a {type(template).__name__}, not a string"
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:  # a stray brace
        return f"is not a valid format string ({e}; write '{{{{' or '}}}}' for a literal brace)"
    wrong = [f for f in fields if f not in CLASS_FIELDS]
    if wrong:
        return f"has the field {{{wrong[0]}}}, which no value fills"
    if len(fields) != 1:
        return f"has {len(fields)} replacement fields"
    try:
        fill_template(template, "x")
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        return f"cannot be formatted ({type(e).__name__}: {e})"
    return None


def check_templates(templates: Sequence[object], where: str) -> tuple[str, ...]:
    """``templates`` as a tuple, after formatting each with a class name as prompts will be.

    Raises:
        AlignkitError: no templates, or one that is not a string with exactly one class-name
            field (``{}``, ``{0}`` or ``{c}``), naming the template and its problem.
    """
    templates = tuple(templates)
    if not templates:
        raise AlignkitError(f"{where}: expected one or more templates, got none")
    for t in templates:
        problem = template_problem(t)
        if problem is not None:
            raise AlignkitError(
                f"{where}: template {t!r} {problem}; expected exactly one '{{}}' (or '{{0}}', "
                "'{c}') where the class name goes"
            )
    return templates  # type: ignore[return-value]  # every element was checked to be a str
