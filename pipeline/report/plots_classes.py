"""One run's out-of-fold errors: per-class top-1 (worst classes named) and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.report.plots_base import new_figure, save, short

# bar colours of the per-class figure: failing, below the run's overall top-1, at or above it
RED, ORANGE, BLUE = (0.84, 0.24, 0.2), (0.95, 0.6, 0.2), (0.3, 0.6, 0.8)


LEGEND_IN = 0.45  # inches of the figure's height kept for the colour legend


def plot_per_class(table: pd.DataFrame, path: str | Path, title: str = "", worst: int = 15) -> Path:
    """Per-class top-1 of one run, sorted; the worst classes named with their size and the class
    they are mistaken for. ``table`` is ``per_class.csv`` (``display, n, top1, confused_with``)."""
    t = table[table["n"] > 0].sort_values(["top1", "n"], ascending=[True, False]).reset_index(drop=True)
    overall = float((t["top1"] * t["n"]).sum() / max(t["n"].sum(), 1))
    macro = float(t["top1"].mean()) if len(t) else float("nan")
    n = len(t)
    if n <= 30:
        fig = new_figure(7.0, max(0.26 * n + 1.5, 2.8) + LEGEND_IN)
        ax = fig.subplots()
        _class_bars(ax, t, overall, macro)
        ax.set_title(f"{n} classes, worst first (→ most frequent wrong class)", fontsize=9)
    else:
        fig = new_figure(11.0, 0.26 * worst + 1.6 + LEGEND_IN)
        ax_d, ax_w = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.0, 1.25]})
        _class_curve(ax_d, t, overall, macro)
        _class_bars(ax_w, t.head(worst), overall, macro)
        ax_w.set_title(f"the {min(worst, n)} worst classes (→ most frequent wrong class)", fontsize=9)
    head = f"per-class top-1: overall {overall:.3f} (dashed), mean over classes {macro:.3f} (dotted)"
    fig.suptitle(f"{title}\n{head}" if title else head, fontsize=9)
    fig.tight_layout(rect=(0, LEGEND_IN / fig.get_figheight(), 1, 1))  # the legend's strip at the bottom
    return save(fig, path)


def _class_curve(ax, t: pd.DataFrame, overall: float, macro: float) -> None:
    """Every class's top-1, worst to best, as one step curve (too many classes for bars)."""
    n = len(t)
    ax.fill_between(np.arange(1, n + 1), t["top1"], step="mid", color="C0", alpha=0.35)
    ax.plot(np.arange(1, n + 1), t["top1"], drawstyle="steps-mid", color="C0", lw=1)
    ax.axhline(overall, color="0.2", ls="--", lw=1, label=f"overall top-1 {overall:.3f}")
    ax.axhline(macro, color="0.2", ls=":", lw=1, label=f"mean per class {macro:.3f}")
    ax.set_xlim(1, n)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("class rank (worst → best)", fontsize=9)
    ax.set_ylabel("top-1 (OOF)", fontsize=9)
    ax.set_title(f"all {n} classes, sorted", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)


def _class_bars(ax, rows: pd.DataFrame, overall: float, macro: float) -> None:
    """One bar per class: red below 0.5, orange below the overall top-1, blue above it; each
    written with its size and the class it is most often taken for."""
    yy = np.arange(len(rows))
    colors = [RED if v < 0.5 else ORANGE if v < overall else BLUE for v in rows["top1"]]
    ax.barh(yy, rows["top1"], color=colors, height=0.75)
    labels = [short(d, 20) for d in rows["display"]]
    ax.set_yticks(yy, labels, fontsize=8 if len(rows) <= 30 else 6)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(0, 1.35)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.axvline(overall, color="0.2", ls="--", lw=1)
    ax.axvline(macro, color="0.2", ls=":", lw=1)
    box = dict(facecolor="white", edgecolor="none", pad=0.3, alpha=0.75)
    for i, r in enumerate(rows.itertuples(index=False)):
        txt = f"{r.top1:.2f} n={int(r.n)}"
        if isinstance(r.confused_with, str) and r.confused_with and r.top1 < 1:
            txt += f" → {short(r.confused_with, 14)}"
        ax.text(r.top1 + 0.01, i, txt, va="center", fontsize=7 if len(rows) <= 30 else 6, bbox=box)
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel("top-1 (OOF)", fontsize=9)
    _class_legend(ax, overall, macro)


def _class_legend(ax, overall: float, macro: float) -> None:
    """What the bar colours and the two lines mean, in a strip below the plots: inside the axes it
    covered the labels of the worst bars whenever those reach past ~0.6."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(color=RED, label="top-1 < 0.5"),
        Patch(color=ORANGE, label=f"below overall ({overall:.3f})"),
        Patch(color=BLUE, label="at or above overall"),
        Line2D([], [], color="0.2", ls="--", lw=1, label="overall top-1"),
        Line2D([], [], color="0.2", ls=":", lw=1, label=f"mean per class ({macro:.3f})"),
    ]
    legend = ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.01), ncols=3, fontsize=7,
                       frameon=False, bbox_transform=ax.figure.transFigure)  # fmt: skip
    legend.set_in_layout(False)  # placed in the strip tight_layout leaves free


def plot_confusion(cm: np.ndarray, names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted); counts written
    in the cells when there are few classes. ``cm`` is already cut to the classes to show."""
    k = len(names)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    side = min(max(4.6, 0.15 * k + 2.8), 9.5)
    fig = new_figure(side + 1.0, side)
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fs = 8 if k <= 20 else 6 if k <= 35 else 5
    labels = [short(s, 16) for s in names]
    ax.set_xticks(range(k), labels, rotation=90, fontsize=fs)
    ax.set_yticks(range(k), labels, fontsize=fs)
    ax.set_xlabel("predicted", fontsize=9)
    ax.set_ylabel("true", fontsize=9)
    if k <= 15:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(int(cm[i, j])),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if frac[i, j] > 0.5 else "0.15",
                    )
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cb.set_label("share of the true class", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9 if k > 15 else 8)
    fig.tight_layout()
    return save(fig, path)
