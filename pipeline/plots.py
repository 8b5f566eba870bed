"""PNG figures: training curves per run, leaderboard bars per experiment."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from common.io import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """Loss (train/val), accuracy (top-1/top-5) and LR per epoch."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    e = history["epoch"]
    axes[0].plot(e, history["train_loss"], "o-", label="train")
    axes[0].plot(e, history["val_loss"], "o-", label="val")
    axes[0].set_title("cross-entropy")
    axes[1].plot(e, history["val_top1"], "o-", label="top-1")
    axes[1].plot(e, history["val_top5"], "o-", label="top-5")
    axes[1].set_title("validation accuracy")
    axes[1].set_ylim(0, 1)
    axes[2].plot(e, history["lr"], "o-")
    axes[2].set_yscale("log")
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=80)
    plt.close(fig)


def plot_leaderboard(board: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """Horizontal bars of top-1 per (model, fold) row of the leaderboard."""
    plt = _plt()
    labels = [f"{m} / {f}" for m, f in zip(board["model"], board["fold"])]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(board) + 1.2))
    ax.barh(range(len(board)), board["top1"], color=["C1" if f in ("cv", "test") else "C0" for f in board["fold"]])
    ax.set_yticks(range(len(board)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("top-1")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=80)
    plt.close(fig)
