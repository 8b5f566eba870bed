"""Class scores at competition scale: the k best classes of each row instead of all C of them.

GLD v2 has 81,313 classes (203,094 in all of ``train.csv``): a dense N x C probability matrix of
the 117,577 test images is 19 GB per run in float16, and the 1.58M out-of-fold rows cannot be
written at all. Every stage after the forward pass therefore keeps, per row, the ``k`` best class
indices and their scores (:class:`TopK`). GAP needs one answer per row and top-5 needs five, so
nothing the competition scores is lost; ensembles merge the models' candidates over their union
(a class outside a model's top-k contributes 0 from that model, as the winners' ensembles did).

Where C is small (the default, CIFAR, Paris6k: up to :data:`DENSE_MAX_CLASSES`), the files stay
dense (k = C): every number of those data sets is unchanged. Pure numpy, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DENSE_MAX_CLASSES = 1000  # up to this many classes prediction files stay dense (k = C)
DEFAULT_TOPK = 20  # candidates per row above it
_CHUNK = 4096  # rows per block: bounded temporaries


def choose_k(num_classes: int, requested: int = 0) -> int | None:
    """How many classes a prediction file of ``num_classes`` keeps per row; None = all (dense).

    ``requested`` 0 is the rule above; a positive value is that k (dense when it is >= C)."""
    if requested <= 0:
        return None if num_classes <= DENSE_MAX_CLASSES else DEFAULT_TOPK
    return None if requested >= num_classes else int(requested)


@dataclass
class TopK:
    """The ``k`` best classes of each of N rows: ``idx`` (N, k) int32 and ``val`` (N, k) scores,
    sorted by score, descending (ties: lower class index first, as a stable dense argmax)."""

    idx: np.ndarray
    val: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        if self.idx.shape != self.val.shape or self.idx.ndim != 2:
            raise ValueError(f"top-k: idx {self.idx.shape} and val {self.val.shape} must be the same (N, k)")

    @property
    def shape(self) -> tuple[int, int]:
        """(N, C): the shape of the dense matrix these rows stand for."""
        return (len(self.idx), self.num_classes)

    ndim = 2

    @property
    def k(self) -> int:
        return self.idx.shape[1]

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, rows) -> TopK:
        return TopK(self.idx[rows], self.val[rows], self.num_classes)

    def astype(self, dtype, copy: bool = True) -> TopK:
        return TopK(self.idx, self.val.astype(dtype, copy=copy), self.num_classes)

    def dense(self, dtype=np.float32) -> np.ndarray:
        """The (N, C) matrix with zeros outside each row's candidates (small C only)."""
        out = np.zeros(self.shape, dtype=dtype)
        rows, cols = np.nonzero(self.idx >= 0)  # -1: padding of a row with fewer candidates
        out[rows, self.idx[rows, cols]] = self.val[rows, cols]
        return out


def concat(parts: list) -> TopK | np.ndarray:
    """The rows of several score blocks one after the other: :class:`TopK` blocks (one C, one k)
    or dense arrays."""
    if not all(isinstance(b, TopK) for b in parts):
        return np.concatenate(parts)
    return TopK(np.concatenate([b.idx for b in parts]), np.concatenate([b.val for b in parts]), parts[0].num_classes)


def topk(probs: np.ndarray, k: int) -> TopK:
    """The ``k`` best classes of each row of a dense matrix (block-wise)."""
    probs = np.asarray(probs)
    n, c = probs.shape
    k = min(k, c)
    idx = np.empty((n, k), dtype=np.int32)
    val = np.empty((n, k), dtype=probs.dtype)
    for s in range(0, n, _CHUNK):
        p = probs[s : s + _CHUNK]
        part = np.argpartition(-p, k - 1, axis=1)[:, :k] if k < c else np.broadcast_to(np.arange(c), p.shape)
        v = np.take_along_axis(p, part, axis=1)
        order = np.lexsort((part, -v.astype(np.float64)), axis=1)  # score desc, then class asc
        idx[s : s + _CHUNK] = np.take_along_axis(part, order, axis=1)
        val[s : s + _CHUNK] = np.take_along_axis(v, order, axis=1)
    return TopK(idx, val, c)


def merge(parts: list[TopK], weights: list[float], k: int | None = None) -> TopK:
    """``sum_m w_m s_m`` over the union of the parts' candidates, the ``k`` best kept (default: the
    largest k of the parts). Equal to the dense weighted sum wherever every part is dense (k = C)."""
    if not parts:
        raise ValueError("merge: no parts")
    n, c = len(parts[0]), parts[0].num_classes
    if any(len(p) != n or p.num_classes != c for p in parts):
        raise ValueError("merge: parts of different rows or classes")
    k = k or max(p.k for p in parts)
    idx = np.empty((n, min(k, c)), dtype=np.int32)
    val = np.empty((n, min(k, c)), dtype=np.float32)
    for s in range(0, n, _CHUNK):
        rows = slice(s, s + _CHUNK)
        cand = np.concatenate([p.idx[rows].astype(np.int64) for p in parts], axis=1)
        score = np.concatenate([p.val[rows].astype(np.float32) * np.float32(w) for p, w in zip(parts, weights)], axis=1)
        i, v = _sum_by_row_and_class(cand, score, c)
        idx[rows], val[rows] = _best_k(i, v, idx.shape[1])
    return TopK(idx, val, c)


