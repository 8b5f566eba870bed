"""Training curves: one run's scores, losses and LR per epoch (after every epoch), and the
validation curves of every model of an experiment on one figure."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from common import schema
from pipeline.report.plots_base import METRIC_LABELS, epoch_axis, new_figure, save, score_limits, series_colors, short
from pipeline.runs.scan import is_done, run_dirs

log = logging.getLogger(__name__)


TRAIN_LONGER = "best epoch = the last one: the run stopped while still improving, train longer"


def best_is_last(history: pd.DataFrame, best_epoch: int | None) -> bool:
    """Whether the checkpointed epoch is the last of several: the run stopped while improving."""
    return best_epoch is not None and len(history) > 1 and "epoch" in history and best_epoch == history["epoch"].max()


def plot_curves(history: pd.DataFrame, path: str | Path, title: str = "", best_epoch: int | None = None) -> Path:
    """Validation scores (top-1, top-5, GAP), losses and LR per epoch of one run.

    ``history`` is ``metrics.csv`` (``epoch, lr, train_loss, val_loss, val_top1, val_top5,
    val_gap, ...``; missing columns are skipped). ``best_epoch`` (the checkpointed one) gets a
    dashed line and its scores in the legend; when it is the last epoch the figure says to train
    longer. Scores stay on an axis that ends at 1.0, every LR step is labelled with its value.
    Called by the trainer after every epoch.
    """
    fig = new_figure(11.5, 3.3)
    ax_s, ax_l, ax_lr = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.35, 1.0, 0.8]})
    e = history["epoch"].to_numpy() if "epoch" in history else np.arange(1, len(history) + 1)
    marker = "o" if len(e) <= 40 else None
    best_row = None
    if best_epoch is not None and best_epoch in set(e.tolist()):
        best_row = history.loc[history["epoch"] == best_epoch].iloc[-1]
        for ax in (ax_s, ax_l):
            ax.axvline(best_epoch, color="0.35", ls="--", lw=1)
    _score_panel(ax_s, history, e, marker, best_row, best_epoch)
    for col, color, name in (("train_loss", "C0", "train"), ("val_loss", "C3", "val")):
        if col in history and history[col].notna().any():
            ax_l.plot(e, history[col], marker=marker, ms=3.5, lw=1.6, color=color, label=name)
    ax_l.set_title("cross-entropy loss", fontsize=10)
    if ax_l.lines:
        ax_l.legend(fontsize=8)
    _lr_panel(ax_lr, history, e)
    for ax in (ax_s, ax_l, ax_lr):
        epoch_axis(ax, e)
        ax.tick_params(which="both", labelsize=8)
    warn = best_row is not None and best_is_last(history, best_epoch)
    if warn:
        fig.text(0.5, 0.015, TRAIN_LONGER, ha="center", va="bottom", fontsize=9, color="C3", weight="bold")
    if title:
        fig.suptitle(title, fontsize=10)
    # fixed margins: tight_layout would draw the figure once more (half the time of this function)
    fig.subplots_adjust(left=0.045, right=0.98, bottom=0.24 if warn else 0.16, top=0.74 if title else 0.82, wspace=0.3)
    return save(fig, path)


def _score_panel(ax, history: pd.DataFrame, e: np.ndarray, marker, best_row, best_epoch: int | None) -> None:
    """GAP, top-1, top-5 per epoch on an axis that ends at 1.0; the legend sits above the panel,
    where it hides no curve, with each score at the best epoch."""
    shown = []
    for col, color, name in (("val_gap", "C2", "GAP"), ("val_top1", "C0", "top-1"), ("val_top5", "C1", "top-5")):
        if col in history and history[col].notna().any():
            y = history[col].to_numpy(dtype=float)
            label = name if best_row is None else f"{name} {best_row[col]:.3f}"
            ax.plot(e, y, marker=marker, ms=3.5, lw=1.6, color=color, label=label)
            shown.append(y)
    if best_row is not None:
        ax.plot([], [], color="0.35", ls="--", lw=1, label=f"best epoch {best_epoch}")
    if shown:
        lo, hi = score_limits(np.concatenate(shown), min_span=0.05)
        ax.set_ylim(lo, min(hi, 1.0))
        ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False,
                  handlelength=1.5, columnspacing=1.0)  # fmt: skip
    ax.set_ylabel("validation score", fontsize=9)


def _lr_panel(ax, history: pd.DataFrame, e: np.ndarray) -> None:
    """The LR per epoch on a log axis, each step's value written where it starts (up to 8 steps;
    a schedule that changes every epoch gets its first, lowest and last values)."""
    ax.set_title("learning rate (log)", fontsize=10)
    if "lr" not in history:
        return
    lr = history["lr"].to_numpy(dtype=float)
    ok = np.isfinite(lr) & (lr > 0)
    if not ok.any():
        return
    x, y = e[ok], lr[ok]
    ax.step(x, y, where="mid", color="C4", lw=1.6)
    ax.plot(x, y, "o", ms=3, color="C4")
    ax.set_yscale("log")
    starts = [0] + [i for i in range(1, len(y)) if not np.isclose(y[i], y[i - 1], rtol=1e-6)]
    if len(starts) > 8:
        starts = sorted({0, int(np.argmin(y)), len(y) - 1})
    for i in starts:
        last = i == len(y) - 1 and i > 0
        ax.annotate(_lr_text(y[i]), (x[i], y[i]), xytext=(-3 if last else 2, 4), textcoords="offset points",
                    ha="right" if last else "left", fontsize=7, color="C4")  # fmt: skip
    from matplotlib.ticker import NullFormatter

    ax.yaxis.set_minor_formatter(NullFormatter())  # the step labels say the values
    ax.margins(y=0.25)


def _lr_text(v: float) -> str:
    """``0.00025`` -> ``2.5e-4`` (3 significant digits at most): short enough to sit on a step."""
    mantissa, exponent = f"{v:.2e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def read_histories(runs_root: str | Path, experiment: str) -> dict[str, pd.DataFrame]:
    """``{model: metrics.csv rows of all its folds, with a 'fold' column}`` (finished or not)."""
    out: dict[str, pd.DataFrame] = {}
    root = Path(runs_root) / experiment
    if not root.is_dir():
        return out
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        parts = []
        for run in run_dirs(model_dir):
            f = run / schema.RUN_METRICS
            if not f.is_file():
                continue
            try:
                df = pd.read_csv(f)
            except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError) as e:
                log.warning("%s: unreadable (%s), left out of the experiment curves", f, e)
                continue
            if "epoch" in df and len(df):
                parts.append(df.assign(fold=run.name, done=is_done(run)))
        if parts:
            out[model_dir.name] = pd.concat(parts, ignore_index=True)
    return out


def plot_experiment_curves(runs_root: str | Path, experiment: str, path: str | Path) -> Path | None:
    """Validation top-1 and GAP per epoch of every model of an experiment on one figure.

    Per model: the mean over its folds (line) and, with up to 6 models, the fold range (band).
    The legend, right of the panels, ranks the models by their best fold-mean score. Seed 002
    compares its nets this way. Returns None (writes nothing) when no run has a ``metrics.csv``.
    """
    hist = read_histories(runs_root, experiment)
    metrics = [m for m in ("val_top1", "val_gap") if any(m in h and h[m].notna().any() for h in hist.values())]
    if not metrics:
        return None
    n = len(hist)
    best = {
        model: [h.groupby("epoch")[m].mean().max() if m in h else np.nan for m in metrics] for model, h in hist.items()
    }
    labels = {}
    for model, h in hist.items():
        running = "" if h.groupby("fold")["done"].first().all() else ", running"
        scores = " / ".join(f"{v:.3f}" for v in best[model])
        labels[model] = f"{short(model, 24)} ({h['fold'].nunique()}f{running})  {scores}"
    legend_w = min(3.4, 0.05 * max(len(t) for t in labels.values()) + 0.6)
    height = max(3.3, 0.2 * n + 1.2)
    fig = new_figure((4.6 if len(metrics) > 1 else 5.0) * len(metrics) + legend_w, height)
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    colors = dict(zip(hist, series_colors(n)))
    for ax, metric in zip(axes, metrics):
        values = []
        for model, h in hist.items():
            if metric not in h or not h[metric].notna().any():
                continue
            g = h.groupby("epoch")[metric]
            mean = g.mean()
            marker = "o" if len(mean) <= 30 else None
            ax.plot(mean.index, mean.to_numpy(), lw=1.8, color=colors[model], marker=marker, ms=3)
            if h["fold"].nunique() > 1 and n <= 6:
                ax.fill_between(mean.index, g.min(), g.max(), color=colors[model], alpha=0.15, lw=0)
            values.append(h[metric].to_numpy(dtype=float))
        lo, hi = score_limits(np.concatenate(values), min_span=0.05)
        ax.set_ylim(lo, min(hi, 1.0))  # no score above 1
        band = ", band = fold range" if n <= 6 else ""
        ax.set_title(f"validation {METRIC_LABELS[metric.removeprefix('val_')]} (fold mean{band})", fontsize=10)
        epoch_axis(ax, np.concatenate([h["epoch"].to_numpy() for h in hist.values()]))
        ax.tick_params(labelsize=8)
    from matplotlib.lines import Line2D

    ranked = sorted(hist, key=lambda m: -np.nan_to_num(best[m][0], nan=-1.0))
    handles = [Line2D([], [], lw=1.8, color=colors[m], marker="o", ms=3) for m in ranked]
    what = " / ".join(METRIC_LABELS[m.removeprefix("val_")] for m in metrics)
    fig.suptitle(f"{experiment}: validation curves of {n} model{'s' if n > 1 else ''}", fontsize=11)
    fig.legend(
        handles,
        [labels[m] for m in ranked],
        loc="center right",
        fontsize=7.5,
        frameon=False,
        title=f"best {what}",
        title_fontsize=8,
    )
    fig.tight_layout(rect=(0, 0, 1 - legend_w / fig.get_figwidth(), 1))
    return save(fig, path)
