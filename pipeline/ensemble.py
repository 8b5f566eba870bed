"""Ensembling, the Kaggle submission and the fold-wise leaderboard.

Reads prediction files only (``oof.npz``/``test.npz`` of finished runs; never models):

* per model, test probabilities are averaged over its folds, and its out-of-fold predictions
  are concatenated into one CV set;
* the ensemble averages the models' probabilities (optionally weighted);
* ``submissions/<name>.csv`` is in the Google Landmark Recognition format
  ``id,landmarks`` with ``landmarks = "<landmark_id> <confidence>"`` (original landmark ids);
* the leaderboard has one row per (model, fold) plus each model's and the ensemble's CV and
  test scores (top-1, top-5, GAP), as CSV, Markdown and PNG under ``runs/<experiment>/``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from common import schema
from common.errors import DataError
from common.io import write_csv
from pipeline.config import EnsembleConfig
from pipeline.leaderboard import run_info, write_leaderboard
from pipeline.metrics import score_all

log = logging.getLogger(__name__)


def load_preds(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"prediction file not found: {path}")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in ("ids", "probs", "labels")}


def finished_runs(runs_root: str | Path, experiment: str, models: list[str] | None = None) -> dict[str, list[Path]]:
    """``{model: [fold dirs with a DONE marker]}`` for an experiment."""
    root = Path(runs_root) / experiment
    if not root.is_dir():
        raise DataError(f"no runs for experiment '{experiment}' under {root} (run 'make train' first)")
    names = models or sorted(p.name for p in root.iterdir() if p.is_dir())
    out = {}
    for name in names:
        dirs = sorted(d for d in (root / name).glob("*") if (d / schema.RUN_DONE).is_file())
        if dirs:
            out[name] = dirs
        elif models:
            raise DataError(f"model '{name}' has no finished fold under {root / name}")
    if not out:
        raise DataError(f"no finished runs under {root}")
    return out


def _aligned(preds: list[dict], what: str) -> np.ndarray:
    ids = preds[0]["ids"]
    for p in preds[1:]:
        if not np.array_equal(p["ids"], ids):
            raise DataError(f"{what}: prediction files cover different ids (were they made from one prep?)")
    return ids


def combine(runs: dict[str, list[Path]], weights: list[float] | None = None) -> dict:
    """Per-model fold averages / OOF concatenation, and the weighted ensemble of the models."""
    per_model, rows = {}, []
    for name, dirs in runs.items():
        tests = [load_preds(d / schema.RUN_TEST) for d in dirs]
        ids = _aligned(tests, f"{name} test")
        oofs = [load_preds(d / schema.RUN_OOF) for d in dirs]
        for d, o in zip(dirs, oofs):
            rows.append(
                {
                    "model": name,
                    "fold": d.name.replace("fold", ""),
                    "n": len(o["labels"]),
                    **score_all(o["probs"], o["labels"]),
                }
            )
        oof = {k: np.concatenate([o[k] for o in oofs]) for k in ("ids", "probs", "labels")}
        per_model[name] = {
            "test_ids": ids,
            "test": np.mean([t["probs"] for t in tests], axis=0),
            "test_labels": tests[0]["labels"],
            "oof": oof,
            "folds": len(dirs),
        }
    names = list(per_model)
    w = np.asarray(weights if weights else [1.0] * len(names), dtype=float)
    w = w / w.sum()
    test_ids = _aligned([{"ids": per_model[n]["test_ids"]} for n in names], "ensemble test")
    ens_test = sum(wi * per_model[n]["test"] for wi, n in zip(w, names))
    # ensemble CV: only ids that are out-of-fold for every model (same folds -> all of them)
    common_ids = set.intersection(*(set(per_model[n]["oof"]["ids"]) for n in names))
    ens_oof = None
    if common_ids:
        keep = sorted(common_ids)
        parts = []
        for n in names:
            o = per_model[n]["oof"]
            pos = pd.Series(np.arange(len(o["ids"])), index=o["ids"])[keep].to_numpy()
            parts.append((o["probs"][pos], o["labels"][pos]))
        ens_oof = {"probs": sum(wi * p for wi, (p, _) in zip(w, parts)), "labels": parts[0][1]}
    return {
        "per_model": per_model,
        "fold_rows": rows,
        "test_ids": test_ids,
        "test": ens_test,
        "test_labels": per_model[names[0]]["test_labels"],
        "oof": ens_oof,
        "weights": dict(zip(names, w)),
    }


def leaderboard(result: dict) -> pd.DataFrame:
    rows = list(result["fold_rows"])
    for name, m in result["per_model"].items():
        rows.append(
            {
                "model": name,
                "fold": "cv",
                "n": len(m["oof"]["labels"]),
                **score_all(m["oof"]["probs"], m["oof"]["labels"]),
            }
        )
        rows.append(
            {"model": name, "fold": "test", "n": len(m["test_labels"]), **score_all(m["test"], m["test_labels"])}
        )
    if len(result["per_model"]) > 1:
        if result["oof"] is not None:
            o = result["oof"]
            rows.append(
                {"model": "ensemble", "fold": "cv", "n": len(o["labels"]), **score_all(o["probs"], o["labels"])}
            )
        rows.append(
            {
                "model": "ensemble",
                "fold": "test",
                "n": len(result["test_labels"]),
                **score_all(result["test"], result["test_labels"]),
            }
        )
    board = pd.DataFrame(rows)
    for col in ("top1", "top5", "gap"):
        if col not in board:
            board[col] = np.nan
    return board[["model", "fold", "n", "top1", "top5", "gap"]]


def submission(ids: np.ndarray, probs: np.ndarray, label_map: pd.DataFrame) -> pd.DataFrame:
    """Kaggle landmark format: one row per test id, ``"<landmark_id> <confidence>"``."""
    if probs.shape[1] != len(label_map):
        raise DataError(f"predictions have {probs.shape[1]} classes but the label map has {len(label_map)}")
    pred = probs.argmax(axis=1)
    conf = probs[np.arange(len(pred)), pred]
    lids = label_map["landmark_id"].to_numpy()[pred]
    return pd.DataFrame({"id": ids, "landmarks": [f"{lid} {c:.6f}" for lid, c in zip(lids, conf)]})


def run_ensemble(cfg: EnsembleConfig) -> dict[str, Path]:
    data_dir = Path(cfg.data_root) / cfg.dataset
    label_map = schema.read_label_map(data_dir)
    runs = finished_runs(cfg.runs_root, cfg.experiment, cfg.models or None)
    weights = cfg.weights or None
    if weights and list(runs) != list(cfg.models):
        raise DataError("ensemble: weights need every listed model to have finished folds")
    result = combine(runs, weights)
    board = leaderboard(result)
    out_root = Path(cfg.runs_root) / cfg.experiment
    sub_path = Path(cfg.submissions_dir) / f"{cfg.name}.csv"
    write_csv(sub_path, submission(result["test_ids"], result["test"], label_map))
    write_leaderboard(
        out_root, board.to_dict("records"), run_info(cfg.runs_root, cfg.experiment, list(runs)), cfg.experiment
    )
    log.info("wrote %s (%d rows) and %s", sub_path, len(result["test_ids"]), out_root / "leaderboard.md")
    return {"submission": sub_path, "leaderboard": out_root / "leaderboard.csv"}


def main(cfg: EnsembleConfig) -> int:
    """CLI face: ensemble, then where the outputs went."""
    out = run_ensemble(cfg)
    print(f"submission: {out['submission']}\nleaderboard: {out['leaderboard']}")
    return 0
