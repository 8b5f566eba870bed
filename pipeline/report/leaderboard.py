"""The leaderboard of an experiment: ``runs/<experiment>/leaderboard.{csv,md,png}`` and more.

Input is the long table the ensemble stage scores: one row per (model, fold) on that fold's
out-of-fold predictions, plus per model (and per ensemble variant, ``model`` starting with
``ensemble``) a ``cv`` row (all OOF rows pooled) and a ``test`` row (fold-averaged
predictions). Columns ``model, fold, n, top1, top5, gap`` and any extra ones (``weight``,
``variant`` ...), which are carried through. Other ``fold`` labels (e.g. ``cv_half``) become
columns ``<label>_<metric>``.

Outputs, all written atomically:

* ``leaderboard.csv``/``.md``: one row per model, sorted by CV ``sort_by`` (GAP by default):
  CV (all OOF), fold mean +- std (sample std, ddof=1; blank with one fold), test, folds,
  epochs, resolved precision and device, params, MACs, seconds per epoch. A CPU with native
  bf16 trains in bf16 under ``mixed_precision: auto``, one without in fp32: results differ,
  so the precision is shown. Models that ``info`` marks ``missing`` get a row saying so.
* ``leaderboard_folds.csv``: the per-(model, fold) rows as given (plus best epoch per fold).
* ``leaderboard.png``: the scores per model (:func:`pipeline.report.plots_leaderboard.plot_leaderboard`).
* ``curves.png``: the validation curves of every model (:func:`pipeline.report.plots_curves.plot_experiment_curves`).

``run_info`` says what the runs were, from ``summary.json``/``config.yaml`` of each fold.
Reads files only; never imports the models.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from common import schema
from common.errors import ConfigError, DataError
from common.io import write_csv, write_text
from pipeline.report.markdown import summary_markdown, to_markdown, train_longer
from pipeline.report.plots_curves import plot_experiment_curves
from pipeline.report.plots_leaderboard import plot_leaderboard
from pipeline.runs.scan import fold_label, is_done, model_folders, run_dirs

log = logging.getLogger(__name__)

COLUMNS = ["model", "fold", "n", "top1", "top5", "gap"]
METRICS = ("top1", "top5", "gap")
SPECIAL = ("cv", "test")  # fold labels of the pooled OOF and the test rows
FOLDS_CSV = "leaderboard_folds.csv"
PRECISION_NAMES = {"no": "fp32", "fp32": "fp32", "bf16": "bf16", "fp16": "fp16", "fp8": "fp8"}
# what run_info reports per model, in the leaderboard's column order
INFO_COLUMNS = ["folds", "epochs", "precision", "device", "img_size", "params_m", "macs_g", "sec_per_epoch"]


def is_fold(label: str) -> bool:
    """A per-fold row (a fold number or the holdout split), as opposed to cv/test/other summaries."""
    return label.lstrip("-").isdigit() or label == "holdout"


# --------------------------------------------------------------------------- run folders


def _read(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (ValueError, yaml.YAMLError) as e:
        raise DataError(f"{path}: unreadable ({type(e).__name__}); rerun the stage that wrote it") from None
    return data if isinstance(data, dict) else {}


def _one(values: list, fmt=str):
    """One value when the folds agree, ``a/b`` when they do not, None when none is known."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))]
    uniq = list(dict.fromkeys(vals))
    if not uniq:
        return None
    return uniq[0] if len(uniq) == 1 else "/".join(fmt(v) for v in uniq)


