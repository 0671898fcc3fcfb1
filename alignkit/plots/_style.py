"""Shared pieces of the figures: names shown for metrics and encoders, colours, number formats."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.colorbar import Colorbar


NONSIG_HATCH = "////"
NONSIG_GID = "nonsignificant"
BEST_GID = "best-layer-pair"


def metric_label(metric: str) -> str:
    """Readable name of a metric: the registry's ``Metric.label`` (``linear_cka_unbiased`` ->
    ``linear CKA (unbiased)``); a name the registry does not know is shown with spaces."""
    from alignkit.metrics import METRICS

    known = METRICS.get(metric)
    return known.label if known is not None else metric.replace("_", " ")


def short_label(spec: str, max_len: int = 28) -> str:
    """A readable short name for an encoder spec.

    ``st:sentence-transformers/all-MiniLM-L6-v2`` -> ``all-MiniLM-L6-v2``;
    ``random-init:torchvision:mobilenet_v2`` -> ``rand-init mobilenet_v2``;
    ``random:image-512`` -> ``random image-512``. Options in brackets are kept. Names longer than
    ``max_len`` lose their middle.
    """
    m = re.match(r"^(.*?)(\[.*\])?$", spec)
    base, opts = (m.group(1), m.group(2) or "") if m else (spec, "")
    prefix = ""
    if base.startswith("random-init:"):
        prefix, base = "rand-init ", base[len("random-init:") :]
    elif base.startswith("random:"):
        prefix, base = "random ", base[len("random:") :]
    name = base.rsplit(":", 1)[-1].rsplit("/", 1)[-1] or base
    label = f"{prefix}{name}{opts}"
    if len(label) > max_len:
        keep = max_len - 1
        label = label[: (keep + 1) // 2] + "…" + label[len(label) - keep // 2 :]
    return label


def short_labels(specs: Sequence[str], max_len: int = 28) -> dict[str, str]:
    """``{spec: short label}``; specs whose short labels would collide keep more of their spec."""
    labels = {s: short_label(s, max_len) for s in specs}
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    for spec, label in labels.items():
        if counts[label] > 1:
            labels[spec] = spec if len(spec) <= 2 * max_len else short_label(spec, 2 * max_len)
    return labels


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


CHANCE_LABEL = "chance"
_TICK_GAP = 0.07  # share of a colour bar's length that keeps two tick labels apart


def mark_chance(bar: Colorbar, value: float, **line: object) -> None:
    """Mark ``value`` on the colour bar ``bar``: a line across it (``line``: axhline styles) and
    a tick labelled "chance" in place of a number. Numbered ticks closer to it than
    ``_TICK_GAP`` of the bar are left out, so that no two labels overlap. A value outside the
    bar's range is not marked (widen the colour scale to show it)."""
    import matplotlib

    low, high = sorted(float(v) for v in bar.ax.get_ylim())
    if not low <= value <= high:
        return
    bar.ax.axhline(value, **line)
    gap = _TICK_GAP * (high - low)
    ticks = [float(t) for t in bar.get_ticks() if low <= t <= high and abs(t - value) > gap]
    ticks = sorted([*ticks, float(value)])
    minus = "\N{MINUS SIGN}" if matplotlib.rcParams["axes.unicode_minus"] else "-"  # as ticks
    labels = [CHANCE_LABEL if t == value else f"{t:g}".replace("-", minus) for t in ticks]
    bar.set_ticks(ticks, labels=labels)


def _text_colour(rgba: Sequence[float]) -> str:
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def _fmt(value: float, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _fmt_z(z: float) -> str:
    return f"z={z:.0f}" if abs(z) >= 10 else f"z={z:.1f}"
