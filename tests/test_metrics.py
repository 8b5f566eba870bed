"""Metrics on hand-computed cases."""

import numpy as np
import pytest

from pipeline.metrics import gap, gap_from_probs, log_loss, score_all, topk_accuracy


def test_topk_accuracy_hand_case():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.4, 0.4, 0.2]])
    labels = np.array([1, 1, 0, 1])
    # row 3 ties 0 and 1 at 0.4: the lower index wins the tie, so top-1 is class 0 (wrong)
    assert topk_accuracy(probs, labels, 1) == pytest.approx(1 / 4)
    assert topk_accuracy(probs, labels, 2) == pytest.approx(3 / 4)  # row 2's label 0 is third
    assert topk_accuracy(probs, labels, 3) == 1.0
    assert topk_accuracy(probs, labels, 10) == 1.0  # k larger than the class count


def test_gap_hand_case():
    # sorted by confidence: q2 (right), q0 (wrong), q3 (right), q1 (right)
    pred = np.array([5, 7, 3, 9])
    conf = np.array([0.8, 0.2, 0.9, 0.5])
    labels = np.array([4, 7, 3, 9])
    # precisions at correct ranks: 1/1, 2/3, 3/4 -> (1 + 2/3 + 3/4) / 4 queries with a landmark
    assert gap(pred, conf, labels) == pytest.approx((1 + 2 / 3 + 3 / 4) / 4)


def test_gap_queries_without_landmark_take_ranks_but_not_the_denominator():
    pred = np.array([1, 2, 3])
    conf = np.array([0.9, 0.8, 0.7])
    labels = np.array([-1, 2, 3])  # the first query has no landmark: its prediction is wrong
    assert gap(pred, conf, labels) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_gap_ties_keep_input_order():
    pred = np.array([1, 2])
    conf = np.array([0.5, 0.5])
    # both queries have a landmark (M = 2); only the rank of the correct one differs
    assert gap(pred, conf, np.array([0, 2])) == pytest.approx((1 / 2) / 2)  # wrong first, right second
    assert gap(pred, conf, np.array([1, 0])) == pytest.approx((1 / 1) / 2)  # right first


def test_gap_perfect_and_empty():
    probs = np.eye(4)
    assert gap_from_probs(probs, np.arange(4)) == pytest.approx(1.0)
    assert np.isnan(gap(np.array([1]), np.array([0.3]), np.array([-1])))


def test_log_loss_and_score_all_ignore_unknown_labels():
    probs = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    assert log_loss(probs[:2], np.array([0, 0])) == pytest.approx(-(np.log(0.5) + np.log(0.9)) / 2)
    s = score_all(probs, np.array([0, 0, -1]))
    assert s["top1"] == pytest.approx(1.0) and s["top5"] == pytest.approx(1.0)
    assert score_all(probs, np.array([-1, -1, -1])) == {}


# ---- GAP with empty answers and the label kinds of common.schema (-1, -2, -3)
NAN = float("nan")


def test_gap_empty_answers_take_no_rank_and_are_not_wrong():
    labels = np.array([3, 1, 4, 2])  # four landmark queries: M = 4
    # q1 has no answer (pred -1, conf nan). Ranked: q0 right (P 1/1), q2 wrong, q3 right (P 2/3)
    pred, conf = np.array([3, -1, 5, 2]), np.array([0.9, NAN, 0.7, 0.4])
    assert gap(pred, conf, labels) == pytest.approx((1 + 2 / 3) / 4)
    # pred < 0 alone means "no answer", whatever the confidence
    assert gap(pred, np.array([0.9, 0.99, 0.7, 0.4]), labels) == pytest.approx((1 + 2 / 3) / 4)
    # the same query answered wrongly at the top: q1 wrong, q0 right (P 1/2), q2 wrong, q3 right (P 2/4)
    wrong = gap(np.array([3, 7, 5, 2]), np.array([0.9, 0.95, 0.7, 0.4]), labels)
    assert wrong == pytest.approx((1 / 2 + 2 / 4) / 4)
    # no answer at all: 0, not NaN (M = 4 landmark queries, none answered)
    assert gap(np.full(4, -1), np.full(4, NAN), labels) == 0.0