def _fold_info(run: Path) -> dict:
    """What one finished fold was: summary.json first, config.yaml for older runs."""
    s, c = _read(run / schema.RUN_SUMMARY), _read(run / schema.RUN_CONFIG)
    prec = s.get("precision", c.get("resolved_mixed_precision"))
    device = s.get("device", c.get("device"))
    procs = c.get("processes") or 1
    if device is not None and procs > 1:
        device = f"{device} x{procs}"
    epochs = s.get("epochs", c.get("epochs"))
    spe = s.get("seconds_per_epoch")
    if spe is None and s.get("seconds") is not None and epochs:
        spe = float(s["seconds"]) / float(epochs)
    return {
        "epochs": epochs,
        "precision": PRECISION_NAMES.get(str(prec), str(prec)) if prec is not None else None,
        "device": device,
        "img_size": s.get("img_size", c.get("img_size")),
        "params": s.get("params"),
        "macs": s.get("macs"),
        "seconds_per_epoch": spe,
        "best_epoch": s.get("best_epoch"),
        "checkpoint_metric": s.get("checkpoint_metric", c.get("checkpoint_metric")),
    }


def run_info(runs_root: str | Path, experiment: str, models: list[str]) -> dict[str, dict]:
    """Per model: what its finished runs were, or ``{"missing": why}`` when none finished.

    Keys: ``folds, epochs, precision, device, img_size, params_m, macs_g, sec_per_epoch``,
    ``unfinished`` (folds started but not done), ``best_epoch`` (``{fold: epoch}``),
    ``checkpoint_metric``. Values the runs do not record (older runs) are None.
    """
    out: dict[str, dict] = {}
    for model in models:
        model_dir = Path(runs_root) / experiment / model
        runs = run_dirs(model_dir)
        done = [d for d in runs if is_done(d)]
        if not done:
            started = len(runs)
            why = "no run folder" if not model_dir.is_dir() else "no finished fold"
            out[model] = {"missing": why + (f" ({started} started)" if started else "")}
            continue
        per = [_fold_info(d) for d in done]
        params, macs, spe = _one([p["params"] for p in per]), _one([p["macs"] for p in per]), None
        spes = [p["seconds_per_epoch"] for p in per if p["seconds_per_epoch"] is not None]
        if spes:
            spe = float(np.mean(spes))
        out[model] = {
            "folds": len(done),
            "epochs": _one([p["epochs"] for p in per]),
            "precision": _one([p["precision"] for p in per]),
            "device": _one([p["device"] for p in per]),
            "img_size": _one([p["img_size"] for p in per]),
            "params_m": params / 1e6 if isinstance(params, (int, float)) else None,
            "macs_g": macs / 1e9 if isinstance(macs, (int, float)) else None,
            "sec_per_epoch": spe,
            "checkpoint_metric": _one([p["checkpoint_metric"] for p in per]),
            "unfinished": len(runs) - len(done),
            "best_epoch": {fold_label(d.name): p["best_epoch"] for d, p in zip(done, per)},
        }
    return out


def finished_models(runs_root: str | Path, experiment: str) -> list[str]:
    """Model folders of an experiment with at least one finished fold (sorted)."""
    return [
        m
        for m in model_folders(runs_root, experiment)
        if any(is_done(d) for d in run_dirs(Path(runs_root) / experiment / m))
    ]


def fold_rows_from_runs(runs_root: str | Path, experiment: str, models: list[str]) -> list[dict]:
    """Leaderboard rows computed from the run folders alone: per finished fold its ``oof.npz``
    scores, and per model the ``cv`` row over all its OOF rows (no test row: fold-averaging
    the test predictions is the ensemble stage's job). A fold without ``oof.npz`` falls back
    to the scores of its ``summary.json``."""
    from pipeline.metrics import score_all
    from pipeline.runs.predfile import load_predictions
    from pipeline.scores import concat

    rows: list[dict] = []
    for model in models:
        probs, labels, folds = [], [], 0
        for d in run_dirs(Path(runs_root) / experiment / model):
            if not is_done(d):
                continue
            folds += 1
            if (d / schema.RUN_OOF).is_file():
                p = load_predictions(d / schema.RUN_OOF)
                probs.append(p["probs"])
                labels.append(p["labels"])
                scores = score_all(p["probs"], p["labels"])
                rows.append({"model": model, "fold": fold_label(d.name), "n": len(p["labels"]), **scores})
            else:
                s = _read(d / schema.RUN_SUMMARY)
                scores = {m: s.get(f"val_{m}") for m in METRICS}
                rows.append({"model": model, "fold": fold_label(d.name), "n": s.get("val_images"), **scores})
        if probs and len(probs) == folds:  # a CV over only some folds would not be the CV
            lab = np.concatenate(labels)
            rows.append({"model": model, "fold": "cv", "n": len(lab), **score_all(concat(probs), lab)})
    return rows


