"""Run folders: the one place that finds them, names their folds and marks them finished.

A run folder is ``<runs_root>/<experiment>/<model>/<fold dir>/`` with ``<fold dir>`` either
``fold<k>`` (a fold of the fold file) or ``holdout`` (the train manifest against the val
manifest, ``fold=-1``). Anything else below a model folder is not a run. A run is finished when
its ``DONE`` marker exists; the marker is written last and atomically (:func:`mark_done`), so a
killed run is never taken for a finished one.

Every stage that asks "which runs are finished?" asks :func:`scan` (predict, embed, export,
ensemble, submit, leaderboard, compare, the curve figures): they cannot disagree.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common import schema
from common.errors import DataError
from common.io import write_text

log = logging.getLogger(__name__)

HOLDOUT = "holdout"
_FOLD_RE = re.compile(r"fold(\d+)")


def fold_dir_name(fold: int) -> str:
    """``3`` -> ``fold3``; ``-1`` (the holdout recipe) -> ``holdout``."""
    return HOLDOUT if fold < 0 else f"fold{fold}"


def fold_of(name: str | Path) -> int | None:
    """``fold3`` -> 3, ``holdout`` -> -1, anything else -> None (not a run folder)."""
    name = Path(name).name
    if name == HOLDOUT:
        return -1
    m = _FOLD_RE.fullmatch(name)
    return int(m.group(1)) if m else None


def fold_label(value: object) -> str:
    """The fold as tables show it: ``fold3`` (a path or name), ``3``, ``3.0`` and ``"3"`` are all
    ``"3"``; ``holdout``, ``cv``, ``test`` stay as they are."""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer():
        return str(int(value))
    name = value.name if isinstance(value, Path) else str(value)
    return name.removeprefix("fold") if _FOLD_RE.fullmatch(name) else name


def is_done(run_dir: str | Path) -> bool:
    return (Path(run_dir) / schema.RUN_DONE).is_file()


def mark_done(run_dir: str | Path) -> None:
    """Write the ``DONE`` marker (atomically: a killed write leaves no marker)."""
    write_text(Path(run_dir) / schema.RUN_DONE, "ok\n")


def clear_done(run_dir: str | Path) -> None:
    (Path(run_dir) / schema.RUN_DONE).unlink(missing_ok=True)


def run_dirs(model_dir: str | Path) -> list[Path]:
    """The run folders (``fold<k>``, ``holdout``) of one model folder, finished or not, by fold."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    dirs = [d for d in model_dir.iterdir() if d.is_dir() and fold_of(d) is not None]
    return sorted(dirs, key=lambda d: (fold_of(d) < 0, fold_of(d)))


@dataclass
class Scan:
    """What :func:`scan` found: finished and unfinished run folders per model, by fold."""

    root: Path
    finished: dict[str, list[Path]] = field(default_factory=dict)
    unfinished: dict[str, list[Path]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # model -> why it has no finished run

    @property
    def models(self) -> list[str]:
        return list(self.finished)

    def all_finished(self) -> list[Path]:
        return [d for dirs in self.finished.values() for d in dirs]


def model_folders(runs_root: str | Path, experiment: str) -> list[str]:
    """Model folders of an experiment that hold at least one run folder (sorted)."""
    root = Path(runs_root) / experiment
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and run_dirs(p))


def scan(
    runs_root: str | Path,
    experiment: str,
    models: list[str] | None = None,
    folds: list[int] | None = None,
    require: bool = True,
) -> Scan:
    """Finished run folders of an experiment, by model then fold.

    ``models`` names the models wanted (in that order); a model named there without a finished
    run is an error. Without ``models``, every model folder is scanned and one without a finished
    run is logged and listed in ``missing``. ``folds`` keeps those folds only. ``require``: an
    experiment without any finished run is an error (else an empty scan).
    """
    root = Path(runs_root) / experiment
    if not root.is_dir():
        if not require:
            return Scan(root)
        raise DataError(f"no runs of experiment '{experiment}' in {runs_root} (train first: {root} not found)")
    out = Scan(root)
    for name in list(models) if models else model_folders(runs_root, experiment):
        dirs = run_dirs(schema.model_dir(runs_root, experiment, name))
        if folds:
            dirs = [d for d in dirs if fold_of(d) in set(folds)]
        done = [d for d in dirs if is_done(d)]
        out.unfinished[name] = [d for d in dirs if not is_done(d)]
        if done:
            out.finished[name] = done
            continue
        if models and require:
            want = f" in folds {list(folds)}" if folds else ""
            present = model_folders(runs_root, experiment)
            there = ", ".join(present) or "none"
            raise DataError(f"{root}: model '{name}' has no finished fold{want} (runs of: {there})")
        why = "no finished fold" if dirs else "no run folder"
        out.missing[name] = why + (f" ({len(dirs)} started, none has {schema.RUN_DONE})" if dirs else "")
        log.warning("%s: model '%s': %s", root, name, out.missing[name])
    if require and not out.finished:
        want = f" for models {list(models)}" if models else ""
        want += f" in folds {list(folds)}" if folds else ""
        raise DataError(f"{root}: no finished runs{want} (a finished fold has a {schema.RUN_DONE} marker)")
    return out


def finished_runs(
    runs_root: str | Path, experiment: str, models: list[str] | None = None, folds: list[int] | None = None
) -> list[Path]:
    """Finished run folders of an experiment as one list (by model, then fold); see :func:`scan`."""
    found = scan(runs_root, experiment, models, folds)
    for name, dirs in found.unfinished.items():
        if dirs and name in found.finished:
            log.warning("%s: skipping unfinished run(s) %s (no %s marker)", found.root / name,
                        [d.name for d in dirs], schema.RUN_DONE)
    return found.all_finished()
