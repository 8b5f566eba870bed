"""PNG figures a Kaggler looks at, one module per kind (this module names them all, for callers
that want one import):

* :func:`plot_curves`: one run, every epoch (called by the trainer; ~0.2 s).
* :func:`plot_experiment_curves`: the validation curves of every model of an experiment.
* :func:`plot_leaderboard`: CV, fold and test scores per model, sorted.
* :func:`plot_per_class`, :func:`plot_confusion`: one run's out-of-fold errors.
* :func:`plot_compare`: models x experiments.

What they share (bare figures, atomic writes, zoomed score axes) is in :mod:`plots_base`.
"""

from __future__ import annotations

from pipeline.report.plots_base import score_limits
from pipeline.report.plots_classes import plot_confusion, plot_per_class
from pipeline.report.plots_compare import plot_compare
from pipeline.report.plots_curves import plot_curves, plot_experiment_curves, read_histories
from pipeline.report.plots_leaderboard import plot_leaderboard

__all__ = [
    "plot_compare",
    "plot_confusion",
    "plot_curves",
    "plot_experiment_curves",
    "plot_leaderboard",
    "plot_per_class",
    "read_histories",
    "score_limits",
]
