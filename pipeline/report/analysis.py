"""Per-run error analysis on out-of-fold predictions: which classes fail, and what they become.

Pure numpy on the prediction arrays (``probs`` (N, C), ``labels`` (N,); rows with a label < 0,
non-landmarks or landmarks outside the label map, are left out: they have no class to be right
about). :func:`write_run_analysis` writes, into a run folder:

* ``per_class.csv``: ``label, landmark_id, name, n, top1, top5, confused_with,
  confused_landmark_id, confused_n`` (the class its rows are most often predicted as), worst
  classes first;
* ``per_class.png``: sorted per-class top-1, the worst classes named (seed 002's per-class
  accuracy, for any number of classes);
* ``confusion.png``: the row-normalised confusion matrix, all classes up to ``MAX_CONFUSION``,
  else the ``MAX_CONFUSION`` classes with the most errors (said in the title).

The error counts are sparse (only the (true, predicted) pairs that occur), so 81k classes cost
what their rows cost, not 81k x 81k.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError
from common.io import write_csv
from pipeline.metrics import label_rank, top1
from pipeline.report.plots_classes import plot_confusion, plot_per_class
from pipeline.scores import TopK

log = logging.getLogger(__name__)

PER_CLASS_CSV = "per_class.csv"
PER_CLASS_PNG = "per_class.png"
CONFUSION_PNG = "confusion.png"
MAX_CONFUSION = 50  # classes shown in confusion.png


def _check(probs, labels: np.ndarray, num_classes: int) -> tuple:
    """The scores (dense (N, C) or :class:`~pipeline.scores.TopK`) and int64 labels, checked."""
    labels = np.asarray(labels)
    if not isinstance(probs, TopK):
        probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise DataError(f"analysis: probs {probs.shape} and labels {labels.shape} do not match (want (N, C) and (N,))")
    if probs.shape[1] != num_classes:
        raise DataError(f"analysis: predictions have {probs.shape[1]} classes, the label map {num_classes}")
    if labels.size and labels.max() >= num_classes:
        raise DataError(f"analysis: label {int(labels.max())} is outside 0..{num_classes - 1}")
    return probs, labels.astype(np.int64)


def predictions(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(true, predicted)`` class of every row with a known label (argmax; ties: lowest index)."""
    probs, labels = _check(probs, labels, num_classes)
    known = labels >= 0
    return labels[known], top1(probs[known])[0]


