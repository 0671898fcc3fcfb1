"""The training history: one row per validation, as history.csv and the history.png figure."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from alignkit._files import atomic_path

__all__ = ["FIGURE", "HISTORY", "plot_history", "write_history"]

HISTORY = "history.csv"
FIGURE = "history.png"


def write_history(out_dir: Path, frame: pd.DataFrame, figure: bool = False) -> None:
    """Write ``out_dir/history.csv`` (and, with ``figure``, history.png) atomically."""
    with atomic_path(out_dir / HISTORY) as tmp:
        frame.to_csv(tmp, index=False)
    if figure and len(frame):
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 3.5))
        plot_history(frame, ax=fig.add_subplot())
        fig.tight_layout()
        with atomic_path(out_dir / FIGURE) as tmp:
            fig.savefig(tmp, format="png", dpi=120)


def plot_history(history: pd.DataFrame, ax=None):
    """Training loss (left axis) and validation recall (right axis) against the step.

    ``history``: the frame of :class:`~alignkit.training.TrainResult`. Draws on ``ax`` (or a new
    one); returns it.
    """
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(history["step"], history["train_loss"], color="tab:blue", label="train loss")
    if "val_loss" in history:
        ax.plot(history["step"], history["val_loss"], color="tab:blue", ls="--", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(loc="upper left", fontsize=8)
    if "mean_recall" in history:
        right = ax.twinx()
        for col, style in (("i2t_r5", "-"), ("t2i_r5", "--"), ("mean_recall", ":")):
            right.plot(history["step"], history[col], color="tab:orange", ls=style, label=col)
        right.set_ylabel("recall (%)")
        right.legend(loc="upper right", fontsize=8)
    return ax
