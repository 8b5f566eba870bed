"""The fold-wise leaderboard of an experiment: ``runs/<experiment>/leaderboard.{csv,md,png}``.

Input is the long table the ensemble stage scores: one row per (model, fold) on that fold's
out-of-fold predictions, plus per model (and per ensemble) a ``cv`` row (all OOF rows) and a
``test`` row. Columns ``model, fold, n, top1, top5, gap`` and any extra ones (e.g. ``weight``).
``run_info`` adds what the runs were (folds, epochs, precision, device ...), read from the run
folders. Reads files only; never imports the models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from common import schema
from common.io import write_csv, write_text
from pipeline.plots import plot_leaderboard

COLUMNS = ["model", "fold", "n", "top1", "top5", "gap"]


def run_info(runs_root: str | Path, experiment: str, models: list[str]) -> dict[str, dict]:
    """Per model: what its finished runs were (from config.yaml / summary.json of each fold)."""
    out: dict[str, dict] = {}
    for model in models:
        dirs = sorted(d for d in (Path(runs_root) / experiment / model).glob("*") if (d / schema.RUN_DONE).is_file())
        if not dirs:
            continue
        path = dirs[0] / schema.RUN_CONFIG
        cfg = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
        out[model] = {
            "folds": len(dirs),
            "epochs": cfg.get("epochs"),
            "precision": cfg.get("resolved_mixed_precision"),
            "device": cfg.get("device"),
        }
    return out


def to_markdown(board: pd.DataFrame) -> str:
    cols = list(board.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in board.itertuples(index=False):
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_leaderboard(
    out_root: str | Path, rows: list[dict], info: dict[str, dict], title: str, sort_by: str = "gap"
) -> dict[str, Path]:
    """Write leaderboard.csv/.md/.png under ``out_root``; returns their paths."""
    out_root = Path(out_root)
    board = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in board:
            board[col] = np.nan
    board = board[COLUMNS + [c for c in board.columns if c not in COLUMNS]]
    paths = {k: out_root / f"leaderboard.{k}" for k in ("csv", "md", "png")}
    write_csv(paths["csv"], board)
    write_text(paths["md"], f"# Leaderboard: {title}\n\n" + to_markdown(board))
    plot_leaderboard(board, paths["png"], f"{title}: top-1 per model and fold")
    return paths