def _sum_by_row_and_class(cand: np.ndarray, score: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the summed score of every distinct candidate class: (R, U) arrays padded with -1."""
    r = len(cand)
    valid = cand >= 0  # -1: padding of a row with fewer candidates (see _best_k)
    key = (np.arange(r, dtype=np.int64)[:, None] * c + cand)[valid]
    uniq, inverse = np.unique(key, return_inverse=True)
    sums = np.bincount(inverse, weights=score[valid].astype(np.float64)).astype(np.float32)
    row, cls = uniq // c, (uniq % c).astype(np.int32)
    start = np.searchsorted(row, np.arange(r))
    pos = np.arange(len(uniq)) - start[row]
    width = int(pos.max()) + 1 if len(pos) else 1
    i = np.full((r, width), -1, dtype=np.int32)
    v = np.full((r, width), -np.inf, dtype=np.float32)
    i[row, pos], v[row, pos] = cls, sums
    return i, v


def _best_k(i: np.ndarray, v: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (score desc, class asc) of padded rows; a row with fewer candidates keeps its
    padding at the end as class -1 with score 0 (never an answer: ranked last)."""
    order = np.lexsort((np.where(i < 0, np.iinfo(np.int32).max, i), -v.astype(np.float64)), axis=1)[:, :k]
    bi, bv = np.take_along_axis(i, order, axis=1), np.take_along_axis(v, order, axis=1)
    if bi.shape[1] < k:  # fewer distinct candidates than k in the whole block
        pad = k - bi.shape[1]
        bi = np.pad(bi, ((0, 0), (0, pad)), constant_values=-1)
        bv = np.pad(bv, ((0, 0), (0, pad)), constant_values=0)
    bv = np.where(bi < 0, 0, bv)
    return bi, bv


def label_rank_topk(scores: TopK, labels: np.ndarray) -> np.ndarray:
    """0-based rank of each row's label among its candidates; C (a miss at any cut-off) when it is
    not one of them: top-n is exact for n <= k and counts only what the candidates show above."""
    labels = np.asarray(labels)
    hit = scores.idx == labels[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), scores.num_classes)


def accumulate(acc: TopK | None, part: TopK, weight: float) -> TopK:
    """``acc + weight * part`` over the union of their candidates, nothing dropped (exact): the
    running sum of a stream of top-k files (folds, then models) without a dense matrix."""
    if acc is None:
        return TopK(part.idx, part.val.astype(np.float32) * np.float32(weight), part.num_classes)
    return merge([acc, part], [1.0, weight], k=acc.k + part.k)


def finish(acc: TopK, k: int) -> TopK:
    """The ``k`` best of an accumulated sum (padding candidates dropped where possible)."""
    k = min(k, acc.k)
    return TopK(acc.idx[:, :k].copy(), acc.val[:, :k].copy(), acc.num_classes)


def combine(a: TopK, b: TopK, fn, k: int) -> TopK:
    """``fn(a_value, b_value)`` over the union of two score sets' candidates (a value missing from
    one set is 0 there), the ``k`` best kept: e.g. the product of classifier and kNN scores."""
    if len(a) != len(b) or a.num_classes != b.num_classes:
        raise ValueError("combine: score sets of different rows or classes")
    c, k = a.num_classes, min(k, a.num_classes)
    idx = np.empty((len(a), k), dtype=np.int32)
    val = np.empty((len(a), k), dtype=np.float32)
    for s in range(0, len(a), _CHUNK):
        rows = slice(s, s + _CHUNK)
        cand = np.concatenate([a.idx[rows], b.idx[rows]], axis=1).astype(np.int64)
        za, zb = np.zeros(a.idx[rows].shape, np.float32), np.zeros(b.idx[rows].shape, np.float32)
        i, va = _sum_by_row_and_class(cand, np.concatenate([a.val[rows].astype(np.float32), zb], axis=1), c)
        _, vb = _sum_by_row_and_class(cand, np.concatenate([za, b.val[rows].astype(np.float32)], axis=1), c)
        out = np.where(i >= 0, fn(np.maximum(va, 0), np.maximum(vb, 0)), -np.inf).astype(np.float32)
        idx[rows], val[rows] = _best_k(i, out, k)
    return TopK(idx, val, c)