def test_gap_unlabelled_rows_are_left_out():
    pred, conf = np.array([1, 2, 3]), np.array([0.9, 0.8, 0.7])
    # q0 UNLABELLED (-3): no rank, not in M. q1 right (P 1/1), q2 right (P 2/2), M = 2
    assert gap(pred, conf, np.array([-3, 2, 3])) == pytest.approx((1 + 1) / 2)
    # the same row as NON_LANDMARK (-1): a wrong answer at rank 1, still not in M
    assert gap(pred, conf, np.array([-1, 2, 3])) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert np.isnan(gap(pred, conf, np.array([-3, -3, -3])))  # nothing scored
    assert np.isnan(gap(pred, conf, np.array([-1, -1, -3])))  # only non-landmarks: M = 0


def test_gap_other_landmark_counts_in_m_and_is_never_right():
    labels = np.array([-2, 2])  # q0 shows a landmark outside the label map: M = 2
    # q0 answered (its answer 7 can never be right) at rank 1; q1 right at rank 2 (P 1/2)
    assert gap(np.array([7, 2]), np.array([0.9, 0.8]), labels) == pytest.approx((1 / 2) / 2)
    # even an answer equal to the label value -2 is not right (it is "no answer": pred < 0)
    assert gap(np.array([-2, 2]), np.array([0.9, 0.8]), labels) == pytest.approx((1 / 1) / 2)
    # left without an answer: q1 right at rank 1 (P 1/1), but q0 still in M
    assert gap(np.array([-1, 2]), np.array([NAN, 0.8]), labels) == pytest.approx(1 / 2)


def test_gap_threshold_never_raises_gap():
    """Dropping the lowest-ranked answers leaves P(i) of the others unchanged (module docstring)."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = 40
        labels = rng.choice([-1, -2, 0, 1, 2], size=n)
        pred, conf = rng.integers(0, 3, n), rng.random(n)
        full = gap(pred, conf, labels)
        for t in np.quantile(conf, [0.1, 0.5, 0.9]):
            cut = np.where(conf >= t, pred, -1)
            assert gap(cut, np.where(conf >= t, conf, NAN), labels) <= full + 1e-12


def test_label_rank_matches_a_stable_sort():
    rng = np.random.default_rng(1)
    probs = rng.integers(0, 4, size=(50, 6)).astype(float)  # many ties
    labels = rng.integers(0, 6, 50)
    order = np.argsort(-probs, axis=1, kind="stable")
    expect = np.array([list(o).index(y) for o, y in zip(order, labels)])
    from pipeline.metrics import label_rank

    np.testing.assert_array_equal(label_rank(probs, labels), expect)


def test_score_all_with_every_label_kind():
    probs = np.array([[0.6, 0.4], [0.3, 0.7], [0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    labels = np.array([0, 0, -1, -2, -3])
    s = score_all(probs, labels)
    # top1/top5 over the class-labelled rows 0, 1 only: row 0 right, row 1 wrong
    assert s["top1"] == pytest.approx(1 / 2) and s["top5"] == pytest.approx(1.0)
    # GAP: row 4 left out; M = 3 (rows 0, 1, 3). Ranked by conf: row 2 (0.9, non-landmark: wrong),
    # row 3 (0.8, other landmark: wrong), row 1 (0.7, wrong), row 0 (0.6, right: P 1/4)
    assert s["gap"] == pytest.approx((1 / 4) / 3)
    only_other = score_all(probs[3:4], labels[3:4])  # no class label, but GAP is defined (0)
    assert np.isnan(only_other["top1"]) and only_other["gap"] == 0.0
