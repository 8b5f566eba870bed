"""PNG figures a Kaggler looks at: training curves, leaderboards, per-class analysis, comparisons.

Every figure is built on a bare :class:`matplotlib.figure.Figure` (no pyplot: no global state,
nothing to close, a little faster, safe in any thread) and written atomically. Figures are
small (dpi 90) so committed copies stay light. Axes of scores are zoomed on the data, not
fixed to 0-1: the differences between models are what the figure is for.

* :func:`plot_curves`: one run, every epoch (called by the trainer; ~0.2 s).
* :func:`plot_experiment_curves`: the validation curves of every model of an experiment.
* :func:`plot_leaderboard`: CV, fold and test scores per model, sorted.
* :func:`plot_per_class`, :func:`plot_confusion`: one run's out-of-fold errors.
* :func:`plot_compare`: models x experiments.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from common import schema
from common.io import atomic_write
from pipeline.runs.scan import is_done, run_dirs

log = logging.getLogger(__name__)

DPI = 90
METRIC_LABELS = {"top1": "top-1", "top5": "top-5", "gap": "GAP", "loss": "loss"}
# marks shared by the leaderboard and compare figures
FOLD_STYLE = dict(marker="o", s=14, color="0.55", alpha=0.8, linewidths=0, zorder=2)
CV_STYLE = dict(marker="o", s=55, color="C0", edgecolors="white", linewidths=0.8, zorder=4)
TEST_STYLE = dict(marker="D", s=38, color="C3", edgecolors="white", linewidths=0.6, zorder=5)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)
    return path


def _short(text: object, width: int = 22) -> str:
    s = str(text)
    return s if len(s) <= width else s[: width - 1] + "…"


def _finite(values) -> np.ndarray:
    a = np.asarray(pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce"), dtype=float)
    return a[np.isfinite(a)]


def score_limits(
    values, pad_frac: float = 0.08, min_span: float = 0.04, right_room: float = 0.0
) -> tuple[float, float]:
    """Axis limits zoomed on ``values`` (scores in [0, 1]): the differences are what matter.

    The span is at least ``min_span`` (a single value or identical folds still get an axis);
    ``right_room`` adds that fraction of the span on the right for value labels.
    """
    v = _finite(values)
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    pad = (hi - lo) * pad_frac
    lo, hi = max(lo - pad, 0.0 if lo >= 0 else lo - pad), hi + pad
    if v.max() <= 1.0:
        hi = min(hi, 1.0 + pad)
    return lo, hi + (hi - lo) * right_room


def _score_ticks(ax, lo: float, hi: float) -> None:
    """Score ticks only where scores can be (the room on the right is for value labels)."""
    from matplotlib.ticker import MaxNLocator

    ticks = MaxNLocator(nbins=6).tick_values(lo, hi)
    ax.set_xticks([t for t in ticks if lo <= t <= min(hi, 1.0) + 1e-9])
    ax.set_xlim(lo, hi)


def _epoch_axis(ax, epochs=None) -> None:
    """Integer epoch ticks; a little room either side (one epoch would otherwise get 0.95-1.05)."""
    from matplotlib.ticker import MaxNLocator

    e = _finite([] if epochs is None else epochs)
    if e.size:
        pad = max(0.5, 0.03 * (e.max() - e.min()))
        ax.set_xlim(e.min() - pad, e.max() + pad)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8, min_n_ticks=1))
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


# --------------------------------------------------------------------------- one run's curves


def plot_curves(history: pd.DataFrame, path: str | Path, title: str = "", best_epoch: int | None = None) -> Path:
    """Validation scores (top-1, top-5, GAP), losses and LR per epoch of one run.

    ``history`` is ``metrics.csv`` (``epoch, lr, train_loss, val_loss, val_top1, val_top5,
    val_gap, ...``; missing columns are skipped). ``best_epoch`` (the checkpointed one) gets a
    dashed line and its scores in the legend. Called by the trainer after every epoch.
    """
    fig = _figure(11.5, 3.1)
    ax_s, ax_l, ax_lr = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.35, 1.0, 0.8]})
    e = history["epoch"].to_numpy() if "epoch" in history else np.arange(1, len(history) + 1)
    marker = "o" if len(e) <= 40 else None
    best_row = None
    if best_epoch is not None and best_epoch in set(e.tolist()):
        best_row = history.loc[history["epoch"] == best_epoch].iloc[-1]
    shown = []
    for col, color, name in (("val_gap", "C2", "GAP"), ("val_top1", "C0", "top-1"), ("val_top5", "C1", "top-5")):
        if col in history and history[col].notna().any():
            y = history[col].to_numpy(dtype=float)
            label = name if best_row is None else f"{name} {best_row[col]:.3f}"
            ax_s.plot(e, y, marker=marker, ms=3.5, lw=1.6, color=color, label=label)
            shown.append(y)
    if best_row is not None:
        for ax in (ax_s, ax_l):
            ax.axvline(best_epoch, color="0.35", ls="--", lw=1)
        ax_s.plot([], [], color="0.35", ls="--", lw=1, label=f"best epoch {best_epoch}")
    if shown:
        lo, hi = score_limits(np.concatenate(shown), min_span=0.05)
        ax_s.set_ylim(lo, hi + 0.3 * (hi - lo))  # headroom: the legend goes above the curves
        ax_s.legend(fontsize=7, loc="upper center", ncol=2, framealpha=0.85)
    ax_s.set_title("validation scores", fontsize=10)
    for col, color, name in (("train_loss", "C0", "train"), ("val_loss", "C3", "val")):
        if col in history and history[col].notna().any():
            ax_l.plot(e, history[col], marker=marker, ms=3.5, lw=1.6, color=color, label=name)
    ax_l.set_title("cross-entropy loss", fontsize=10)
    if ax_l.lines:
        ax_l.legend(fontsize=8)
    if "lr" in history:
        lr = history["lr"].to_numpy(dtype=float)
        ok = np.isfinite(lr) & (lr > 0)
        if ok.any():
            ax_lr.step(e[ok], lr[ok], where="mid", color="C4", lw=1.6)
            ax_lr.plot(e[ok], lr[ok], "o", ms=3, color="C4")
            ax_lr.set_yscale("log")
    ax_lr.set_title("learning rate (log)", fontsize=10)
    for ax in (ax_s, ax_l, ax_lr):
        _epoch_axis(ax, e)
        ax.tick_params(which="both", labelsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    # fixed margins: tight_layout would draw the figure once more (half the time of this function)
    fig.subplots_adjust(left=0.045, right=0.98, bottom=0.16, top=0.8 if title else 0.88, wspace=0.3)
    return _save(fig, path)


# --------------------------------------------------------------------------- experiment curves


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


def _model_colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


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
        labels[model] = f"{_short(model, 24)} ({h['fold'].nunique()}f{running})  {scores}"
    legend_w = min(3.4, 0.05 * max(len(t) for t in labels.values()) + 0.6)
    height = max(3.3, 0.2 * n + 1.2)
    fig = _figure((4.6 if len(metrics) > 1 else 5.0) * len(metrics) + legend_w, height)
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    colors = dict(zip(hist, _model_colors(n)))
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
        ax.set_ylim(*score_limits(np.concatenate(values), min_span=0.05))
        band = ", band = fold range" if n <= 6 else ""
        ax.set_title(f"validation {METRIC_LABELS[metric.removeprefix('val_')]} (fold mean{band})", fontsize=10)
        _epoch_axis(ax, np.concatenate([h["epoch"].to_numpy() for h in hist.values()]))
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
    return _save(fig, path)


# --------------------------------------------------------------------------- leaderboard


def _row_labels(summary: pd.DataFrame) -> list[str]:
    out = []
    for r in summary.itertuples(index=False):
        extra = []
        if isinstance(getattr(r, "folds", None), (int, float)) and not pd.isna(r.folds) and r.folds:
            extra.append(f"{int(r.folds)}f")
        prec = getattr(r, "precision", None)
        if isinstance(prec, str) and prec:
            extra.append(prec)
        out.append(_short(r.model, 28) + (f"  ({', '.join(extra)})" if extra else ""))
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
    fig = _figure(4.6 * len(metrics) + 1.8, height)
    axes = np.atleast_1d(fig.subplots(1, len(metrics), sharey=True))
    y = np.arange(n)
    ens = summary["model"].astype(str).str.startswith("ensemble").to_numpy()
    for ax, m in zip(axes, metrics):
        cv = summary.get(f"cv_{m}", pd.Series(np.nan, index=summary.index)).to_numpy(dtype=float)
        test = summary.get(f"test_{m}", pd.Series(np.nan, index=summary.index)).to_numpy(dtype=float)
        mean = summary.get(f"fold_{m}_mean", pd.Series(np.nan, index=summary.index)).to_numpy(dtype=float)
        std = summary.get(f"fold_{m}_std", pd.Series(np.nan, index=summary.index)).to_numpy(dtype=float)
        pts_x, pts_y, row_max = [], [], np.full(n, np.nan)
        if m in folds and len(folds):
            for i, model in enumerate(summary["model"]):
                v = folds.loc[folds["model"] == model, m].to_numpy(dtype=float)
                v = v[np.isfinite(v)]
                pts_x.extend(v)
                pts_y.extend(i + np.linspace(-0.18, 0.18, len(v)) if len(v) > 1 else [i] * len(v))
                row_max[i] = v.max() if len(v) else np.nan
        everything = [*pts_x, *cv, *test, *(mean - np.nan_to_num(std)), *(mean + np.nan_to_num(std))]
        lo, hi = score_limits(everything, right_room=0.16)
        _score_ticks(ax, lo, hi)
        for i in np.flatnonzero(ens):
            ax.axhspan(i - 0.5, i + 0.5, color="C2", alpha=0.07, lw=0)
        ok = np.isfinite(mean)
        ax.errorbar(
            mean[ok],
            y[ok],
            xerr=np.nan_to_num(std[ok]),
            fmt="|",
            ms=12,
            color="0.25",
            elinewidth=2.2,
            capsize=0,
            alpha=0.55,
            zorder=3,
        )
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
                ax.text(
                    lo + 0.02 * (hi - lo), i, _short(status, 40), va="center", fontsize=8, color="0.4", style="italic"
                )
        ax.set_title(f"{METRIC_LABELS.get(m, m)}  (label: CV / test)", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0].set_yticks(y, _row_labels(summary))
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
    return _save(fig, path)


# --------------------------------------------------------------------------- per-class analysis


def plot_per_class(table: pd.DataFrame, path: str | Path, title: str = "", worst: int = 15) -> Path:
    """Per-class top-1 of one run, sorted; the worst classes named with their size and the class
    they are mistaken for. ``table`` is ``per_class.csv`` (``display, n, top1, confused_with``)."""
    t = table[table["n"] > 0].sort_values(["top1", "n"], ascending=[True, False]).reset_index(drop=True)
    overall = float((t["top1"] * t["n"]).sum() / max(t["n"].sum(), 1))
    macro = float(t["top1"].mean()) if len(t) else float("nan")

    def bars(ax, rows: pd.DataFrame, detail: bool) -> None:
        yy = np.arange(len(rows))
        colors = [
            (0.84, 0.24, 0.2) if v < 0.5 else (0.95, 0.6, 0.2) if v < overall else (0.3, 0.6, 0.8) for v in rows["top1"]
        ]
        ax.barh(yy, rows["top1"], color=colors, height=0.75)
        labels = [_short(d, 20) for d in rows["display"]]
        ax.set_yticks(yy, labels, fontsize=8 if len(rows) <= 30 else 6)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xlim(0, 1.35 if detail else 1.12)
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.axvline(overall, color="0.2", ls="--", lw=1)
        ax.axvline(macro, color="0.2", ls=":", lw=1)
        for i, r in enumerate(rows.itertuples(index=False)):
            txt = f"{r.top1:.2f} n={int(r.n)}"
            if detail and isinstance(r.confused_with, str) and r.confused_with and r.top1 < 1:
                txt += f" → {_short(r.confused_with, 14)}"
            ax.text(
                r.top1 + 0.01,
                i,
                txt,
                va="center",
                fontsize=7 if len(rows) <= 30 else 6,
                bbox=dict(facecolor="white", edgecolor="none", pad=0.3, alpha=0.75),
            )
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
        ax.set_xlabel("top-1 (OOF)", fontsize=9)

    n = len(t)
    if n <= 30:
        fig = _figure(7.0, 0.26 * n + 1.5)
        ax = fig.subplots()
        bars(ax, t, detail=True)
        ax.set_title(f"{n} classes, worst first (→ most frequent wrong class)", fontsize=9)
    else:
        fig = _figure(11.0, 0.26 * worst + 1.6)
        ax_d, ax_w = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.0, 1.25]})
        ax_d.fill_between(np.arange(1, n + 1), t["top1"], step="mid", color="C0", alpha=0.35)
        ax_d.plot(np.arange(1, n + 1), t["top1"], drawstyle="steps-mid", color="C0", lw=1)
        ax_d.axhline(overall, color="0.2", ls="--", lw=1, label=f"overall top-1 {overall:.3f}")
        ax_d.axhline(macro, color="0.2", ls=":", lw=1, label=f"mean per class {macro:.3f}")
        ax_d.set_xlim(1, n)
        ax_d.set_ylim(0, 1.02)
        ax_d.set_xlabel("class rank (worst → best)", fontsize=9)
        ax_d.set_ylabel("top-1 (OOF)", fontsize=9)
        ax_d.set_title(f"all {n} classes, sorted", fontsize=9)
        ax_d.legend(fontsize=8, loc="lower right")
        ax_d.grid(alpha=0.3)
        ax_d.tick_params(labelsize=8)
        bars(ax_w, t.head(worst), detail=True)
        ax_w.set_title(f"the {min(worst, n)} worst classes (→ most frequent wrong class)", fontsize=9)
    head = f"per-class top-1: overall {overall:.3f} (dashed), mean over classes {macro:.3f} (dotted)"
    fig.suptitle(f"{title}\n{head}" if title else head, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(cm: np.ndarray, names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted); counts written
    in the cells when there are few classes. ``cm`` is already cut to the classes to show."""
    from matplotlib.colors import PowerNorm

    k = len(names)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    side = min(max(4.6, 0.15 * k + 2.8), 9.5)
    fig = _figure(side + 1.0, side)
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1), interpolation="nearest")
    fs = 8 if k <= 20 else 6 if k <= 35 else 5
    labels = [_short(s, 16) for s in names]
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
    return _save(fig, path)


