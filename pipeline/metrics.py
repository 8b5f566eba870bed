"""Metrics as pure functions on numpy arrays (no torch): top-k accuracy, GAP, log-loss.

GAP is Kaggle's Global Average Precision (Google Landmark Recognition). Each query has at most
one answer (a class and a confidence); the answers are sorted by confidence, descending, across
all queries, and

    GAP = 1/M * sum_i P(i) * rel(i)

where P(i) is the precision over the first i answers, rel(i) is 1 when answer i is correct.
How each kind of row counts (the label values of :mod:`common.schema`):

* label >= 0 (a class of the label map): in M; right when the answer is that class;
* ``OTHER_LANDMARK`` (-2, a landmark outside the label map): in M, never right;
* ``NON_LANDMARK`` (-1): not in M; an answer on it is a wrong answer at its rank;
* ``UNLABELLED`` (-3, no ground truth): left out of every score (no rank, not in M);
* a query WITHOUT an answer (an empty ``landmarks`` cell): ``pred < 0`` (:data:`NO_ANSWER`) or
  ``conf`` NaN. It takes no rank and is not counted wrong (it still counts in M when it has a
  landmark).

Ties in confidence keep the input order (a stable sort), so the score is reproducible.

Consequence worth knowing: P(i) depends only on the answers ranked above i, so removing the
lowest-ranked answers (a confidence threshold) never raises GAP; what helps against
non-landmarks is moving their answers DOWN the ranking (see :mod:`pipeline.ensemble.postprocess`).
"""

from __future__ import annotations

import numpy as np

from common.schema import OTHER_LANDMARK, UNLABELLED
from pipeline.scores import TopK, label_rank_topk

NO_ANSWER = -1  # ``pred`` of a query left without an answer (its ``conf`` is NaN)
_CHUNK = 4096  # rows per block in the row-wise helpers: bounded temporaries for 100k x 1000 arrays


def label_rank(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """0-based rank of each row's label among its scores (ties: lower class index first).

    Equal to the label's position in a stable descending sort, computed block-wise without
    sorting (no (N, C) index array: 100k x 1000 would be 800 MB). For :class:`TopK` scores, a
    label outside the row's candidates has rank C (a miss).
    """
    if isinstance(probs, TopK):
        return label_rank_topk(probs, labels)
    probs, labels = np.asarray(probs), np.asarray(labels)
    out = np.empty(len(labels), dtype=np.int64)
    cols = np.arange(probs.shape[1])
    for s in range(0, len(labels), _CHUNK):
        p, y = probs[s : s + _CHUNK], labels[s : s + _CHUNK]
        py = p[np.arange(len(y)), y][:, None]
        out[s : s + _CHUNK] = ((p > py) | ((p == py) & (cols[None, :] < y[:, None]))).sum(axis=1)
    return out


def topk_accuracy(probs: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose label is among the ``k`` highest scores (ties: lower index first)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    return float((label_rank(probs, labels) < k).mean())


def top1(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The answer of each row: (argmax class, its score as float64)."""
    if isinstance(probs, TopK):  # sorted: the first candidate is the argmax
        return probs.idx[:, 0].astype(np.int64), probs.val[:, 0].astype(np.float64)
    probs = np.asarray(probs)
    pred = probs.argmax(axis=1)
    return pred, probs[np.arange(len(pred)), pred].astype(np.float64)


def gap(pred: np.ndarray, conf: np.ndarray, labels: np.ndarray) -> float:
    """Global Average Precision of at most one answer per query (see the module docstring).

    NaN when no scored row has a landmark (M = 0).
    """
    pred, conf, labels = np.asarray(pred), np.asarray(conf, dtype=float), np.asarray(labels)
    if not len(pred) == len(conf) == len(labels):
        raise ValueError(f"gap: {len(pred)} predictions, {len(conf)} confidences, {len(labels)} labels")
    scored = labels != UNLABELLED
    pred, conf, labels = pred[scored], conf[scored], labels[scored]
    m = int(((labels >= 0) | (labels == OTHER_LANDMARK)).sum())
    if m == 0:
        return float("nan")
    answered = (pred >= 0) & ~np.isnan(conf)
    pred, conf, labels = pred[answered], conf[answered], labels[answered]
    order = np.argsort(-conf, kind="stable")
    correct = (pred[order] == labels[order]) & (labels[order] >= 0)
    precision = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    return float((precision * correct).sum() / m)


def gap_from_probs(probs: np.ndarray, labels: np.ndarray) -> float:
    """GAP of the top-1 answer of every row."""
    return gap(*top1(probs), labels)


def log_loss(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float:
    probs = np.asarray(probs, dtype=float)
    p = np.clip(probs[np.arange(len(labels)), np.asarray(labels)], eps, 1.0)
    return float(-np.log(p).mean())


def score_all(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """top1/top5 over the rows with a class label (>= 0), GAP over every labelled row.

    ``{}`` when no row has a class label and GAP is undefined (no landmark at all).
    """
    labels = np.asarray(labels)
    known = labels >= 0
    g = gap_from_probs(probs, labels)
    if not known.any() and np.isnan(g):
        return {}
    if not known.any():
        return {"top1": float("nan"), "top5": float("nan"), "gap": g}
    rank = label_rank(probs, np.where(known, labels, 0))[known]  # no copy of the (N, C) rows
    return {"top1": float((rank < 1).mean()), "top5": float((rank < 5).mean()), "gap": g}
