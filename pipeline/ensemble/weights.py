"""Ensemble weights fitted on the out-of-fold rows, and the choice among fitting methods by CV.

Fitting methods (each returns weights >= 0 summing to 1 from the rows it is given):

* ``coordinate``: coordinate search on the simplex from equal weights (:func:`fit_weights`);
  it fits the OOF rows best and so overfits them most;
* ``greedy``: Caruana et al.'s forward selection with replacement, from the best single member;
  weights are how often a member was picked, so they move in steps of ``1/rounds``;
* ``shrink<l>``: the coordinate weights moved a share ``l`` of the way back to equal weights;
* ``equal`` and ``best`` (the best single member) as the two simple ends.

:func:`select_weights` (``fit_method=cv``) scores every candidate by 2-fold cross-fitting (fit on
one half of the OOF rows, blend the other half with those weights, both ways) and keeps the best;
ties go to the simpler one. A guard then keeps the ensemble near its best member: when the chosen
weights score more than ``tolerance`` below the best single member on the OOF rows (in-sample or
cross-fitted), the best member's weights are used instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from common.errors import PipelineError
from pipeline.ensemble.blend import answers, blend
from pipeline.metrics import gap, top1
from pipeline.scores import concat

log = logging.getLogger(__name__)

SHRINKS = (0.75, 0.5, 0.25)  # shares of the way from the coordinate weights back to equal weights
GREEDY_ROUNDS = 20
WEIGHT_TOL = 1e-6  # |sum of the weights - 1| allowed
FIT_TOLERANCE = 0.01  # fitted weights may score at most this below the best single member on OOF
# candidates of fit_method=cv, simplest first (ties go to the first)
CANDIDATES = ("equal", "best", "greedy", *(f"shrink{s:g}" for s in SHRINKS), "coordinate")

Fitter = Callable[[list[np.ndarray], np.ndarray], np.ndarray]


def objective(pred: np.ndarray, conf: np.ndarray, labels: np.ndarray, metric: str) -> float:
    """What fitted weights maximise: GAP, or top-1 accuracy over the class-labelled rows."""
    if metric == "gap":
        g = gap(pred, conf, labels)
        return -1.0 if np.isnan(g) else g
    known = labels >= 0
    return float((pred[known] == labels[known]).mean()) if known.any() else -1.0


def score(parts: list[np.ndarray], w: np.ndarray, labels: np.ndarray, method: str, metric: str) -> float:
    """``metric`` of the ensemble with weights ``w`` on these rows."""
    return objective(*answers(parts, w, method), labels, metric)


def normalise(weights) -> np.ndarray:
    """Weights >= 0 scaled to sum 1, by their maximum first (1e308 + 1e308 would overflow to inf
    and every weight to 0, leaving confidences of 0)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or not len(w) or not (np.isfinite(w).all() and (w >= 0).all() and w.max() > 0):
        raise PipelineError(f"ensemble: weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    w = w / w.max()
    return w / w.sum()


def check_weights(weights: dict[str, float]) -> None:
    """The weights an ensemble is blended with sum to 1 (else every confidence is scaled)."""
    total = float(sum(weights.values()))
    if not (all(np.isfinite(v) and v >= 0 for v in weights.values()) and abs(total - 1.0) <= WEIGHT_TOL):
        text = " ".join(f"{m}:{v:.6g}" for m, v in weights.items())
        raise PipelineError(f"ensemble: weights {text} sum to {total:.6g}, not 1 (please report)")


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
    best = score(parts, w, labels, method, metric)
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
                s = score(parts, cand, labels, method, metric)
                if s > best + 1e-12:
                    best, w, changed = s, cand, True
        if not changed:
            break
    return w, best


def single_scores(parts: list[np.ndarray], labels: np.ndarray, metric: str) -> np.ndarray:
    """Each member's own ``metric`` on these rows."""
    return np.array([objective(*top1(p), labels, metric) for p in parts])


def best_single(parts: list[np.ndarray], labels: np.ndarray, metric: str) -> np.ndarray:
    """One-hot weights of the member scoring best on these rows (ties: the first)."""
    w = np.zeros(len(parts))
    w[int(np.argmax(single_scores(parts, labels, metric)))] = 1.0
    return w


def greedy_weights(
    parts: list[np.ndarray], labels: np.ndarray, method: str, metric: str, rounds: int = GREEDY_ROUNDS
) -> np.ndarray:
    """Forward selection with replacement (Caruana et al. 2004): start from the best member, add
    the member whose addition scores best, ``rounds`` times; the weights are the pick counts of
    the best-scoring bag seen (ties: the earlier, smaller bag). Never below the best member here."""
    counts = best_single(parts, labels, metric)
    best_w, best = counts / counts.sum(), score(parts, counts / counts.sum(), labels, method, metric)
    for _ in range(rounds - 1):
        tries = [score(parts, (counts + np.eye(len(parts))[i]) / (counts.sum() + 1), labels, method, metric)
                 for i in range(len(parts))]  # fmt: skip
        counts[int(np.argmax(tries))] += 1
        if max(tries) > best + 1e-12:
            best, best_w = max(tries), counts / counts.sum()
    return best_w


def candidate_weights(parts: list[np.ndarray], labels: np.ndarray, method: str, metric: str) -> dict[str, np.ndarray]:
    """Every candidate of :data:`CANDIDATES` fitted on these rows (one coordinate search for all shrinks)."""
    m = len(parts)
    equal = np.full(m, 1.0 / m)
    coord, _ = fit_weights(parts, labels, method, metric)
    out = {
        "equal": equal,
        "best": best_single(parts, labels, metric),
        "greedy": greedy_weights(parts, labels, method, metric),
    }
    for s in SHRINKS:
        out[f"shrink{s:g}"] = (1 - s) * coord + s * equal
    out["coordinate"] = coord
    return out


def halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of ``n`` rows into two sorted halves."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])


@dataclass
class Selection:
    """The weights a fit chose, and what every candidate scored (the leaderboard shows both)."""

    weights: np.ndarray
    chosen: str
    crossfit: dict[str, dict[str, float]]  # candidate -> {"gap", "top1"} of its cross-fitted answers
    candidates: dict[str, np.ndarray]  # candidate -> weights fitted on all rows
    in_sample: float  # the chosen weights' metric on all rows
    best_single: float  # the best member's metric on all rows
    guarded: bool = False  # the chosen candidate fell below best_single - tolerance: best member used
    half_weights: dict[str, list[np.ndarray]] = field(default_factory=dict)  # per half, for cross-fitted probs


def _crossfit_all(
    parts: list[np.ndarray], labels: np.ndarray, method: str, metric: str, seed: int
) -> tuple[dict[str, dict[str, float]], dict[str, list[np.ndarray]]]:
    """Every candidate cross-fitted on two halves: its scores on answers it was not fitted on, and
    the weights fitted on each half. Keeps top-1 answers only (memory: 2 arrays per candidate)."""
    n = len(labels)
    split = halves(n, seed)
    pred = {c: np.empty(n, dtype=np.int64) for c in CANDIDATES}
    conf = {c: np.empty(n, dtype=np.float64) for c in CANDIDATES}
    per_half: dict[str, list[np.ndarray]] = {c: [] for c in CANDIDATES}
    for a, b in (split, split[::-1]):
        fitted = candidate_weights([p[a] for p in parts], labels[a], method, metric)
        held = [p[b] for p in parts]
        for c, w in fitted.items():
            pred[c][b], conf[c][b] = answers(held, w, method)
            per_half[c].append(w)
    scores = {c: {m: objective(pred[c], conf[c], labels, m) for m in ("gap", "top1")} for c in CANDIDATES}
    return scores, per_half


def select_weights(
    parts: list[np.ndarray],
    labels: np.ndarray,
    method: str,
    metric: str = "gap",
    seed: int = 0,
    fit_method: str = "cv",
    tolerance: float = FIT_TOLERANCE,
) -> Selection:
    """The weights of ``fit_method`` (``cv``: the candidate with the best cross-fitted ``metric``),
    fitted on all rows, guarded to stay within ``tolerance`` of the best single member."""
    full = candidate_weights(parts, labels, method, metric)
    if len(labels) >= 4 and len(parts) > 1:
        cf, per_half = _crossfit_all(parts, labels, method, metric, seed)
    else:  # too few rows to split: in-sample only
        cf = {c: {m: score(parts, w, labels, method, m) for m in ("gap", "top1")} for c, w in full.items()}
        per_half = {}
    if fit_method == "cv":
        top = max(cf[c][metric] for c in CANDIDATES)
        chosen = next(c for c in CANDIDATES if cf[c][metric] >= top - 1e-12)
    else:
        chosen = fit_method
    best = float(single_scores(parts, labels, metric).max())
    in_sample = score(parts, full[chosen], labels, method, metric)
    sel = Selection(full[chosen], chosen, cf, full, in_sample, best, half_weights=per_half)
    if min(in_sample, cf[chosen][metric]) < best - tolerance and chosen != "best":
        log.warning(
            "fitted weights (%s): OOF %s %.4f in-sample, %.4f cross-fitted, more than %g below the best "
            "single member's %.4f: using the best member alone",
            chosen, metric, in_sample, cf[chosen][metric], tolerance, best,
        )  # fmt: skip
        sel.weights, sel.chosen, sel.guarded = full["best"], "best", True
        sel.in_sample = score(parts, full["best"], labels, method, metric)
    return sel


def crossfit(
    parts: list[np.ndarray],
    labels: np.ndarray,
    method: str,
    metric: str,
    seed: int,
    fitter: Fitter | None = None,
) -> dict:
    """Honest CV of fitted weights: fit on one half of the rows, score the other, both ways.

    ``fitter(parts, labels) -> weights`` (default: :func:`fit_weights`). Returns the cross-fitted
    ensemble probabilities (each row blended with the weights of the half it was NOT in), and
    the in-sample and held-out objective of each half.
    """
    fitter = fitter or (lambda p, y: fit_weights(p, y, method, metric)[0])
    n = len(labels)
    blocks, rows = [], []
    report = {"in_sample": [], "held_out": [], "weights": []}
    for a, b in (halves(n, seed), halves(n, seed)[::-1]):
        w = fitter([p[a] for p in parts], labels[a])
        blocks.append(blend([p[b] for p in parts], w, method))  # dense or top-k, as the parts
        rows.append(b)
        report["in_sample"].append(score([p[a] for p in parts], w, labels[a], method, metric))
        report["held_out"].append(objective(*top1(blocks[-1]), labels[b], metric))
        report["weights"].append(w)
    report["probs"] = concat(blocks)[np.argsort(np.concatenate(rows))]  # back in row order
    return report
