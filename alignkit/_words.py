"""Small helpers for the sentences alignkit writes (reports, figure titles, console lines)."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` with ``noun`` in the number it needs: ``counted(1, "real pair")`` -> ``"1 real
    pair"``, ``counted(12, "real pair")`` -> ``"12 real pairs"`` (plural: ``noun + "s"`` unless
    given, e.g. ``counted(2, "score has", "scores have")``)."""
    return f"{n} {noun if n == 1 else (plural if plural is not None else noun + 's')}"


__all__ = ["counted"]
