"""kNN retrieval on L2-normalised embeddings: exact cosine top-k, class scores from the
neighbours, and their fusion with classifier probabilities.

The GLR winners re-rank a classifier's predictions with a search of the training images (2019:
lyakaap; 2020: Henkel & Singer, Ha et al.). This module is the arithmetic only (torch/numpy, no
models, no files): embeddings come from ``model.embed`` (:mod:`pipeline.models.heads`).

* :func:`knn`: exact cosine top-k by chunked matrix products (CPU or GPU); memory stays bounded by
  one ``query_chunk x chunk_size`` similarity block plus the running top-k, whatever the gallery.
* :func:`knn_class_scores`: a (Q, C) class score from the neighbours.
* :func:`fuse`: ``clf_probs^alpha * knn_scores^beta`` (Ha et al. 2020's product of powers).

Non-landmark queries have no close neighbour: their scores stay low, and ``sims[:, 0]`` (the raw
largest similarity, :func:`knn` returns neighbours best first) says how much a query looks like
any training photo, its "landmark-ness" (the GLR 2020 winners' non-landmark cue). The embed stage
keeps it per query in ``nearest_<manifest>.npz`` (:func:`save_nearest`, :func:`load_nearest`), which
the ensemble's post-processing reads.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from common.errors import DataError, PipelineError
from common.io import atomic_write
from pipeline.scores import TopK, combine, merge

log = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RESCORE_CHUNK = 256  # queries per float32 re-scoring step of the reduced-precision search
NORM_TOL = 1e-2  # |norm - 1| allowed (float16 rows are normalised to ~1e-3)


def _as_tensor(x: ArrayLike, what: str) -> torch.Tensor:
    t = x
    if isinstance(x, np.ndarray):
        try:  # shares memory (a memmap stays on disk until a chunk is read); never written
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                t = torch.from_numpy(x)
        except (TypeError, ValueError):  # negative strides, non-native byte order
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("=")))
    if not isinstance(t, torch.Tensor):
        raise DataError(f"knn: {what} must be a numpy array or a torch tensor, got {type(x).__name__}")
    if t.dim() != 2:
        raise DataError(f"knn: {what} must be a 2-D (rows, dim) array, got shape {tuple(t.shape)}")
    if t.dtype not in _FLOATS:
        raise DataError(f"knn: {what} must be float16/bfloat16/float32, got {t.dtype}")
    return t


def _check_norms(block: torch.Tensor, what: str, offset: int) -> None:
    norms = torch.linalg.vector_norm(block, dim=1, dtype=torch.float32)
    bad = torch.nonzero(~((norms - 1).abs() <= NORM_TOL))
    if len(bad):
        i = int(bad[0])
        raise DataError(
            f"knn: {what} row {offset + i} has norm {norms[i].item():.4g}, not 1: pass L2-normalised "
            "embeddings (model.embed gives them) or normalize=True"
        )


def _prepare(
    block: torch.Tensor, dtype: torch.dtype, device: torch.device, normalize: bool, what: str, offset: int
) -> torch.Tensor:
    """One block on ``device`` in ``dtype``: normalised, or checked to be."""
    block = block.to(device=device, non_blocking=True)
    if normalize:
        block = torch.nn.functional.normalize(block.float(), dim=1)
    else:
        _check_norms(block, what, offset)
    return block.to(dtype)


def default_compute_dtype(device: str | torch.device) -> str:
    """float16 on a GPU; float32 on a CPU (bfloat16 is faster on CPUs with AVX512-BF16/AMX: see
    ``bench/bench_knn.py``)."""
    return "float16" if torch.device(device).type == "cuda" else "float32"


def _rescore(
    q: torch.Tensor, g: torch.Tensor, idx: torch.Tensor, dev: torch.device, normalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact float32 similarities of the chosen neighbours (re-sorted): the reduced-precision
    search picks the candidates, the returned scores do not carry its rounding."""
    qf = q.to(dev).float()
    gf = g[idx.flatten().cpu()].to(dev).float().view(*idx.shape, -1)  # (q, k, D)
    if normalize:
        qf, gf = torch.nn.functional.normalize(qf, dim=-1), torch.nn.functional.normalize(gf, dim=-1)
    sims = torch.einsum("qd,qkd->qk", qf, gf)
    sims, order = sims.sort(dim=1, descending=True)
    return sims, idx.gather(1, order)


def _check_knn(q, g, k, chunk_size: int, query_chunk: int, compute_dtype: str | None, device) -> tuple:
    """One error line for any bad argument of :func:`knn`; the compute dtype and device."""
    if q.shape[1] != g.shape[1]:
        raise DataError(f"knn: queries have {q.shape[1]} dimensions, the gallery {g.shape[1]}")
    if not isinstance(k, int) or k < 1:
        raise PipelineError(f"knn: k must be a positive integer, got {k!r}")
    if k > g.shape[0]:
        raise PipelineError(f"knn: k={k} is larger than the gallery ({g.shape[0]} rows)")
    if chunk_size < 1 or query_chunk < 1:
        raise PipelineError(f"knn: chunk sizes must be >= 1, got {chunk_size} and {query_chunk}")
    name = compute_dtype or default_compute_dtype(device)
    if name not in _DTYPES:
        raise PipelineError(f"knn: compute_dtype must be one of {', '.join(_DTYPES)}, got '{name}'")
    return _DTYPES[name], torch.device(device)


