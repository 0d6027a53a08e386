"""Plots a person reads, saved as PNG files."""

import os

import matplotlib

matplotlib.use("Agg")  # headless: plots are files, never windows
import matplotlib.pyplot as plt  # noqa: E402


def plot_learning_curves(records: list[dict], path: str, title: str = "") -> str:
    """Train/val loss and accuracy against step, saved as a PNG; returns the path."""
    train = [r for r in records if "train_loss" in r]
    val = [r for r in records if "val_loss" in r]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy")):
        if train:
            ax.plot([r["step"] for r in train], [r[f"train_{key}"] for r in train], label="train")
        if val:
            ax.plot([r["step"] for r in val], [r[f"val_{key}"] for r in val], "o-", label="val")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    set_log_scale_if_positive(ax_loss, [r["train_loss"] for r in train])
    return save_figure(fig, path, title)


def save_figure(fig, path: str, title: str = "") -> str:
    """Lay out, title (if given) and save a figure as a PNG, creating its folder; the path."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def set_log_scale_if_positive(ax, values) -> None:
    """Log y axis for a loss that stays positive (a flipped-sign loss goes negative)."""
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    if finite and min(finite) > 0:
        ax.set_yscale("log")
