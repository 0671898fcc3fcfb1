"""The one error type the library raises for bad input; the CLI makes it one line and exit 1."""

from __future__ import annotations


class AlignkitError(Exception):
    """Bad input or an unusable environment, described in the user's words.

    Messages say what was expected and what was got, on one line, e.g.
    ``x and y must describe the same probe rows: got 1000 rows and 998 rows``.
    """


def unknown_key(kind: str, key: str, valid: list[str] | tuple[str, ...]) -> AlignkitError:
    """Error for a lookup in a registry that failed, listing the valid choices."""
    choices = ", ".join(sorted(valid)) or "(none)"
    return AlignkitError(f"unknown {kind} {key!r}; expected one of: {choices}")
