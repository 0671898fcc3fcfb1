"""The predictivity figure: one panel per post-training result, the headline metric on x.

Drawn to be read at the size the README shows it (about 900 px wide): one pre-training metric
(the grid's first, calibrated z), at most three panels a row, the correlation with its interval
in each title, and labels only on the pairs a reader asks about: the best result, the real pair
the metric ranks most wrongly, the best control. Controls get their own marker, and the figure a
legend only when the grid has some.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from alignkit.evaluation.predictivity.config import CONTROL_PREFIXES, PredictivityConfig
from alignkit.evaluation.predictivity.tables import MIN_PAIRS, _spearman


def _short(spec: str) -> str:
    control = spec.startswith(CONTROL_PREFIXES)
    base = spec.split(":", 1)[1] if not control else spec.split(":", 2)[-1]
    base = base.rsplit("/", 1)[-1].split(":")[-1]
    return ("rand-init " if control else "") + base


def _outliers(x: np.ndarray, y: np.ndarray, control: np.ndarray) -> list[int]:
    """The pairs a reader asks about: the best result, the real pair the metric ranks most
    wrongly among the real pairs (largest rank disagreement), and the best control."""
    out = []
    if np.isfinite(y).any():
        out.append(int(np.nanargmax(y)))
    real = np.flatnonzero(~control)
    if len(real) >= 3:
        rx = pd.Series(x[real]).rank().to_numpy()
        ry = pd.Series(y[real]).rank().to_numpy()
        out.append(int(real[np.argmax(np.abs(rx - ry))]))
    ctrl = np.flatnonzero(control)
    if len(ctrl) and np.isfinite(y[ctrl]).any():
        out.append(int(ctrl[np.nanargmax(y[ctrl])]))
    return list(dict.fromkeys(out))


def plot_predictivity(
    pairs: pd.DataFrame,
    config: PredictivityConfig | None = None,
    *,
    pre: Sequence[str] | None = None,
    post: Sequence[str] | None = None,
    kind: str = "z",
    correlations: pd.DataFrame | None = None,
) -> Any:
    """Scatter plots, pre-training metric (x) against post-training result (y). Returns the
    matplotlib Figure (one Axes per (pre, post)).

    Args:
        pairs: the pair table (:func:`~alignkit.evaluation.predictivity.tables.pair_table`).
        config: the experiment (its first metric is the default ``pre``).
        pre: metrics on x (default: the config's first metric, else every metric).
        post: results on y (default: every ``post/`` column).
        kind: ``z`` (calibrated) or ``raw`` scores on x.
        correlations: the correlation table; its interval goes into each title when given.
    """
    import matplotlib.pyplot as plt

    suffix = "/z" if kind == "z" else ""
    every = sorted(
        {c.removeprefix("pre/").removesuffix("/z") for c in pairs if c.startswith("pre/")}
    )
    pre = list(pre) if pre else ([config.metrics[0]] if config is not None else every)
    post = list(post) if post else [c.removeprefix("post/") for c in pairs if c.startswith("post/")]
    panels = [(m, r) for m in pre for r in post]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    ctrl = pairs["control"].astype(bool).to_numpy()
    for ax, (met, res) in zip(axes.flat, panels, strict=False):
        x = pairs[f"pre/{met}{suffix}"].to_numpy(float)
        y = pairs[f"post/{res}"].to_numpy(float) * 100
        ax.scatter(x[~ctrl], y[~ctrl], s=28, color="tab:blue", label="pair")
        if ctrl.any():
            ax.scatter(
                x[ctrl], y[ctrl], s=34, marker="s", facecolors="none", edgecolors="tab:red",
                label="with a random-init control",
            )  # fmt: skip
        mid = (np.nanmin(x) + np.nanmax(x)) / 2 if np.isfinite(x).any() else 0.0
        for i in _outliers(x, y, ctrl):
            right = x[i] > mid  # labels grow towards the middle, so they stay inside the panel
            label = ax.annotate(
                f"{_short(pairs['vision'].iloc[i])} x\n{_short(pairs['text'].iloc[i])}",
                (x[i], y[i]), fontsize=6.5, xytext=(-4 if right else 4, -2),
                textcoords="offset points", ha="right" if right else "left", va="top",
            )  # fmt: skip
            label.set_in_layout(False)
        ax.set_title(_title(x, y, met, res, kind, correlations), fontsize=9)
        ax.set_xlabel(f"{met}{' (z)' if kind == 'z' else ''}", fontsize=8)
        ax.set_ylabel(_short_result(res) + " (%)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.05 if ctrl.any() else 0, 1, 1))
    if ctrl.any():  # a legend only when there is something to tell apart
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    return fig


def _short_result(key: str) -> str:
    """``retrieval/flickr8k:test[n=..]/text_to_image_R@5`` -> ``flickr8k:test
    text_to_image_R@5``."""
    parts = key.split("/")
    return f"{parts[1].split('[')[0]} {parts[-1]}" if len(parts) >= 3 else key


def _title(x, y, met, res, kind, correlations) -> str:  # noqa: ANN001
    rho = _spearman(x, y)
    text = f"rho = {rho:.2f}"
    if correlations is not None and len(x) >= MIN_PAIRS:
        row = correlations[
            (correlations["pre"] == met)
            & (correlations["post"] == res)
            & (correlations["kind"] == kind)
        ]
        if len(row) and not math.isnan(row["spearman_low"].iloc[0]):
            text += f" [{row['spearman_low'].iloc[0]:.2f}, {row['spearman_high'].iloc[0]:.2f}]"
    elif len(x) < MIN_PAIRS:
        text += f" ({len(x)} pairs: too few to conclude)"
    return f"{_short_result(res)}\n{text}, {len(x)} pairs"


__all__ = ["plot_predictivity"]