# --------------------------------------------------------------------------- compare


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
    fig = _figure(4.8 * len(metrics) + 1.8, (0.2 * k + 0.25) * n + 1.7)
    axes = np.atleast_1d(fig.subplots(1, len(metrics), sharey=True))
    width = 0.8 / k
    offsets = (np.arange(k) - (k - 1) / 2) * width
    colors = _model_colors(k)
    for ax, m in zip(axes, metrics):
        std = table.get(f"cv_{m}_std", pd.Series(np.nan, index=table.index)).fillna(0)
        everything = [*(table[f"cv_{m}"] - std), *(table[f"cv_{m}"] + std), *table.get(f"test_{m}", [])]
        lo, hi = score_limits(everything, right_room=0.14)
        _score_ticks(ax, lo, hi)
        for j, exp in enumerate(experiments):
            sub = table[table["experiment"] == exp].set_index("model")
            for i, model in enumerate(models):
                if model not in sub.index:
                    continue
                r = sub.loc[model]
                yy = i + offsets[j]
                cv, s = float(r[f"cv_{m}"]), float(r.get(f"cv_{m}_std", np.nan))
                test = float(r.get(f"test_{m}", np.nan))
                if np.isfinite(cv):
                    ax.errorbar(
                        cv,
                        yy,
                        xerr=s if np.isfinite(s) else None,
                        fmt="o",
                        ms=5.5,
                        color=colors[j],
                        elinewidth=1.6,
                        capsize=2,
                        zorder=4,
                    )
                if np.isfinite(test):
                    ax.plot(test, yy, "D", ms=5, mfc="white", mec=colors[j], mew=1.4, zorder=5)
                right = np.nanmax([cv + (s if np.isfinite(s) else 0), test])
                if np.isfinite(cv):
                    ax.annotate(
                        f"{cv:.3f}",
                        (right, yy),
                        xytext=(5, 0),
                        textcoords="offset points",
                        va="center",
                        fontsize=7,
                        color=colors[j],
                    )
        for i in range(1, n):
            ax.axhline(i - 0.5, color="0.85", lw=0.8)
        ax.set_title(f"CV {METRIC_LABELS.get(m, m)} (fold mean ± std; ◇ test)", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0].set_yticks(range(n), [_short(m, 28) for m in models])
    axes[0].set_ylim(n - 0.5, -0.5)
    from matplotlib.lines import Line2D

    legend = []
    for e, c in zip(experiments, colors):
        prec = "/".join(sorted(set(table.loc[table["experiment"] == e, "precision"].dropna().astype(str))))
        label = _short(e, 30) + (f" ({prec})" if prec else "")
        legend.append(Line2D([], [], ls="", marker="o", ms=6, color=c, label=label))
    legend.append(Line2D([], [], ls="", marker="D", ms=5, mfc="white", mec="0.3", label="test"))
    fig.legend(handles=legend, loc="lower center", ncol=min(len(legend), 5), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    rows_legend = math.ceil(len(legend) / 5)
    fig.tight_layout(rect=(0, (0.12 + 0.2 * rows_legend) / ((0.2 * k + 0.25) * n + 1.7), 1, 1))
    return _save(fig, path)