def per_class_accuracy(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Top-1 accuracy of each class, shape (C,); NaN for a class without rows."""
    true, pred = predictions(probs, labels, num_classes)
    n = np.bincount(true, minlength=num_classes)
    hit = np.bincount(true[pred == true], minlength=num_classes)
    return np.divide(hit, n, out=np.full(num_classes, np.nan), where=n > 0)


def per_class_topk(probs: np.ndarray, labels: np.ndarray, num_classes: int, k: int = 5) -> np.ndarray:
    """Top-k accuracy of each class (the label among the k highest scores), NaN without rows."""
    probs, labels = _check(probs, labels, num_classes)
    known = labels >= 0
    p, true = probs[known], labels[known]
    k = min(k, num_classes)
    rank = label_rank(p, true)  # the rank pipeline.metrics scores with (ties: lower index first)
    n = np.bincount(true, minlength=num_classes)
    hit = np.bincount(true[rank < k], minlength=num_classes)
    return np.divide(hit, n, out=np.full(num_classes, np.nan), where=n > 0)


def confusion_matrix(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (C, C): row = true class, column = predicted (argmax). Dense: for C up to a few
    thousand; :func:`confusion_pairs` is the sparse form."""
    true, pred = predictions(probs, labels, num_classes)
    return np.bincount(true * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def confusion_pairs(true: np.ndarray, pred: np.ndarray) -> pd.DataFrame:
    """The wrong (true, predicted) pairs that occur with their counts, most frequent first."""
    wrong = true != pred
    df = pd.DataFrame({"true": true[wrong], "pred": pred[wrong]})
    counts = df.value_counts().rename("count").reset_index()
    return counts.sort_values(["count", "true", "pred"], ascending=[False, True, True], ignore_index=True)


def class_names(label_map: pd.DataFrame) -> list[str]:
    """What a class is called in reports: its name, else its landmark id."""
    names = label_map["name"] if "name" in label_map else pd.Series([None] * len(label_map))
    return [str(n) if isinstance(n, str) and n.strip() else str(lid) for n, lid in zip(names, label_map["landmark_id"])]


def per_class_table(probs: np.ndarray, labels: np.ndarray, label_map: pd.DataFrame) -> pd.DataFrame:
    """``per_class.csv``'s rows (every class of the label map), worst top-1 first."""
    c = len(label_map)
    true, pred = predictions(probs, labels, c)
    names = class_names(label_map)
    lids = label_map["landmark_id"].to_numpy()
    pairs = confusion_pairs(true, pred)
    top = pairs.drop_duplicates("true")  # sorted by count: the first row per true class is its worst
    conf = dict(zip(top["true"].tolist(), top["pred"].tolist()))
    conf_n = dict(zip(top["true"].tolist(), top["count"].tolist()))
    table = pd.DataFrame(
        {
            "label": np.arange(c),
            "landmark_id": lids,
            "name": label_map["name"].to_numpy() if "name" in label_map else "",
            "display": names,
            "n": np.bincount(true, minlength=c),
            "top1": per_class_accuracy(probs, labels, c),
            "top5": per_class_topk(probs, labels, c, 5),
        }
    )
    table["confused_with"] = [names[conf[c_]] if c_ in conf else "" for c_ in range(c)]
    table["confused_landmark_id"] = pd.array([lids[conf[c_]] if c_ in conf else None for c_ in range(c)], "Int64")
    table["confused_n"] = [conf_n.get(c_, 0) for c_ in range(c)]
    return table.sort_values(
        ["top1", "n", "label"], ascending=[True, False, True], na_position="last", ignore_index=True
    )


def confusion_classes(true: np.ndarray, pred: np.ndarray, num_classes: int, limit: int = MAX_CONFUSION) -> np.ndarray:
    """The classes a confusion figure shows, most errors first (as true or as predicted class;
    ties by size, then label): all of them up to ``limit``, else the ``limit`` most confused."""
    wrong = true != pred
    errors = np.bincount(true[wrong], minlength=num_classes) + np.bincount(pred[wrong], minlength=num_classes)
    size = np.bincount(true, minlength=num_classes)
    order = np.lexsort((np.arange(num_classes), -size, -errors))
    return order[:limit]


def write_run_analysis(
    run_dir: str | Path, probs: np.ndarray, labels: np.ndarray, label_map: pd.DataFrame
) -> list[Path]:
    """Write ``per_class.csv``, ``per_class.png`` and ``confusion.png`` of one run's OOF
    predictions into ``run_dir``; returns their paths. Called once per finished fold."""
    run_dir = Path(run_dir)
    c = len(label_map)
    table = per_class_table(probs, labels, label_map)
    true, pred = predictions(probs, labels, c)
    title = f"{run_dir.parent.parent.name}: {run_dir.parent.name}/{run_dir.name}"
    left_out = int((np.asarray(labels) < 0).sum())
    note = f", {left_out} rows without a class left out" if left_out else ""
    paths = [run_dir / PER_CLASS_CSV, run_dir / PER_CLASS_PNG, run_dir / CONFUSION_PNG]
    write_csv(paths[0], table.drop(columns="display"))
    plot_per_class(table, paths[1], f"{title}: OOF, {len(true)} rows{note}")
    keep = confusion_classes(true, pred, c)
    pos = np.full(c, -1)
    pos[keep] = np.arange(len(keep))
    inside = (pos[true] >= 0) & (pos[pred] >= 0)
    k = len(keep)
    cm = np.bincount(pos[true[inside]] * k + pos[pred[inside]], minlength=k * k).reshape(k, k)
    names = np.asarray(class_names(label_map), dtype=object)[keep]
    which = f"all {c} classes" if k == c else f"the {k} classes with the most errors of {c}"
    top1 = float((true == pred).mean()) if len(true) else float("nan")
    head = f"{title}: confusion (rows: true class)\n{which}, top-1 {top1:.3f}{note}"
    plot_confusion(cm, list(names), paths[2], head)
    log.info("%s: per-class analysis written (worst class %s)", run_dir, table["display"].iloc[0] if c else "-")
    return paths
