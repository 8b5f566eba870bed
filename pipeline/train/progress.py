"""The whole-run progress line of training: ``model fold k: epoch e/E, elapsed, ETA``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.train.build import Run


class Progress:
    """ETA over the whole run (all models x folds): ``model fold k: epoch e/E, elapsed, ETA``.

    ``plan`` is the epochs still to run per model; a model's remaining epochs are priced at its
    own measured seconds per epoch (a ResNet epoch costs many LeNet epochs), models not started
    yet at the mean of those measured so far.
    """

    def __init__(self, plan: dict[str, int] | int) -> None:
        self.left = dict(plan) if isinstance(plan, dict) else {"": int(plan)}
        self.total = max(1, sum(self.left.values()))
        self.done = 0  # epochs finished (or skipped) so far
        self.seconds: dict[str, list[float]] = {}
        self.start = time.time()
        self.last = self.start

    def _take(self, model: str, epochs: int) -> None:
        key = model if model in self.left else ""
        self.left[key] = max(0, self.left.get(key, 0) - epochs)
        self.done += epochs

    def skip(self, epochs: int, model: str = "") -> None:
        self._take(model, epochs)
        self.last = time.time()

    def line(self, run: Run, epoch: int) -> str:
        fold = "holdout" if run.fold < 0 else f"fold {run.fold}"
        return f"{run.model_name} {fold}: epoch {epoch}/{run.cfg.epochs}, " + self.eta(run)

    def eta(self, run: Run) -> str:
        """``elapsed .., ETA .. for the whole run (done/total epochs)``; call once per finished epoch."""
        now = time.time()
        self.seconds.setdefault(run.model_name, []).append(now - self.last)
        self.last = now
        self._take(run.model_name, 1)
        rates = {m: sum(v) / len(v) for m, v in self.seconds.items()}
        untimed = [m for m, n in self.left.items() if n and m and m not in rates]
        timed = sum(n * rates[m] for m, n in self.left.items() if m in rates)
        epochs = f"({self.done}/{self.total} epochs)"
        if untimed:  # another model's speed says nothing of these (a ResNet is not a LeNet): no guess
            return (f"elapsed {_hms(now - self.start)}, ETA unknown: {_hms(timed)} for what is timed, then "
                    f"{', '.join(untimed)} (not timed yet) {epochs}")  # fmt: skip
        return f"elapsed {_hms(now - self.start)}, ETA {_hms(timed)} for the whole run {epochs}"


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
