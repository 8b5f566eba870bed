"""``python -m pipeline compare EXP [EXP ...]``: models x experiments in one table and one figure.

"Does ResNeAt beat ResNeXt on this data?" in one command: for every model of every listed
experiment, the CV top-1/top-5/GAP (mean +- sample std over its folds; an ensemble, which has no
folds, shows its pooled OOF score), the pooled OOF scores, the test scores, params, MACs,
seconds per epoch, precision and device, in the shape of seed 001's Table 3 and seed 000's
tables. Outputs ``compare.{csv,md,png}`` in ``--out`` (default
``runs/compare/<exp1>_vs_<exp2>...``), written atomically.

Scores come from each experiment's leaderboard (``leaderboard_folds.csv``, written by the
ensemble stage; it holds the test and ensemble rows). A model whose finished folds differ from
the leaderboard's (trained after the last ensemble), or an experiment without a leaderboard, is
scored from its run folders (``oof.npz``): fold and CV scores, no test. Reads files only; never
imports the models.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import ConfigError, DataError, PipelineError, close_matches
from common.io import write_csv, write_text
from pipeline.report.leaderboard import (
    FOLDS_CSV,
    METRICS,
    finished_models,
    fold_rows_from_runs,
    is_fold,
    normalise_rows,
    run_info,
    summarize,
)
from pipeline.report.markdown import fmt, md_table, mean_std, sig
from pipeline.report.plots_compare import plot_compare
from pipeline.runs.predfile import output_errors
from pipeline.runs.scan import fold_label, is_done, run_dirs

log = logging.getLogger(__name__)

NAMES = {"gap": "GAP", "top1": "top-1", "top5": "top-5"}
TABLE_COLUMNS = (
    ["experiment", "model", "status", "source", "folds", "epochs", "precision", "device", "img_size"]
    + ["params_m", "macs_g", "sec_per_epoch"]
    + [f"cv_{m}{s}" for m in METRICS for s in ("", "_std")]
    + [f"oof_{m}" for m in METRICS]
    + [f"test_{m}" for m in METRICS]
)


def _experiment_root(runs_root: str | Path, experiment: str) -> Path:
    root = Path(runs_root) / experiment
    if not root.is_dir():
        there = [p.name for p in Path(runs_root).iterdir() if p.is_dir()] if Path(runs_root).is_dir() else []
        hint = close_matches(experiment, there) if there else f"{runs_root} holds no experiments"
        raise DataError(f"compare: experiment '{experiment}' not found under {runs_root} ({hint})")
    return root


def _leaderboard_rows(root: Path) -> pd.DataFrame | None:
    """The long rows of an experiment's last leaderboard, or None when it has none."""
    for name in (FOLDS_CSV, "leaderboard.csv"):  # leaderboard.csv: the long format of older runs
        path = root / name
        if path.is_file():
            try:
                df = pd.read_csv(path, dtype={"model": str, "fold": str})
            except (pd.errors.EmptyDataError, pd.errors.ParserError) as e:
                raise DataError(f"{path}: unreadable ({type(e).__name__}); rerun the ensemble stage") from None
            if {"model", "fold"} <= set(df.columns):
                return normalise_rows(df)
    return None


