"""Top-k class scores (pipeline/scores.py): the competition's scores from k candidates per row."""

import numpy as np
import pytest

from pipeline.metrics import gap_from_probs, score_all, top1
from pipeline.scores import TopK, choose_k, merge, topk


def _probs(rng, n, c, ties=False):
    p = rng.random((n, c)).astype(np.float32)
    if ties:
        p = np.round(p * 4) / 4  # many equal scores: the tie rule must match the dense argmax
    return p / p.sum(axis=1, keepdims=True)


def test_choose_k_keeps_small_label_maps_dense():
    assert choose_k(20) is None and choose_k(1000) is None
    assert choose_k(81_313) == 20
    assert choose_k(81_313, requested=50) == 50 and choose_k(30, requested=50) is None


@pytest.mark.parametrize("ties", [False, True])
def test_topk_rows_are_sorted_and_top1_equals_the_dense_argmax(ties):
    rng = np.random.default_rng(0)
    p = _probs(rng, 300, 40, ties)
    t = topk(p, 7)
    assert t.idx.shape == (300, 7) and t.num_classes == 40
    assert (np.diff(t.val.astype(np.float64), axis=1) <= 0).all()
    pd_, cd = top1(p)
    pt, ct = top1(t)
    np.testing.assert_array_equal(pd_, pt)
    np.testing.assert_allclose(cd, ct)
    np.testing.assert_allclose(np.sort(p, axis=1)[:, ::-1][:, :7], t.val)


def test_merge_equals_the_dense_weighted_ensemble_where_k_is_c():
    rng = np.random.default_rng(1)
    parts = [_probs(rng, 257, 30) for _ in range(3)]
    w = [0.5, 0.3, 0.2]
    dense = sum(wi * p for wi, p in zip(w, parts))
    merged = merge([topk(p, 30) for p in parts], w)
    np.testing.assert_allclose(merged.dense(), dense, atol=1e-6)


def test_merge_over_the_union_of_candidates():
    """A class outside one model's top-k contributes 0 from that model."""
    a = TopK(np.array([[3, 1]], dtype=np.int32), np.array([[0.6, 0.3]], dtype=np.float32), 10)
    b = TopK(np.array([[1, 7]], dtype=np.int32), np.array([[0.5, 0.4]], dtype=np.float32), 10)
    m = merge([a, b], [0.5, 0.5], k=3)
    assert m.idx.tolist() == [[1, 3, 7]]
    np.testing.assert_allclose(m.val, [[0.4, 0.3, 0.2]], atol=1e-7)


def test_scores_from_topk_equal_dense_scores():
    """GAP needs the top answer, top-5 five candidates: k = 20 loses nothing the leaderboard shows."""
    rng = np.random.default_rng(2)
    p = _probs(rng, 500, 200)
    labels = rng.integers(-2, 200, 500)  # with non-landmarks (-1) and other landmarks (-2)
    dense, sparse = score_all(p, labels), score_all(topk(p, 20), labels)
    assert dense.keys() == sparse.keys()
    for key in dense:
        assert sparse[key] == pytest.approx(dense[key], abs=1e-12), key
    assert gap_from_probs(topk(p, 20), labels) == pytest.approx(gap_from_probs(p, labels), abs=1e-12)


def test_a_label_outside_the_candidates_is_a_miss():
    t = TopK(np.array([[4, 2]], dtype=np.int32), np.array([[0.7, 0.2]], dtype=np.float32), 9)
    assert score_all(t, np.array([5]))["top5"] == 0.0
    assert score_all(t, np.array([2]))["top5"] == 1.0


def test_merge_skips_the_padding_of_rows_with_few_candidates():
    """A merged row with fewer distinct classes than k is padded with class -1 (score 0); merging
    it again must not count the padding as a class of the previous row."""
    a = TopK(np.array([[2, 5], [2, 5]], dtype=np.int32), np.array([[0.5, 0.5], [0.9, 0.1]], dtype=np.float32), 8)
    m = merge([a, a], [0.5, 0.5], k=3)  # 2 distinct classes per row: one padding slot
    assert m.idx[:, 2].tolist() == [-1, -1] and m.val[:, 2].tolist() == [0, 0]
    again = merge([m, m], [0.5, 0.5], k=3)
    np.testing.assert_array_equal(again.idx, m.idx)
    np.testing.assert_allclose(again.val, m.val)


def test_knn_votes_and_fusion_as_topk_equal_the_dense_ones():
    """At 81k classes kNN class scores and their fusion with the classifier are top-k: on a small
    label map they equal the dense computation on the union of candidates."""
    from pipeline.infer.retrieval import fuse, knn_class_scores

    rng = np.random.default_rng(4)
    c, q, k = 30, 50, 6
    sims = np.sort(rng.random((q, k)), axis=1)[:, ::-1]
    idx = rng.integers(0, 40, (q, k))
    g_labels = rng.integers(-1, c, 40)  # some non-landmark gallery photos (-1)
    dense_s = knn_class_scores(sims, idx, g_labels, c)
    sparse_s = knn_class_scores(sims, idx, g_labels, c, sparse=True)
    np.testing.assert_allclose(sparse_s.dense(), dense_s, atol=1e-6)
    p = _probs(rng, q, c)
    for alpha, beta in ((1.0, 1.0), (1.0, 0.0), (0.5, 2.0)):
        dense_f = fuse(p, dense_s, alpha, beta)
        sparse_f = fuse(topk(p, c), sparse_s, alpha, beta)
        np.testing.assert_allclose(sparse_f.dense(), dense_f, atol=1e-6)


def test_the_class_penalty_from_topk_pool_predictions_equals_the_dense_one():
    from pipeline.ensemble.postprocess import class_penalty

    rng = np.random.default_rng(5)
    pool = _probs(rng, 80, 25)
    np.testing.assert_allclose(class_penalty(topk(pool, 25)), class_penalty(pool), atol=1e-6)
    sparse = class_penalty(topk(pool, 4))  # classes outside each row's 4 best count 0
    np.testing.assert_allclose(sparse, class_penalty(topk(pool, 4).dense()), atol=1e-6)
