"""Non-landmark post-processing of the ensemble's answers: a per-class penalty and a threshold.

Most images of a Google Landmark Recognition test set show no landmark. Every answer on one is
wrong, and GAP (:mod:`pipeline.metrics`) charges a wrong answer through the precision of every
correct answer ranked BELOW it. Two knobs, both working on the answers ``(pred, conf)`` (one
class and confidence per query; ``pred = -1`` / ``conf = NaN`` is an empty answer):

* **penalty** (re-ranking): non-landmark images tend to fall into a few classes (scenes that
  look like nothing in particular). ``r_c`` = the mean probability the ensemble gives class
  ``c`` on the pool of known non-landmark images (``nonlandmark.npz``), divided by its largest
  value (so ``r`` is in [0, 1]); then ``conf' = conf * (1 - strength * r[pred])``. With
  ``strength`` in [0, 1] confidences stay in [0, 1]. Answers in "non-landmark classes" move
  down the ranking, below the correct landmark answers.
* **landmark-ness** (re-ranking without a labelled pool): the GLR 2020 winners scored how much a
  query looks like a landmark by its similarity to the nearest training photo. ``sim`` = that
  cosine similarity (the embed stage's ``nearest_<manifest>.npz``, averaged over folds and
  models like the probabilities); ``conf' = conf * max(sim, 0)^(16 * a)`` with ``a`` in [0, 1]:
  answers on photos far from every training photo move down. It needs no pool: tuned on the
  OOF rows alone (wrong answers on landmarks are far from their class too) or on OOF + pool.
* **threshold**: answers with ``conf < threshold`` are left empty. Removing the
  lowest-ranked answers leaves the precision of every answer above them unchanged, so a
  threshold can never raise GAP; tuning it on GAP returns 0 (no threshold). It is here for
  fixed values and other metrics, and so the leaderboard shows that it does not help.

Tuning (strength, threshold) maximises GAP on data with non-landmarks: the OOF rows plus half
of the pool (``r`` learnt on the other half, so the images a class penalty was learnt from are
not the ones it is scored on), or a labelled competition set. The held-out score is reported
elsewhere (internal test split). The final ``r`` is learnt on the whole pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import DataError, PipelineError
from common.schema import NON_LANDMARK, OTHER_LANDMARK, UNLABELLED
from pipeline.metrics import NO_ANSWER, gap
from pipeline.scores import TopK

STRENGTHS = np.round(np.linspace(0.0, 1.0, 21), 2)  # the penalty strengths tried by tuning
LANDMARK_POWER = 16.0  # landmark-ness a in [0, 1] raises the similarity to the power 16 * a


def class_penalty(pool_probs: np.ndarray) -> np.ndarray:
    """``r_c`` in [0, 1]: the mean probability of class ``c`` on non-landmark images over its max
    (top-k scores: a class outside a row's candidates counts 0 there)."""
    if isinstance(pool_probs, TopK):
        if len(pool_probs) == 0:
            raise ValueError("class_penalty: need a non-empty (N, C) array, got 0 rows")
        ok = pool_probs.idx >= 0
        r = np.bincount(pool_probs.idx[ok], weights=pool_probs.val[ok].astype(np.float64),
                        minlength=pool_probs.num_classes) / len(pool_probs)  # fmt: skip
        top = r.max()
        return r / top if top > 0 else r
    pool_probs = np.asarray(pool_probs)
    if pool_probs.ndim != 2 or len(pool_probs) == 0:
        raise ValueError(f"class_penalty: need a non-empty (N, C) array, got shape {pool_probs.shape}")
    r = pool_probs.mean(axis=0, dtype=np.float64)
    top = r.max()
    return r / top if top > 0 else r


def landmark_scale(sim: np.ndarray, a: float) -> np.ndarray:
    """``max(sim, 0)^(LANDMARK_POWER * a)``: 1 for a photo identical to a training photo, 0 for an
    unrelated one (cosine <= 0)."""
    return np.clip(np.asarray(sim, dtype=np.float64), 0.0, 1.0) ** (LANDMARK_POWER * a)


@dataclass
class PostProcess:
    """What is applied to the answers: ``conf * (1 - strength * r[pred])``, then the threshold."""

    strength: float = 0.0
    penalty: np.ndarray | None = None  # r, one value per class
    threshold: float | None = None
    landmark: float = 0.0  # a: conf * max(sim, 0)^(LANDMARK_POWER * a)

    def __call__(
        self, pred: np.ndarray, conf: np.ndarray, sim: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """New ``(pred, conf)`` arrays (inputs untouched); empty answers stay empty. ``sim``: each
        query's similarity to its nearest training photo (needed when ``landmark`` is set)."""
        pred = np.asarray(pred).copy()
        conf = np.asarray(conf, dtype=np.float64).copy()
        answered = (pred >= 0) & ~np.isnan(conf)
        if self.landmark:
            if sim is None or len(sim) != len(conf):
                raise PipelineError("landmark-ness needs one nearest-photo similarity per answer (make embed)")
            conf[answered] *= landmark_scale(np.asarray(sim)[answered], self.landmark)
        if self.strength and self.penalty is not None:
            conf[answered] *= 1.0 - self.strength * self.penalty[pred[answered]]
        if self.threshold is not None:
            cut = answered & (conf < self.threshold)
            pred[cut], conf[cut] = NO_ANSWER, np.nan
        return pred, conf

    @property
    def active(self) -> bool:
        return bool(self.strength and self.penalty is not None) or self.threshold is not None or bool(self.landmark)

    def describe(self) -> str:
        parts = [f"landmark-ness {self.landmark:g}"] if self.landmark else []
        if self.strength and self.penalty is not None:
            parts.append(f"penalty strength {self.strength:g}")
        if self.threshold is not None:
            parts.append(f"threshold {self.threshold:.4g}")
        return ", ".join(parts) or "none"


def tune_threshold(pred: np.ndarray, conf: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold with the best GAP on ``labels`` (ties: the lowest), and that GAP.

    Exact in one sort: a threshold keeps the answers ranked above a cut, and the GAP of the kept
    answers is the prefix sum of ``P(i) * rel(i) / M`` up to the cut; every cut between two
    distinct confidences is tried. (The prefix sum never decreases, so the answer is 0: see the
    module docstring. The search is kept so the claim is checked on every run, not assumed.)
    """
    pred, conf, labels = np.asarray(pred), np.asarray(conf, dtype=np.float64), np.asarray(labels)
    base = gap(pred, conf, labels)
    keep = (pred >= 0) & ~np.isnan(conf) & (labels != UNLABELLED)
    if not keep.any() or np.isnan(base):
        return 0.0, base
    m = int(((labels >= 0) | (labels == OTHER_LANDMARK)).sum())
    order = np.argsort(-conf[keep], kind="stable")
    c = conf[keep][order]
    rel = (pred[keep][order] == labels[keep][order]) & (labels[keep][order] >= 0)
    prefix = np.cumsum(np.cumsum(rel) / np.arange(1, len(rel) + 1) * rel) / m
    cut_ok = np.append(c[1:] < c[:-1], True)  # a cut after position k separates distinct confidences
    ks = np.flatnonzero(cut_ok)
    best_k = ks[np.flatnonzero(prefix[ks] >= prefix[ks].max() - 1e-12)[-1]]  # ties: keep the most
    t = 0.0 if best_k == len(c) - 1 else float(c[best_k])
    return t, float(prefix[best_k])


def tune_strength(
    pred: np.ndarray, conf: np.ndarray, labels: np.ndarray, penalty: np.ndarray, strengths: np.ndarray = STRENGTHS
) -> tuple[float, float]:
    """The penalty strength with the best GAP on ``labels`` (ties: the weakest), and that GAP."""
    return _weakest_best(lambda a: PostProcess(a, penalty)(pred, conf), pred, conf, labels, strengths)


def _weakest_best(apply, pred: np.ndarray, conf: np.ndarray, labels: np.ndarray, strengths) -> tuple[float, float]:
    """The strength ``a`` whose ``apply(a) -> (pred, conf)`` has the best GAP (ties: the weakest; 0 = off)."""
    best_a, best = 0.0, gap(pred, conf, labels)
    for a in strengths:
        if a == 0:
            continue
        g = gap(*apply(float(a)), labels)
        if g > best + 1e-12:
            best_a, best = float(a), g
    return best_a, best


@dataclass
class TuningSet:
    """Answers with labels to tune on, and the pool of non-landmark ensemble probabilities.

    ``pool_probs`` may be None when no penalty is wanted. With ``pool_in_tuning`` (OOF + pool),
    the pool is split in halves: ``r`` from one, the other joins the tuning rows.
    """

    pred: np.ndarray
    conf: np.ndarray
    labels: np.ndarray
    pool_probs: np.ndarray | None = None
    pool_in_tuning: bool = True
    seed: int = 0

    def split(self) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(r to tune with, the tuning rows (pred, conf, labels))."""
        if self.pool_probs is None:
            return None, (self.pred, self.conf, self.labels)
        if not self.pool_in_tuning:
            return class_penalty(self.pool_probs), (self.pred, self.conf, self.labels)
        n = len(self.pool_probs)
        if n < 2:
            raise DataError(f"tuning on OOF + pool needs at least 2 non-landmark pool images, got {n}")
        perm = np.random.default_rng(self.seed).permutation(n)
        learn, score = np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])
        held = self.pool_probs[score]
        p_pred = held.argmax(axis=1)
        p_conf = held[np.arange(len(p_pred)), p_pred].astype(np.float64)
        rows = (
            np.concatenate([self.pred, p_pred]),
            np.concatenate([self.conf, p_conf]),
            np.concatenate([self.labels, np.full(len(p_pred), NON_LANDMARK)]),
        )
        return class_penalty(self.pool_probs[learn]), rows


def fit_postprocess(
    data: TuningSet, threshold: float | str | None, penalty: float | str | None
) -> tuple[PostProcess, dict[str, float]]:
    """Resolve the settings (None = off, ``"tune"``, or a value) into a :class:`PostProcess`.

    Returns it with ``r`` learnt on the whole pool, and a report: the tuned values and GAP on
    the tuning rows before (``tune_gap_before``) and after (``tune_gap``).
    """
    r_tune, (pred, conf, labels) = data.split()
    if penalty is not None and data.pool_probs is None:
        raise DataError("a penalty needs the non-landmark pool predictions")
    strength = 0.0
    if penalty == "tune":
        strength, _ = tune_strength(pred, conf, labels, r_tune)
    elif penalty is not None:
        strength = float(penalty)
    tuned = PostProcess(strength, r_tune)
    p2, c2 = tuned(pred, conf)
    thr = None
    if threshold == "tune":
        thr, _ = tune_threshold(p2, c2, labels)
    elif threshold is not None:
        thr = float(threshold)
    tuned.threshold = thr
    report = {
        "strength": strength,
        "threshold": thr if thr is not None else float("nan"),
        "tune_gap_before": gap(pred, conf, labels),
        "tune_gap": gap(*tuned(pred, conf), labels),
        "tune_n": len(labels),
    }
    final_r = class_penalty(data.pool_probs) if (strength and data.pool_probs is not None) else None
    return PostProcess(strength, final_r, thr), report


def tune_landmark(
    pred: np.ndarray, conf: np.ndarray, labels: np.ndarray, sim: np.ndarray, strengths: np.ndarray = STRENGTHS
) -> tuple[float, float]:
    """The landmark-ness ``a`` with the best GAP on ``labels`` (ties: the weakest), and that GAP."""
    return _weakest_best(lambda a: PostProcess(landmark=a)(pred, conf, sim), pred, conf, labels, strengths)


def fit_landmark(
    data: TuningSet, sim: np.ndarray, pool_sim: np.ndarray | None, setting: float | str
) -> tuple[PostProcess, dict[str, float]]:
    """Landmark-ness (``"tune"`` or a value) as a :class:`PostProcess`, tuned on the tuning rows
    (``sim`` one per row) plus, when ``pool_sim`` and the pool's probabilities are given, every pool
    image as a non-landmark (only one number is learnt, so the pool is not halved)."""
    pred, conf, labels = data.pred, data.conf, data.labels
    if pool_sim is not None and data.pool_probs is not None and data.pool_in_tuning:
        pool = np.asarray(data.pool_probs)
        p_pred = pool.argmax(axis=1)
        pred = np.concatenate([pred, p_pred])
        conf = np.concatenate([conf, pool[np.arange(len(p_pred)), p_pred].astype(np.float64)])
        labels = np.concatenate([labels, np.full(len(p_pred), NON_LANDMARK)])
        sim = np.concatenate([sim, pool_sim])
    a = tune_landmark(pred, conf, labels, sim)[0] if setting == "tune" else float(setting)
    pp = PostProcess(landmark=a)
    after = gap(*pp(pred, conf, sim), labels)
    report = {"landmark": a, "tune_gap_before": gap(pred, conf, labels), "tune_gap": after, "tune_n": len(labels)}
    return pp, report