def experiment_rows(runs_root: str | Path, experiment: str) -> tuple[pd.DataFrame, dict[str, dict], dict[str, str]]:
    """``(long rows, run info, {model: source})`` of one experiment's finished models (and its
    ensemble rows). A :class:`DataError` naming the experiment when it is absent or unfinished."""
    root = _experiment_root(runs_root, experiment)
    models = finished_models(runs_root, experiment)
    if not models:
        raise DataError(f"compare: experiment '{experiment}' has no finished runs under {root}")
    info = run_info(runs_root, experiment, models)
    board = _leaderboard_rows(root)
    source, keep, fresh = {}, [], []
    for model in models:
        done = {fold_label(d) for d in run_dirs(root / model) if is_done(d)}
        rows = board[board["model"] == model] if board is not None else pd.DataFrame()
        listed = {f for f in rows["fold"] if is_fold(f)} if len(rows) else set()
        if listed == done:
            keep.append(rows)
            source[model] = "leaderboard"
        else:
            if board is not None:
                log.warning(
                    "%s: the leaderboard of '%s' is older than its runs (folds %s, runs %s): scored from the run "
                    "folders, no test score; rerun the ensemble stage",
                    model,
                    experiment,
                    sorted(listed),
                    sorted(done),
                )
            fresh.append(model)
            source[model] = "runs"
    if fresh:
        keep.append(normalise_rows(fold_rows_from_runs(runs_root, experiment, fresh)))
    if board is not None:
        ens = board[board["model"].str.startswith("ensemble")]
        keep.append(ens)
        for model in ens["model"].unique():
            source[model] = "leaderboard" if not fresh else "leaderboard (older than some runs)"
    rows = pd.concat([k for k in keep if len(k)], ignore_index=True)
    return rows, info, source


def compare_table(experiments: list[str], runs_root: str | Path, metric: str = "gap") -> pd.DataFrame:
    """``compare.csv``: one row per (experiment, model), models ordered by their best CV ``metric``."""
    if metric not in METRICS:
        raise ConfigError(f"compare: unknown metric '{metric}' (valid: {', '.join(METRICS)})")
    dup = sorted({e for e in experiments if experiments.count(e) > 1})
    if dup:
        raise ConfigError(f"compare: experiment(s) listed twice: {', '.join(dup)}")
    parts = []
    for exp in experiments:
        rows, info, source = experiment_rows(runs_root, exp)
        s = summarize(rows, info, metric)
        t = pd.DataFrame({"experiment": exp, "model": s["model"], "status": s["status"]})
        t["source"] = s["model"].map(source)
        for col in ("folds", "epochs", "precision", "device", "img_size", "params_m", "macs_g", "sec_per_epoch"):
            t[col] = s[col]
        for m in METRICS:
            t[f"cv_{m}"] = s[f"fold_{m}_mean"].fillna(s[f"cv_{m}"])  # ensembles: no folds, the pooled OOF
            t[f"cv_{m}_std"] = s[f"fold_{m}_std"]
            t[f"oof_{m}"] = s[f"cv_{m}"]
            t[f"test_{m}"] = s[f"test_{m}"]
        parts.append(t)
    table = pd.concat(parts, ignore_index=True)[TABLE_COLUMNS]
    best = table.groupby("model", sort=False)[f"cv_{metric}"].max()
    order = {m: i for i, m in enumerate(best.sort_values(ascending=False, kind="stable").index)}
    exp_pos = {e: i for i, e in enumerate(experiments)}
    key = np.lexsort((table["experiment"].map(exp_pos).to_numpy(), table["model"].map(order).to_numpy()))
    return table.iloc[key].reset_index(drop=True)


def pivot_markdown(table: pd.DataFrame, experiments: list[str], metric: str) -> str:
    """Model x experiment: CV ``metric`` (mean +- std), the best model per experiment in bold,
    and the change of every other experiment against the first."""
    models = list(dict.fromkeys(table["model"]))
    cell = {(r.model, r.experiment): r for r in table.itertuples(index=False)}
    header = ["model", *experiments] + [f"Δ {e} − {experiments[0]}" for e in experiments[1:]]
    body, values = [], {j + 1: [] for j in range(len(experiments))}
    for model in models:
        row = [model]
        for j, exp in enumerate(experiments):
            r = cell.get((model, exp))
            mean = getattr(r, f"cv_{metric}") if r is not None else np.nan
            row.append(mean_std(mean, getattr(r, f"cv_{metric}_std")) if r is not None and np.isfinite(mean) else "—")
            values[j + 1].append(mean)
        for j in range(1, len(experiments)):
            a, b = values[1][-1], values[j + 1][-1]
            row.append(f"{b - a:+.4f}" if np.isfinite(a) and np.isfinite(b) else "")
        body.append(row)
    return md_table(header, body, values)


