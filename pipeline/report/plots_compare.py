"""The compare figure: models (rows) x experiments (colours), CV fold mean +- std and test."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.report.plots_base import METRIC_LABELS, new_figure, save, score_limits, score_ticks, series_colors, short


def plot_compare(
    table: pd.DataFrame,
    experiments: Sequence[str],
    path: str | Path,
    title: str = "",
    metrics: Sequence[str] = ("gap", "top1"),
) -> Path:
    """Models (rows, in ``table`` order of first appearance) x experiments (colours): per metric
    the CV fold mean +- std (filled) and test (hollow), with the CV value written.

    ``table`` is ``compare.csv``: ``experiment, model, cv_<m>, cv_<m>_std, test_<m>``.
    """
    models = list(dict.fromkeys(table["model"]))
    n, k = len(models), len(experiments)
    fig = new_figure(4.8 * len(metrics) + 1.8, (0.2 * k + 0.25) * n + 1.7)
    axes = np.atleast_1d(fig.subplots(1, len(metrics), sharey=True))
    colors = series_colors(k)
    for ax, m in zip(axes, metrics):
        _panel(ax, table, experiments, models, m, colors)
    axes[0].set_yticks(range(n), [short(m, 28) for m in models])
    axes[0].set_ylim(n - 0.5, -0.5)
    from matplotlib.lines import Line2D

    legend = []
    for e, c in zip(experiments, colors):
        prec = "/".join(sorted(set(table.loc[table["experiment"] == e, "precision"].dropna().astype(str))))
        label = short(e, 30) + (f" ({prec})" if prec else "")
        legend.append(Line2D([], [], ls="", marker="o", ms=6, color=c, label=label))
    legend.append(Line2D([], [], ls="", marker="D", ms=5, mfc="white", mec="0.3", label="test"))
    fig.legend(handles=legend, loc="lower center", ncol=min(len(legend), 5), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    rows_legend = math.ceil(len(legend) / 5)
    fig.tight_layout(rect=(0, (0.12 + 0.2 * rows_legend) / ((0.2 * k + 0.25) * n + 1.7), 1, 1))
    return save(fig, path)


def _panel(ax, table: pd.DataFrame, experiments: Sequence[str], models: list, m: str, colors: list) -> None:
    """One metric: per model a row, per experiment a dot (CV +- std) and a diamond (test)."""
    k = len(experiments)
    offsets = (np.arange(k) - (k - 1) / 2) * (0.8 / k)
    std = table.get(f"cv_{m}_std", pd.Series(np.nan, index=table.index)).fillna(0)
    everything = [*(table[f"cv_{m}"] - std), *(table[f"cv_{m}"] + std), *table.get(f"test_{m}", [])]
    lo, hi = score_limits(everything, right_room=0.14)
    score_ticks(ax, lo, hi)
    for j, exp in enumerate(experiments):
        sub = table[table["experiment"] == exp].set_index("model")
        for i, model in enumerate(models):
            if model in sub.index:
                _mark(ax, sub.loc[model], m, i + offsets[j], colors[j])
    for i in range(1, len(models)):
        ax.axhline(i - 0.5, color="0.85", lw=0.8)
    ax.set_title(f"CV {METRIC_LABELS.get(m, m)} (fold mean ± std; ◇ test)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(labelsize=8)


def _mark(ax, r: pd.Series, m: str, yy: float, color) -> None:
    """One (model, experiment): CV with its std, test hollow, the CV value written right of both."""
    cv, s = float(r[f"cv_{m}"]), float(r.get(f"cv_{m}_std", np.nan))
    test = float(r.get(f"test_{m}", np.nan))
    if np.isfinite(cv):
        ax.errorbar(cv, yy, xerr=s if np.isfinite(s) else None, fmt="o", ms=5.5, color=color, elinewidth=1.6,
                    capsize=2, zorder=4)  # fmt: skip
    if np.isfinite(test):
        ax.plot(test, yy, "D", ms=5, mfc="white", mec=color, mew=1.4, zorder=5)
    right = np.nanmax([cv + (s if np.isfinite(s) else 0), test])
    if np.isfinite(cv):
        ax.annotate(f"{cv:.3f}", (right, yy), xytext=(5, 0), textcoords="offset points", va="center", fontsize=7,
                    color=color)  # fmt: skip
