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