def detail_markdown(table: pd.DataFrame, experiment: str, metric: str = "gap") -> str:
    """Seed 000's table shape for one experiment, best CV ``metric`` first: size and cost next to
    CV and test scores."""
    t = table[table["experiment"] == experiment].sort_values(f"cv_{metric}", ascending=False, kind="stable")
    header = ["model", "params (M)", "GMACs", "s/epoch", "precision", "folds", "epochs"]
    header += [f"CV {NAMES[m]}" for m in METRICS] + [f"test {NAMES[m]}" for m in METRICS]
    body = []
    for r in t.itertuples(index=False):
        d = r._asdict()
        cells = [d["model"], sig(d["params_m"]), sig(d["macs_g"]), sig(d["sec_per_epoch"])]
        cells += [fmt(d["precision"]), fmt(d["folds"], 0), fmt(d["epochs"], 0)]
        cells += [mean_std(d[f"cv_{m}"], d[f"cv_{m}_std"]) for m in METRICS]
        cells += [fmt(d[f"test_{m}"]) for m in METRICS]
        body.append(cells)
    best = {7 + i: t[f"cv_{m}"].tolist() for i, m in enumerate(METRICS)}
    best.update({10 + i: t[f"test_{m}"].tolist() for i, m in enumerate(METRICS)})
    return md_table(header, body, best)


def write_compare(table: pd.DataFrame, experiments: list[str], out: str | Path, metric: str) -> dict[str, Path]:
    """``compare.{csv,md,png}`` under ``out``; returns their paths."""
    out = Path(out)
    paths = {k: out / f"compare.{k}" for k in ("csv", "md", "png")}
    title = " vs ".join(experiments)
    notes = []
    stale = table[table["source"] != "leaderboard"]
    if len(stale):
        notes.append(
            "Scored from the run folders (no leaderboard, or one older than the runs; no test score): "
            + ", ".join(f"{r.model} ({r.experiment})" for r in stale.itertuples(index=False))
            + ".\n"
        )
    precisions = table.groupby("experiment")["precision"].apply(lambda s: set(s.dropna()))
    if len(set().union(*precisions)) > 1:
        notes.append(
            "Precision differs between runs ("
            + "; ".join(f"{e}: {'/'.join(sorted(p)) or '?'}" for e, p in precisions.items())
            + "): bf16 and fp32 runs do not give the same numbers.\n"
        )
    md = [
        f"# Compare: {title}\n",
        f"CV {NAMES[metric]}: mean ± sample std over folds (an ensemble has no folds: its pooled out-of-fold "
        "score). Best model per experiment in bold; Δ = change against the first experiment.\n",
        pivot_markdown(table, experiments, metric),
        *notes,
    ]
    for exp in experiments:
        md += [f"\n## {exp}\n", detail_markdown(table, exp, metric)]
    write_csv(paths["csv"], table)
    write_text(paths["md"], "\n".join(md))
    shown = [metric] + [m for m in ("gap", "top1") if m != metric][:1]
    plot_compare(table, experiments, paths["png"], f"{title}: models by best CV {NAMES[metric]}", shown)
    return paths


def default_out(runs_root: str | Path, experiments: list[str]) -> Path:
    """``runs/compare/<exp1>_vs_<exp2>...``: one folder per set of compared experiments."""
    return Path(runs_root) / "compare" / "_vs_".join(experiments)


def main(experiments: list[str], runs_root: str, out: str | None, metric: str) -> int:
    """CLI face: the compare table (printed) and where the files went."""
    folder = Path(out) if out else default_out(runs_root, experiments)
    if folder.exists() and not folder.is_dir():
        raise PipelineError(f"compare: --out {folder} is a file; give a folder for compare.csv/.md/.png")
    table = compare_table(list(experiments), runs_root, metric)
    with output_errors("compare"):
        paths = write_compare(table, list(experiments), folder, metric)
    print(pivot_markdown(table, list(experiments), metric), end="")
    print(f"compare: {paths['md']} ({paths['csv'].name}, {paths['png'].name})")
    return 0
