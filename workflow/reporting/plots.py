"""Plots a person reads: figures drawn here and by each stage, saved by RunDir.save_figure."""

import sys

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from workflow.files import write_atomically


class FigureFactory:
    """pyplot's `subplots` and `Rectangle` without pyplot: each figure is a Figure of its own,
    never registered with pyplot, so no backend is chosen or switched and no window opens (a
    stage runs inside a user's notebook through workflow.api)."""

    Figure = Figure
    Rectangle = Rectangle

    @staticmethod
    def subplots(*args, figsize=None, **kwargs):
        """(figure, axes) as `pyplot.subplots` returns them."""
        fig = Figure(figsize=figsize)
        return fig, fig.subplots(*args, **kwargs)


# What the stages draw with, in pyplot's spelling.
plt = FigureFactory()


def plot_learning_curves(
    records: list[dict], title: str = "", score_label: str = "accuracy"
) -> Figure:
    """Train/val loss and accuracy against step; `score_label` names what the records'
    `accuracy` is for the task (engine/tasks.py: 1 - its error, e.g. "1 - RMSE")."""
    train = [r for r in records if "train_loss" in r]
    val = [r for r in records if "val_loss" in r]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", score_label)):
        if train:
            ax.plot([r["step"] for r in train], [r[f"train_{key}"] for r in train], label="train")
        if val:
            ax.plot([r["step"] for r in val], [r[f"val_{key}"] for r in val], "o-", label="val")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    set_log_scale_if_positive(ax_loss, [r["train_loss"] for r in train])
    if title:
        fig.suptitle(title)
    return fig


def save_figure(fig: Figure, path: str) -> None:
    """Lay out a figure and save it as a PNG, written atomically; the figure is closed."""
    try:
        fig.tight_layout()
        write_atomically(path, "wb", lambda f: fig.savefig(f, dpi=100, format="png"))
    finally:
        if "matplotlib.pyplot" in sys.modules:  # a figure a caller made with pyplot
            sys.modules["matplotlib.pyplot"].close(fig)


def set_log_scale_if_positive(ax, values) -> None:
    """Log y axis for a loss that stays positive (a flipped-sign loss goes negative)."""
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    if finite and min(finite) > 0:
        ax.set_yscale("log")
