"""What every report figure shares: the bare figure, the atomic PNG write, the score axes.

Every figure is built on a bare :class:`matplotlib.figure.Figure` (no pyplot: no global state,
nothing to close, a little faster, safe in any thread) and written atomically. Figures are
small (dpi 90) so committed copies stay light. Axes of scores are zoomed on the data, not
fixed to 0-1: the differences between models are what the figure is for; they never run past
1.0, the best a score can be.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common.io import atomic_write

DPI = 90
METRIC_LABELS = {"top1": "top-1", "top5": "top-5", "gap": "GAP", "loss": "loss"}
# marks shared by the leaderboard and compare figures
FOLD_STYLE = dict(marker="o", s=14, color="0.55", alpha=0.8, linewidths=0, zorder=2)
CV_STYLE = dict(marker="o", s=55, color="C0", edgecolors="white", linewidths=0.8, zorder=4)
TEST_STYLE = dict(marker="D", s=38, color="C3", edgecolors="white", linewidths=0.6, zorder=5)


def new_figure(width: float, height: float):
    """A bare figure of ``width`` x ``height`` inches at :data:`DPI`."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


def save(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically (a reader never sees half a file)."""
    path = Path(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)
    return path


def short(text: object, width: int = 22) -> str:
    """``text`` cut to ``width`` characters with an ellipsis (long model names on tick labels)."""
    s = str(text)
    return s if len(s) <= width else s[: width - 1] + "…"


def finite(values) -> np.ndarray:
    """The finite numbers among ``values`` (strings, None and NaN dropped)."""
    a = np.asarray(pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce"), dtype=float)
    return a[np.isfinite(a)]


def score_limits(
    values, pad_frac: float = 0.08, min_span: float = 0.04, right_room: float = 0.0
) -> tuple[float, float]:
    """Axis limits zoomed on ``values`` (scores in [0, 1]): the differences are what matter.

    The span is at least ``min_span`` (a single value or identical folds still get an axis);
    ``right_room`` adds that fraction of the span on the right for value labels.
    """
    v = finite(values)
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


def score_ticks(ax, lo: float, hi: float) -> None:
    """Score ticks only where scores can be (the room on the right is for value labels)."""
    from matplotlib.ticker import MaxNLocator

    ticks = MaxNLocator(nbins=6).tick_values(lo, hi)
    ax.set_xticks([t for t in ticks if lo <= t <= min(hi, 1.0) + 1e-9])
    ax.set_xlim(lo, hi)


def epoch_axis(ax, epochs=None) -> None:
    """Integer epoch ticks; a little room either side (one epoch would otherwise get 0.95-1.05)."""
    from matplotlib.ticker import MaxNLocator

    e = finite([] if epochs is None else epochs)
    if e.size:
        pad = max(0.5, 0.03 * (e.max() - e.min()))
        ax.set_xlim(e.min() - pad, e.max() + pad)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8, min_n_ticks=1))
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


def series_colors(n: int) -> list:
    """``n`` distinguishable colours (tab10, or tab20 past 10)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