# --------------------------------------------------------------------------- tables


def normalise_rows(rows: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """The long table with the standard columns first and ``fold`` as a string label."""
    board = pd.DataFrame(rows).copy()
    for col in COLUMNS:
        if col not in board:
            board[col] = np.nan
    board["model"] = board["model"].astype(str)
    board["fold"] = [fold_label(v) for v in board["fold"]]
    for m in METRICS:
        board[m] = pd.to_numeric(board[m], errors="coerce")
    return board[COLUMNS + [c for c in board.columns if c not in COLUMNS]].reset_index(drop=True)


def _first(values: pd.Series):
    v = values.dropna()
    return v.iloc[0] if len(v) else None


def summarize(
    rows: list[dict] | pd.DataFrame, info: dict[str, dict] | None = None, sort_by: str = "gap"
) -> pd.DataFrame:
    """One row per model from the long rows: CV, fold mean +- std, test, run facts; sorted.

    ``sort_by`` is a metric (``gap``, ``top1``, ``top5``: the CV value, falling back to the fold
    mean and then test when a model has no CV row) or any column of the result (descending).
    """
    board = normalise_rows(rows) if len(rows) else pd.DataFrame(columns=COLUMNS)
    info = info or {}
    extras = [c for c in board.columns if c not in COLUMNS]
    others = list(dict.fromkeys(f for f in board["fold"] if not is_fold(f) and f not in SPECIAL))
    models = list(dict.fromkeys([*board["model"], *info]))
    out = []
    for model in models:
        rs = board[board["model"] == model]
        fr = rs[rs["fold"].map(is_fold).astype(bool)]
        inf = info.get(model, {})
        row: dict = {"model": model}
        status = []
        if inf.get("missing"):
            status.append(f"missing: {inf['missing']}")
        elif rs.empty:
            status.append("no scores (run the ensemble stage)")
        if inf.get("unfinished"):
            status.append(f"{inf['unfinished']} fold(s) unfinished")
        row["status"] = "; ".join(status)
        row["folds"] = len(fr) if len(fr) else inf.get("folds")
        for key in INFO_COLUMNS[1:]:
            row[key] = inf.get(key)
        for label in SPECIAL:
            r = rs[rs["fold"] == label]
            row[f"n_{label}"] = _first(r["n"]) if len(r) else None
            for m in METRICS:
                row[f"{label}_{m}"] = float(r[m].iloc[0]) if len(r) else np.nan
        for m in METRICS:
            v = fr[m].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            row[f"fold_{m}_mean"] = float(v.mean()) if len(v) else np.nan
            row[f"fold_{m}_std"] = float(v.std(ddof=1)) if len(v) > 1 else np.nan
        for label in others:
            r = rs[rs["fold"] == label]
            for m in METRICS:
                row[f"{label}_{m}"] = float(r[m].iloc[0]) if len(r) else np.nan
        cv_rows = rs[rs["fold"] == "cv"]
        for col in extras:
            row[col] = _first(cv_rows[col]) if len(cv_rows) and _first(cv_rows[col]) is not None else _first(rs[col])
        out.append(row)
    summary = pd.DataFrame(out)
    for col in ("params_m", "macs_g", "sec_per_epoch"):
        summary[col] = pd.to_numeric(summary[col], errors="coerce")
    return sort_summary(summary, sort_by)


def sort_key(summary: pd.DataFrame, sort_by: str) -> pd.Series:
    """The value a leaderboard is sorted by (higher is better)."""
    if sort_by in METRICS:
        key = summary[f"cv_{sort_by}"].copy()
        for col in (f"fold_{sort_by}_mean", f"test_{sort_by}"):
            key = key.fillna(summary[col])
        return key
    if sort_by in summary.columns:
        return pd.to_numeric(summary[sort_by], errors="coerce")
    valid = list(METRICS) + [c for c in summary.columns if c.startswith(("cv_", "test_", "fold_"))]
    raise ConfigError(f"leaderboard: cannot sort by '{sort_by}' (valid: {', '.join(valid)})")


def sort_summary(summary: pd.DataFrame, sort_by: str) -> pd.DataFrame:
    """Best first by :func:`sort_key`; models without any score (missing) last, ties in input order."""
    key = sort_key(summary, sort_by)
    order = np.lexsort((np.arange(len(key)), -key.fillna(-np.inf).to_numpy(dtype=float)))
    return summary.iloc[order].reset_index(drop=True)


# --------------------------------------------------------------------------- writer


def write_leaderboard(
    out_root: str | Path, rows: list[dict], info: dict[str, dict], title: str, sort_by: str = "gap"
) -> dict[str, Path]:
    """Write the leaderboard files under ``out_root`` (``runs/<experiment>``); returns their paths
    (keys ``csv, md, png, folds`` and ``curves`` when the runs have metrics)."""
    out_root = Path(out_root)
    if not len(rows) and not info:
        raise DataError(f"leaderboard {title}: no scores and no models to show")
    board = normalise_rows(rows) if len(rows) else pd.DataFrame(columns=COLUMNS)
    extras = [c for c in board.columns if c not in COLUMNS]
    summary = summarize(board, info, sort_by)
    folds = board[board["fold"].map(is_fold).astype(bool)]
    best_epochs = {(m, f): e for m, inf in info.items() for f, e in (inf.get("best_epoch") or {}).items()}
    if best_epochs and "best_epoch" not in board:
        board["best_epoch"] = [best_epochs.get((m, f)) for m, f in zip(board["model"], board["fold"])]
    paths = {k: out_root / f"leaderboard.{k}" for k in ("csv", "md", "png")}
    paths["folds"] = out_root / FOLDS_CSV
    csv = summary.drop(columns=[c for c in summary.columns if summary[c].map(lambda v: isinstance(v, dict)).any()])
    write_csv(paths["csv"], csv)
    write_csv(paths["folds"], board)
    metric = sort_by if sort_by in METRICS else "gap"
    pretty = {"gap": "GAP", "top1": "top-1", "top5": "top-5"}
    longer = train_longer(info)
    for line in longer:
        log.warning("%s: the run stopped while still improving, train longer", line)
    md = [
        f"# Leaderboard: {title}\n",
        f"Sorted by CV {pretty.get(metric, sort_by) if sort_by in METRICS else sort_by}. CV = all out-of-fold rows "
        "pooled; folds = mean ± sample std over folds; test = fold-averaged predictions on the test split. "
        f"Best CV and test values in bold; top-5, params, MACs and speed in `leaderboard.csv`.\n",
        summary_markdown(summary, metric),
        *([f"\n**Train longer**: these stopped while still improving: {'; '.join(longer)}.\n"] if longer else []),
    ]
    if len(board):
        rows_md = board[[c for c in (*COLUMNS, "best_epoch", *extras) if c in board]].sort_values(
            "model", kind="stable"
        )
        md += [f"\n## Every row (per fold, CV and test; all columns in `{FOLDS_CSV}`)\n", to_markdown(rows_md)]
    write_text(paths["md"], "\n".join(md))
    shown = [metric] + [m for m in ("gap", "top1") if m != metric][:1]
    plot_leaderboard(summary, folds, paths["png"], f"{title}: sorted by CV {pretty[metric]}", shown)
    curves = plot_experiment_curves(out_root.parent, out_root.name, out_root / schema.RUN_CURVES)
    if curves is not None:
        paths["curves"] = curves
    log.info(
        "leaderboard of %s: %d models, best %s", title, len(summary), summary["model"].iloc[0] if len(summary) else "-"
    )
    return paths
