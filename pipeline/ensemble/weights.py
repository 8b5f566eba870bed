"""Ensemble weights fitted on the out-of-fold rows (coordinate search on the simplex from equal
weights), and 2-fold cross-fitting that says how optimistic the fitted CV is."""

from __future__ import annotations

import logging

import numpy as np

from pipeline.ensemble.blend import answers, blend
from pipeline.metrics import gap, top1

log = logging.getLogger(__name__)


def objective(pred: np.ndarray, conf: np.ndarray, labels: np.ndarray, metric: str) -> float:
    """What fitted weights maximise: GAP, or top-1 accuracy over the class-labelled rows."""
    if metric == "gap":
        g = gap(pred, conf, labels)
        return -1.0 if np.isnan(g) else g
    known = labels >= 0
    return float((pred[known] == labels[known]).mean()) if known.any() else -1.0


def _move(w: np.ndarray, i: int, v: float) -> np.ndarray:
    """``w`` with ``w[i] = v`` and the others rescaled to keep the sum 1 (equal if all were 0)."""
    out = w.copy()
    rest = 1.0 - w[i]
    others = np.arange(len(w)) != i
    out[others] = (w[others] * (1.0 - v) / rest) if rest > 1e-12 else (1.0 - v) / (len(w) - 1)
    out[i] = v
    return out


def fit_weights(
    parts: list[np.ndarray],
    labels: np.ndarray,
    method: str,
    metric: str = "gap",
    step: float = 0.05,
    max_passes: int = 10,
) -> tuple[np.ndarray, float]:
    """Weights (>= 0, sum 1) maximising ``metric`` of the ensemble on these rows, and that score.

    Coordinate search on the simplex: for each model in turn, try its weight on a grid of
    ``step`` (the others rescaled), keep the best strict improvement; repeat until a pass
    changes nothing. Starts from equal weights, so the result is never worse than them here.
    """
    m = len(parts)
    w = np.full(m, 1.0 / m)
    best = objective(*answers(parts, w, method), labels, metric)
    if m == 1:
        return w, best
    grid = np.linspace(0.0, 1.0, int(round(1 / step)) + 1)
    for _ in range(max_passes):
        changed = False
        for i in range(m):
            for v in grid:
                cand = _move(w, i, float(v))
                if np.allclose(cand, w):
                    continue
                s = objective(*answers(parts, cand, method), labels, metric)
                if s > best + 1e-12:
                    best, w, changed = s, cand, True
        if not changed:
            break
    return w, best


def crossfit(parts: list[np.ndarray], labels: np.ndarray, method: str, metric: str, seed: int) -> dict:
    """Honest CV of fitted weights: fit on one half of the rows, score the other, both ways.

    Returns the cross-fitted ensemble probabilities (each row blended with the weights of the
    half it was NOT in), and the in-sample and held-out objective of each half.
    """
    n = len(labels)
    perm = np.random.default_rng(seed).permutation(n)
    halves = (np.sort(perm[: n // 2]), np.sort(perm[n // 2 :]))
    probs = np.empty((n, parts[0].shape[1]), dtype=np.float32)
    report = {"in_sample": [], "held_out": [], "weights": []}
    for a, b in (halves, halves[::-1]):
        w, score_in = fit_weights([p[a] for p in parts], labels[a], method, metric)
        probs[b] = blend([p[b] for p in parts], w, method)
        report["in_sample"].append(score_in)
        report["held_out"].append(objective(*top1(probs[b]), labels[b], metric))
        report["weights"].append(w)
    report["probs"] = probs
    return report