def knn(
    queries: ArrayLike,
    gallery: ArrayLike,
    k: int,
    chunk_size: int = 32768,
    device: str | torch.device = "cpu",
    *,
    query_chunk: int = 2048,
    compute_dtype: str | None = None,
    normalize: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-``k`` of each query among the gallery rows.

    Returns ``(sims, idx)``: (Q, k) float32 similarities, best first, and (Q, k) int64 gallery
    row indices. Inputs are (Q, D) / (G, D) float16/bfloat16/float32 arrays or tensors (a numpy
    memmap is read chunk by chunk), rows L2-normalised (checked; ``normalize=True`` normalises
    them instead). The gallery is read ``chunk_size`` rows at a time (converted and moved to
    ``device`` once per chunk) against every ``query_chunk`` queries; a running top-k is merged
    after each block, so peak memory is the converted queries, the (Q, k) result and one
    ``query_chunk x chunk_size`` block (256 MB at the defaults in float32).

    ``compute_dtype``: float32 (exact) | bfloat16 | float16 (default
    :func:`default_compute_dtype`). In the reduced precisions the matrix products (and the
    choice of neighbours) carry ~3 significant digits; the returned similarities are recomputed
    in float32 for the chosen neighbours. ``k`` larger than the gallery is one clear error.
    """
    q, g = _as_tensor(queries, "queries"), _as_tensor(gallery, "gallery")
    dtype, dev = _check_knn(q, g, k, chunk_size, query_chunk, compute_dtype, device)
    n_q = q.shape[0]
    best_s = torch.full((n_q, k), -math.inf, device=dev)
    best_i = torch.zeros((n_q, k), dtype=torch.long, device=dev)
    if n_q == 0:
        return best_s.cpu().numpy(), best_i.cpu().numpy()
    starts = range(0, n_q, query_chunk)
    with torch.inference_mode():
        qs = [_prepare(q[i : i + query_chunk], dtype, dev, normalize, "queries", i) for i in starts]
        for g0 in range(0, g.shape[0], chunk_size):
            gb = _prepare(g[g0 : g0 + chunk_size], dtype, dev, normalize, "gallery", g0)
            kb = min(k, gb.shape[0])
            for q0, qb in zip(starts, qs):
                rows = slice(q0, q0 + qb.shape[0])
                s, i = (qb @ gb.T).topk(kb, dim=1)
                s = torch.cat([best_s[rows], s.float()], dim=1)
                i = torch.cat([best_i[rows], i + g0], dim=1)
                top, pos = s.topk(k, dim=1)
                best_s[rows], best_i[rows] = top, i.gather(1, pos)
        if dtype != torch.float32:  # (256, k, D) float32 gathered rows at a time: ~50 MB at k=100, D=512
            for q0 in range(0, n_q, RESCORE_CHUNK):
                rows = slice(q0, q0 + RESCORE_CHUNK)
                best_s[rows], best_i[rows] = _rescore(q[rows], g, best_i[rows], dev, normalize)
    return best_s.cpu().numpy(), best_i.cpu().numpy()


def knn_class_scores(
    sims: np.ndarray,
    idx: np.ndarray,
    gallery_labels: np.ndarray,
    num_classes: int,
    power: float = 1.0,
    norm: str = "k",
    sparse: bool = False,
) -> np.ndarray | TopK:
    """(Q, num_classes) float32 class scores in [0, 1] from the neighbours of :func:`knn`
    (``sparse``: as a :class:`~pipeline.scores.TopK` of the neighbours' classes, for label maps
    too large for a dense row: GLD v2's 81k).

    Each neighbour votes for its gallery label with weight ``max(sim, 0)^power``; a class's score
    is the sum of its votes divided by ``k`` (``norm="k"``: keeps the similarity scale, so a query
    whose neighbours are all far, such as a non-landmark, scores low everywhere) or by the sum of
    all votes (``norm="total"``: each row is a share, summing to 1 when every neighbour has a
    class). Neighbours with a negative label (non-landmark gallery images) vote for no class but
    still count in the total, lowering the landmark scores.
    """
    sims, idx = np.asarray(sims), np.asarray(idx)
    labels = np.asarray(gallery_labels)
    if sims.shape != idx.shape or sims.ndim != 2:
        raise DataError(f"knn_class_scores: sims {sims.shape} and idx {idx.shape} must be the same (Q, k) shape")
    if labels.ndim != 1:
        raise DataError(f"knn_class_scores: gallery_labels must be 1-D, got shape {labels.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= len(labels)):
        raise DataError(f"knn_class_scores: neighbour index {int(idx.max())} outside the {len(labels)} gallery labels")
    if labels.size and labels.max() >= num_classes:
        raise DataError(f"knn_class_scores: gallery label {int(labels.max())} >= num_classes ({num_classes})")
    if not (math.isfinite(power) and power > 0):
        raise PipelineError(f"knn_class_scores: power must be > 0, got {power}")
    if norm not in ("k", "total"):
        raise PipelineError(f"knn_class_scores: norm must be 'k' or 'total', got '{norm}'")
    w = np.clip(sims.astype(np.float64), 0.0, 1.0) ** power
    lab = labels[idx]
    denom = np.full((sims.shape[0], 1), float(sims.shape[1])) if norm == "k" else w.sum(1, keepdims=True)
    if sparse:  # votes summed per (row, class); non-landmark neighbours (-1) vote for none
        votes = TopK(lab.astype(np.int32), (w / np.maximum(denom, 1e-12)).astype(np.float32), num_classes)
        return merge([votes], [1.0], k=sims.shape[1])
    out = np.zeros((sims.shape[0], num_classes), dtype=np.float64)
    rows = np.broadcast_to(np.arange(sims.shape[0])[:, None], lab.shape)
    ok = lab >= 0
    np.add.at(out, (rows[ok], lab[ok]), w[ok])
    return (out / np.maximum(denom, 1e-12)).astype(np.float32)


def _check_exponents(alpha: float, beta: float) -> None:
    for what, v in (("alpha", alpha), ("beta", beta)):
        if not (math.isfinite(v) and v >= 0):
            raise PipelineError(f"fuse: {what} must be a finite number >= 0, got {v}")
    if alpha + beta <= 0:
        raise PipelineError("fuse: alpha and beta cannot both be 0")


def fuse(
    clf_probs: np.ndarray | TopK, knn_scores: np.ndarray | TopK, alpha: float = 1.0, beta: float = 1.0
) -> np.ndarray | TopK:
    """``clf_probs^alpha * knn_scores^beta``: (Q, C) float32 scores in [0, 1].

    A class must be likely under both to score high; the exponents weight the two (Ha et al.
    2020 multiply powers of classifier and retrieval scores). Rows are not renormalised, so a
    query that both find unlikely (a non-landmark) keeps a low maximum. Top-k inputs
    (:class:`~pipeline.scores.TopK`) are fused over the union of their candidates.
    """
    if isinstance(clf_probs, TopK) and isinstance(knn_scores, TopK):
        _check_exponents(alpha, beta)
        k = clf_probs.k
        return combine(clf_probs, knn_scores, lambda p, s: np.clip(p, 0, 1) ** alpha * np.clip(s, 0, 1) ** beta, k)
    p, s = np.asarray(clf_probs, dtype=np.float64), np.asarray(knn_scores, dtype=np.float64)
    if p.shape != s.shape or p.ndim != 2:
        raise DataError(f"fuse: classifier probs {p.shape} and kNN scores {s.shape} must be the same (Q, C) shape")
    _check_exponents(alpha, beta)
    for what, v in (("classifier probs", p), ("kNN scores", s)):
        if v.size and not (np.isfinite(v).all() and v.min() >= -1e-6 and v.max() <= 1 + 1e-6):
            raise DataError(f"fuse: {what} must lie in [0, 1]")
    return (np.clip(p, 0, 1) ** alpha * np.clip(s, 0, 1) ** beta).astype(np.float32)


def nearest_file(manifest: str) -> str:
    """The file of a run folder holding each query's similarity to its nearest training photo."""
    return f"nearest_{manifest}.npz"


def save_nearest(path: str | Path, ids: np.ndarray, sims: np.ndarray) -> None:
    """``ids`` and their top-1 similarities (float32), written atomically."""
    sims = np.asarray(sims, dtype=np.float32)
    if sims.shape != (len(ids),) or not np.isfinite(sims).all():
        raise PipelineError(f"{path}: {len(ids)} ids but similarities of shape {sims.shape} (or non-finite)")
    with atomic_write(path, "wb") as f:
        np.savez(f, ids=np.asarray(ids).astype(str), sim=sims)


def load_nearest(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, top-1 similarities in [-1, 1]) of :func:`save_nearest`; one error line when absent or bad."""
    try:
        with np.load(path, allow_pickle=False) as z:
            ids, sims = z["ids"], z["sim"].astype(np.float64)
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: nearest-photo similarities missing or unreadable ({e}); run 'make embed'") from None
    if sims.shape != ids.shape or not (np.isfinite(sims).all() and np.abs(sims).max(initial=0) <= 1 + NORM_TOL):
        raise DataError(f"{path}: similarities must be finite, within [-1, 1], one per id; run 'make embed' again")
    return ids, sims
