"""The leaderboard figure: per model the fold scores, fold mean +- std, CV and test, per metric."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.report.plots_base import (
    CV_STYLE,
    FOLD_STYLE,
    METRIC_LABELS,
    TEST_STYLE,
    new_figure,
    save,
    score_limits,
    score_ticks,
    short,
)


def _row_labels(summary: pd.DataFrame) -> list[str]:
    out = []
    for r in summary.itertuples(index=False):
        extra = []
        if isinstance(getattr(r, "folds", None), (int, float)) and not pd.isna(r.folds) and r.folds:
            extra.append(f"{int(r.folds)}f")
        prec = getattr(r, "precision", None)
        if isinstance(prec, str) and prec:
            extra.append(prec)
        out.append(short(r.model, 28) + (f"  ({', '.join(extra)})" if extra else ""))
    return out


def plot_leaderboard(
    summary: pd.DataFrame,
    folds: pd.DataFrame,
    path: str | Path,
    title: str = "",
    metrics: Sequence[str] = ("gap", "top1"),
) -> Path:
    """One panel per metric: per model (sorted as ``summary``) the fold scores (grey dots),
    fold mean +- std (bar), CV over all OOF rows (blue) and test (red), with the CV value.

    ``summary`` has ``model, cv_<m>, test_<m>, fold_<m>_mean, fold_<m>_std, status`` (see
    :func:`pipeline.report.leaderboard.summarize`); ``folds`` the per-(model, fold) rows.
    """
    n = len(summary)
    height = 0.36 * n + 1.5
    fig = new_figure(4.6 * len(metrics) + 1.8, height)
    axes = np.atleast_1d(fig.subplots(1, len(metrics), sharey=True))
    ens = summary["model"].astype(str).str.startswith("ensemble").to_numpy()
    for ax, m in zip(axes, metrics):
        _panel(ax, summary, folds, m, ens)
    axes[0].set_yticks(np.arange(n), _row_labels(summary))
    for lab, is_ens in zip(axes[0].get_yticklabels(), ens):
        if is_ens:
            lab.set_color("C2")
            lab.set_fontweight("bold")
    axes[0].set_ylim(n - 0.5, -0.5)  # best on top
    from matplotlib.lines import Line2D

    legend = [
        Line2D([], [], ls="", marker="o", ms=4, color="0.55", label="fold"),
        Line2D([], [], ls="-", lw=2.2, color="0.25", alpha=0.55, label="fold mean ± std"),
        Line2D([], [], ls="", marker="o", ms=7, color="C0", label="CV (all OOF rows)"),
        Line2D([], [], ls="", marker="D", ms=6, color="C3", label="test (fold-averaged)"),
    ]
    fig.legend(handles=legend, loc="lower center", ncol=4, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.3 / height, 1, 1))
    return save(fig, path)


def _column(summary: pd.DataFrame, name: str) -> np.ndarray:
    return summary.get(name, pd.Series(np.nan, index=summary.index)).to_numpy(dtype=float)


def _fold_points(summary: pd.DataFrame, folds: pd.DataFrame, m: str) -> tuple[list, list, np.ndarray]:
    """Each model's fold scores as (x, y) dots spread a little around its row, and its best fold."""
    pts_x, pts_y, row_max = [], [], np.full(len(summary), np.nan)
    if m in folds and len(folds):
        for i, model in enumerate(summary["model"]):
            v = folds.loc[folds["model"] == model, m].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            pts_x.extend(v)
            pts_y.extend(i + np.linspace(-0.18, 0.18, len(v)) if len(v) > 1 else [i] * len(v))
            row_max[i] = v.max() if len(v) else np.nan
    return pts_x, pts_y, row_max


def _panel(ax, summary: pd.DataFrame, folds: pd.DataFrame, m: str, ens: np.ndarray) -> None:
    """One metric's panel: folds, fold mean +- std, CV and test per row, the CV / test written."""
    n, y = len(summary), np.arange(len(summary))
    cv, test = _column(summary, f"cv_{m}"), _column(summary, f"test_{m}")
    mean, std = _column(summary, f"fold_{m}_mean"), _column(summary, f"fold_{m}_std")
    pts_x, pts_y, row_max = _fold_points(summary, folds, m)
    everything = [*pts_x, *cv, *test, *(mean - np.nan_to_num(std)), *(mean + np.nan_to_num(std))]
    lo, hi = score_limits(everything, right_room=0.16)
    score_ticks(ax, lo, hi)
    for i in np.flatnonzero(ens):
        ax.axhspan(i - 0.5, i + 0.5, color="C2", alpha=0.07, lw=0)
    ok = np.isfinite(mean)
    ax.errorbar(mean[ok], y[ok], xerr=np.nan_to_num(std[ok]), fmt="|", ms=12, color="0.25", elinewidth=2.2,
                capsize=0, alpha=0.55, zorder=3)  # fmt: skip
    ax.scatter(pts_x, pts_y, **FOLD_STYLE)
    ax.scatter(cv, y, **CV_STYLE)
    ax.scatter(test, y, **TEST_STYLE)
    for i in range(n):
        head = cv[i] if np.isfinite(cv[i]) else mean[i]
        status = summary["status"].iloc[i] if "status" in summary else ""
        if np.isfinite(head):
            right = np.nanmax([cv[i], test[i], mean[i] + np.nan_to_num(std[i]), row_max[i]])
            txt = f"{head:.3f}" + (f" / {test[i]:.3f}" if np.isfinite(test[i]) else "")
            ax.annotate(txt, (right, i), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8)
        elif isinstance(status, str) and status:
            ax.text(lo + 0.02 * (hi - lo), i, short(status, 40), va="center", fontsize=8, color="0.4", style="italic")
    ax.set_title(f"{METRIC_LABELS.get(m, m)}  (label: CV / test)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(labelsize=8)
