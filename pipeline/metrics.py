"""Metrics as pure functions on numpy arrays (no torch): top-k accuracy, GAP, log-loss.

GAP is Kaggle's Global Average Precision (Google Landmark Recognition): every query has one
prediction (a class and a confidence); predictions are sorted by confidence, descending,
across all queries, and

    GAP = 1/M * sum_i P(i) * rel(i)

where P(i) is the precision over the first i predictions, rel(i) is 1 when prediction i is
correct, and M is the number of queries that have a landmark (queries whose true label is
``UNKNOWN``/negative still occupy ranks and count as wrong). Ties in confidence keep the input
order (a stable sort), so the score is reproducible.
"""

from __future__ import annotations

import numpy as np


def topk_accuracy(probs: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose label is among the ``k`` highest scores (ties: lower index first)."""
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((order == labels[:, None]).any(axis=1).mean())


def gap(pred: np.ndarray, conf: np.ndarray, labels: np.ndarray) -> float:
    """Global Average Precision of one prediction per query (labels < 0: no landmark)."""
    pred, conf, labels = np.asarray(pred), np.asarray(conf, dtype=float), np.asarray(labels)
    m = int((labels >= 0).sum())
    if m == 0:
        return float("nan")
    order = np.argsort(-conf, kind="stable")
    correct = (pred[order] == labels[order]) & (labels[order] >= 0)
    precision = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    return float((precision * correct).sum() / m)


def gap_from_probs(probs: np.ndarray, labels: np.ndarray) -> float:
    probs = np.asarray(probs)
    pred = probs.argmax(axis=1)
    return gap(pred, probs[np.arange(len(pred)), pred], labels)


def log_loss(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float:
    probs = np.asarray(probs, dtype=float)
    p = np.clip(probs[np.arange(len(labels)), np.asarray(labels)], eps, 1.0)
    return float(-np.log(p).mean())


def score_all(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """top1, top5 and GAP over the rows with a known label."""
    labels = np.asarray(labels)
    known = labels >= 0
    if not known.any():
        return {}
    return {
        "top1": topk_accuracy(probs[known], labels[known], 1),
        "top5": topk_accuracy(probs[known], labels[known], 5),
        "gap": gap_from_probs(probs, labels),
    }
