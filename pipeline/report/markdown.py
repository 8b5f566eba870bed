"""Leaderboard and compare tables as Markdown: cells, bold best values, the ~8-column summary."""

from __future__ import annotations

import numpy as np
import pandas as pd


def fmt(v: object, digits: int = 4) -> str:
    """A table cell: floats to ``digits`` decimals, blanks for None/NaN."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}f}" if digits or not float(v).is_integer() else str(int(v))
    if isinstance(v, dict):
        return ""
    return str(v)


def sig(v: object, digits: int = 3) -> str:
    """Sizes and costs (params, MACs, seconds) to ``digits`` significant digits, blank if unknown."""
    if v is None or not isinstance(v, (int, float, np.number)) or not np.isfinite(v):
        return ""
    return np.format_float_positional(float(v), precision=digits, unique=True, fractional=False, trim="-")


def mean_std(mean: float, std: float, digits: int = 4) -> str:
    """``mean ± std`` (just the mean with one fold), blank without a mean."""
    if mean is None or not np.isfinite(mean):
        return ""
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None and np.isfinite(std) else "")


def md_table(header: list[str], body: list[list[str]], bold_best: dict[int, list[float]] | None = None) -> str:
    """A Markdown table; ``bold_best`` = ``{column index: values}``: the best cell(s) in bold."""
    body = [list(r) for r in body]
    for j, vals in (bold_best or {}).items():
        v = np.asarray(vals, dtype=float)
        if np.isfinite(v).sum() > 1:
            best = np.nanmax(v)
            for i in np.flatnonzero(v == best):
                body[i][j] = f"**{body[i][j]}**"
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def to_markdown(board: pd.DataFrame) -> str:
    """Any table as Markdown (floats to 4 decimals; whole-number columns such as epochs as integers)."""
    whole = {
        c for c in board.columns
        if pd.api.types.is_numeric_dtype(board[c]) and board[c].dropna().map(lambda v: float(v).is_integer()).all()
        and c not in ("top1", "top5", "gap", "weight")
    }  # fmt: skip
    rows = [[fmt(v, 0 if c in whole else 4) for c, v in zip(board.columns, r)] for r in board.itertuples(index=False)]
    return md_table(list(map(str, board.columns)), rows)


def summary_markdown(summary: pd.DataFrame, metric: str = "gap") -> str:
    """The leaderboard table a Kaggler reads, in about 8 columns: the sort metric's CV, fold
    mean +- std and test, the other headline metric's CV and test, and what the runs were
    (params, MACs, speed, top-5 and the rest are in ``leaderboard.csv``)."""
    other = "top1" if metric == "gap" else "gap"
    name = {"gap": "GAP", "top1": "top-1", "top5": "top-5"}
    header = ["#", "model", f"CV {name[metric]}", f"{name[metric]} folds (mean ± std)", f"test {name[metric]}",
              f"CV {name[other]}", f"test {name[other]}", "runs"]  # fmt: skip
    status = "status" in summary and summary["status"].fillna("").astype(bool).any()
    body = []
    for i, r in enumerate(summary.itertuples(index=False)):
        d = r._asdict()
        runs = ", ".join(x for x in (_runs(d), fmt(d["precision"]), fmt(d["device"])) if x)
        folds = mean_std(d[f"fold_{metric}_mean"], d[f"fold_{metric}_std"])
        cells = [str(i + 1), d["model"], fmt(d[f"cv_{metric}"]), folds, fmt(d[f"test_{metric}"]),
                 fmt(d[f"cv_{other}"]), fmt(d[f"test_{other}"]), runs]  # fmt: skip
        body.append(cells + ([d["status"]] if status else []))
    best = {j: summary[c].tolist() for j, c in ((2, f"cv_{metric}"), (4, f"test_{metric}"), (5, f"cv_{other}"),
                                                 (6, f"test_{other}"))}  # fmt: skip
    return md_table(header + (["status"] if status else []), body, best)


def _runs(d: dict) -> str:
    """``3 folds x 12 epochs`` (what is known of it)."""
    folds, epochs = fmt(d["folds"], 0), fmt(d["epochs"], 0)
    return " x ".join(x for x in ((f"{folds} folds" if folds else ""), (f"{epochs} epochs" if epochs else "")) if x)


def train_longer(info: dict[str, dict]) -> list[str]:
    """``model: best epoch = the last (12) in fold(s) 0, 2`` per model whose best epoch was its
    last in some fold: it stopped while still improving."""
    lines = []
    for model, inf in info.items():
        epochs = inf.get("epochs")
        last = [f for f, e in (inf.get("best_epoch") or {}).items() if isinstance(epochs, int) and e == epochs > 1]
        if last:
            lines.append(f"{model}: best epoch = the last ({epochs}) in fold(s) {', '.join(last)}")
    return lines
