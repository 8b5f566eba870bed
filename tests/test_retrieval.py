"""kNN retrieval (pipeline/infer/retrieval.py): exact top-k on hand-built galleries, chunking, dtypes,
class scores, fusion, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import DataError, PipelineError
from pipeline.infer.retrieval import fuse, knn, knn_class_scores

pytestmark = pytest.mark.usefixtures("one_thread")


def unit(rows) -> np.ndarray:
    a = np.asarray(rows, dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def random_unit(n: int, d: int, seed: int) -> np.ndarray:
    return unit(np.random.default_rng(seed).normal(size=(n, d)))


# gallery: the 4 axes of R^4 and two diagonals; queries near known rows
GALLERY = unit([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0], [0, 0, 1, 1]])
QUERIES = unit([[1, 0.1, 0, 0], [0, 0, 1, 0.9], [0, 0.2, 0, 1]])


def test_knn_returns_the_known_neighbours_best_first() -> None:
    sims, idx = knn(QUERIES, GALLERY, k=3)
    assert sims.dtype == np.float32 and idx.dtype == np.int64 and sims.shape == idx.shape == (3, 3)
    assert idx.tolist() == [[0, 4, 1], [5, 2, 3], [3, 5, 1]]
    np.testing.assert_allclose(sims, np.take_along_axis(QUERIES @ GALLERY.T, idx, 1), rtol=1e-6)
    assert (np.diff(sims, axis=1) <= 0).all()


@pytest.mark.parametrize("chunk_size, query_chunk", [(1, 1), (2, 2), (5, 1), (4096, 4096)])
def test_chunking_does_not_change_the_result(chunk_size: int, query_chunk: int) -> None:
    sims, idx = knn(QUERIES, GALLERY, k=3, chunk_size=chunk_size, query_chunk=query_chunk)
    ref = knn(QUERIES, GALLERY, k=3, chunk_size=6, query_chunk=3)
    np.testing.assert_array_equal(idx, ref[1])
    np.testing.assert_allclose(sims, ref[0], rtol=1e-6)


def test_matches_brute_force_on_random_data_with_float16_and_torch_inputs() -> None:
    q, g = random_unit(37, 16, 0), random_unit(500, 16, 1)
    full = q @ g.T
    ref_idx = np.argsort(-full, axis=1, kind="stable")[:, :10]
    sims, idx = knn(q, g, k=10, chunk_size=64, query_chunk=8)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, np.take_along_axis(full, ref_idx, 1), rtol=1e-5, atol=1e-6)
    s16, i16 = knn(torch.from_numpy(q).half(), torch.from_numpy(g).half(), k=10, chunk_size=64)
    np.testing.assert_allclose(s16, sims, atol=2e-3)  # float16 storage, float32 arithmetic
    assert (i16[:, 0] == idx[:, 0]).mean() > 0.9
    sb, ib = knn(q, g, k=10, compute_dtype="bfloat16")
    np.testing.assert_allclose(sb, sims, atol=2e-2)
    assert (ib[:, 0] == idx[:, 0]).mean() > 0.8


def test_memmap_gallery(tmp_path) -> None:
    g = np.lib.format.open_memmap(tmp_path / "g.npy", mode="w+", dtype=np.float16, shape=GALLERY.shape)
    g[:] = GALLERY
    g.flush()
    g = np.load(tmp_path / "g.npy", mmap_mode="r")
    assert knn(QUERIES, g, k=1, chunk_size=2)[1][:, 0].tolist() == [0, 5, 3]


def test_knn_errors_are_one_line() -> None:
    with pytest.raises(PipelineError, match=r"k=7 is larger than the gallery \(6 rows\)"):
        knn(QUERIES, GALLERY, k=7)
    with pytest.raises(PipelineError, match="k must be a positive integer"):
        knn(QUERIES, GALLERY, k=0)
    with pytest.raises(DataError, match="queries have 3 dimensions, the gallery 4"):
        knn(QUERIES[:, :3], GALLERY, k=1)
    with pytest.raises(DataError, match="gallery row 2 has norm 2, not 1"):
        knn(QUERIES, GALLERY * np.array([[1], [1], [2], [1], [1], [1]], dtype=np.float32), k=1)
    with pytest.raises(DataError, match="float16/bfloat16/float32"):
        knn(QUERIES.astype(np.int32), GALLERY, k=1)
    with pytest.raises(PipelineError, match="compute_dtype must be one of"):
        knn(QUERIES, GALLERY, k=1, compute_dtype="int8")


def test_normalize_option_and_empty_queries() -> None:
    idx = knn(QUERIES * 5, GALLERY * 3, k=2, normalize=True)[1]
    np.testing.assert_array_equal(idx, knn(QUERIES, GALLERY, k=2)[1])
    sims, idx = knn(np.zeros((0, 4), np.float32), GALLERY, k=2)
    assert sims.shape == idx.shape == (0, 2)


# ----------------------------------------------------------------------------- class scores and fusion


def test_class_scores_by_hand() -> None:
    sims = np.array([[0.9, 0.8, 0.5], [0.3, 0.2, 0.1]], dtype=np.float32)
    idx = np.array([[0, 1, 2], [2, 3, 0]])
    labels = np.array([1, 1, 0, -1])  # gallery row 3 is a non-landmark
    scores = knn_class_scores(sims, idx, labels, num_classes=3)
    np.testing.assert_allclose(scores, [[0.5 / 3, 1.7 / 3, 0], [0.3 / 3, 0.1 / 3, 0]], rtol=1e-6)
    shares = knn_class_scores(sims, idx, labels, num_classes=3, norm="total")
    np.testing.assert_allclose(shares[0], [0.5 / 2.2, 1.7 / 2.2, 0], rtol=1e-6)
    np.testing.assert_allclose(shares[1], [0.3 / 0.6, 0.1 / 0.6, 0], rtol=1e-6)  # the non-landmark vote lowers it
    squared = knn_class_scores(sims, idx, labels, num_classes=3, power=2.0)
    np.testing.assert_allclose(squared[0, 1], (0.81 + 0.64) / 3, rtol=1e-6)


def test_non_landmark_query_scores_low() -> None:
    """A query far from every gallery image gets a low maximum score; a landmark query a high one."""
    g = random_unit(200, 32, 3)
    labels = np.repeat(np.arange(20), 10)
    near = unit(g[[5]] + 0.05 * random_unit(1, 32, 4))  # a view of class 0
    far = random_unit(1, 32, 5)  # unrelated: cosines ~ N(0, 1/32)
    sims, idx = knn(np.vstack([near, far]), g, k=5)
    scores = knn_class_scores(sims, idx, labels, num_classes=20)
    assert scores[0].argmax() == 0 and scores[0].max() > 0.15
    assert scores[1].max() < 0.1 and sims[1, 0] < 0.6 < sims[0, 0]  # sims[:, 0]: the threshold input


def test_fuse_is_a_product_of_powers_in_0_1() -> None:
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2]], dtype=np.float32)
    s = np.array([[0.5, 0.0, 0.1], [0.05, 0.0, 0.0]], dtype=np.float32)
    out = fuse(p, s, alpha=0.5, beta=2.0)
    np.testing.assert_allclose(out, p**0.5 * s**2, rtol=1e-6)
    assert out.dtype == np.float32 and ((out >= 0) & (out <= 1)).all()
    np.testing.assert_allclose(fuse(p, s, alpha=1.0, beta=0.0), p)
    assert out[1].max() < out[0].max()  # weak retrieval support keeps the row low


def test_fuse_errors() -> None:
    p = np.full((2, 3), 0.3, dtype=np.float32)
    with pytest.raises(DataError, match="must be the same"):
        fuse(p, p[:, :2])
    with pytest.raises(DataError, match=r"kNN scores must lie in \[0, 1\]"):
        fuse(p, p * 4)
    with pytest.raises(PipelineError, match="alpha must be a finite number >= 0"):
        fuse(p, p, alpha=-1)
    with pytest.raises(PipelineError, match="cannot both be 0"):
        fuse(p, p, alpha=0, beta=0)


def test_class_score_errors() -> None:
    sims, idx = knn(QUERIES, GALLERY, k=2)
    with pytest.raises(DataError, match="outside the 3 gallery labels"):
        knn_class_scores(sims, idx, np.array([0, 1, 2]), num_classes=3)
    with pytest.raises(DataError, match=r"gallery label 5 >= num_classes \(3\)"):
        knn_class_scores(sims, idx, np.array([0, 1, 2, 5, 0, 1]), num_classes=3)
