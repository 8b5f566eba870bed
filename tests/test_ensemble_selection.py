"""Fitted ensembles that never fall far below their best member (candidates chosen by cross-fitting,
a guard), and weights that cannot scale the confidences (models named twice, overflowing weights)."""

import numpy as np
import pandas as pd
import pytest

from common import schema
from common.errors import ConfigError, PipelineError
from pipeline.ensemble.stage import run_ensemble
from pipeline.ensemble.weights import (
    CANDIDATES,
    FIT_TOLERANCE,
    check_weights,
    crossfit,
    greedy_weights,
    normalise,
    score,
    select_weights,
    single_scores,
)
from pipeline.runs.predfile import save_predictions
from pipeline.scores import topk
from tests.ensemble_helpers import config, meta, onehot_probs, run_dir, write_data, write_pred


def _members(seed: int, n: int = 120, bad: int = 3) -> tuple[np.ndarray, list[np.ndarray]]:
    """One good member (right on 80 % of rows, confident when right) and ``bad`` confidently wrong ones."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    right = rng.random(n) < 0.8
    good = onehot_probs(np.where(right, labels, (labels + 1) % 3), np.where(right, 0.9, 0.5))
    parts = [good]
    for _ in range(bad):
        wrong = rng.random(n) < 0.7
        parts.append(onehot_probs(np.where(wrong, (labels + 2) % 3, labels), rng.uniform(0.6, 1.0, n)))
    return labels, parts


@pytest.mark.parametrize("fit_method", ["cv", *CANDIDATES])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fitted_weights_stay_within_the_tolerance_of_the_best_member(fit_method, seed):
    labels, parts = _members(seed)
    best = single_scores(parts, labels, "gap").max()
    equal = score(parts, np.full(len(parts), 1 / len(parts)), labels, "weighted", "gap")
    assert equal < best - 0.1  # equal weights (the old mean) fall far below the good member here
    sel = select_weights(parts, labels, "weighted", "gap", seed=seed, fit_method=fit_method)
    assert sel.weights.min() >= 0 and sel.weights.sum() == pytest.approx(1.0)
    got = score(parts, sel.weights, labels, "weighted", "gap")
    assert got == pytest.approx(sel.in_sample)
    assert got >= best - FIT_TOLERANCE
    if fit_method == "equal":  # the guard replaced equal weights by the best member
        assert sel.guarded and sel.chosen == "best" and sel.weights[0] == 1.0


def test_cv_keeps_the_candidate_with_the_best_cross_fitted_score():
    labels, parts = _members(5, n=200, bad=2)
    sel = select_weights(parts, labels, "geometric", "gap", seed=3)
    assert set(sel.crossfit) == set(CANDIDATES)
    top = max(v["gap"] for v in sel.crossfit.values())
    first_best = next(c for c in CANDIDATES if sel.crossfit[c]["gap"] >= top - 1e-12)
    assert sel.chosen == first_best and not sel.guarded
    np.testing.assert_allclose(sel.weights, sel.candidates[sel.chosen])
    assert all(len(w) == 2 for w in sel.half_weights.values())  # one fit per half


def test_greedy_selection_with_replacement():
    labels, parts = _members(7, bad=2)
    w = greedy_weights(parts, labels, "weighted", "gap", rounds=10)
    assert score(parts, w, labels, "weighted", "gap") >= single_scores(parts, labels, "gap").max() - 1e-12
    assert np.allclose(w * 10, np.round(w * 10)) or np.allclose(w, np.round(w))  # pick counts over the bag
    # two equally good, independent members: the bag takes both
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    a = onehot_probs(np.where(rng.random(300) < 0.7, y, (y + 1) % 3), rng.uniform(0.4, 0.9, 300))
    b = onehot_probs(np.where(rng.random(300) < 0.7, y, (y + 2) % 3), rng.uniform(0.4, 0.9, 300))
    w = greedy_weights([a, b], y, "weighted", "gap")
    assert w.min() > 0


def test_weights_are_normalised_by_their_maximum_first():
    np.testing.assert_allclose(normalise([1e308, 1e308]), [0.5, 0.5])  # the sum would be inf
    np.testing.assert_allclose(normalise([3, 1]), [0.75, 0.25])
    np.testing.assert_allclose(normalise([1e-320, 0]), [1.0, 0.0])
    for bad in ([0, 0], [1, float("nan")], [-1, 2], [float("inf"), 1]):
        with pytest.raises(PipelineError, match="weights must be finite"):
            normalise(bad)
    with pytest.raises(PipelineError, match="sum to 0.5, not 1"):
        check_weights({"a": 0.5})  # what models=a,a weights=1,1 used to blend with


def _two_models(root):
    write_data(root)
    rng = np.random.default_rng(0)
    ids = np.array([f"o{i}" for i in range(40)])
    labels = rng.integers(0, 3, 40)
    for k, name in enumerate(("m1", "m2")):
        probs = onehot_probs((labels + k) % 3, rng.uniform(0.4, 0.9, 40))
        for fold in (0, 1):
            rows = np.arange(40) % 2 == fold
            d = run_dir(root, name, fold)
            write_pred(d, "oof", ids[rows], probs[rows], labels[rows])
            write_pred(d, "test", ids[:8], probs[:8], labels[:8])


def test_a_model_named_twice_is_refused(tmp_path):
    _two_models(tmp_path)
    for models, weights in ((["m1", "m1"], [1, 1]), (["m1", "m2", "m1"], [1, 1, 1])):
        cfg = config(tmp_path, models=models, method="weighted", weights=weights)
        with pytest.raises(ConfigError, match="m1 listed twice in 'models'"):
            run_ensemble(cfg)
    assert not (tmp_path / "submissions").exists()


def test_huge_weights_give_the_confidences_of_equal_weights(tmp_path):
    _two_models(tmp_path)
    huge = run_ensemble(config(tmp_path, models=["m1", "m2"], method="weighted", weights=[1e308, 1e308]))
    huge_csv = huge["submission"].read_text()
    one = run_ensemble(config(tmp_path, models=["m1", "m2"], method="weighted", weights=[1, 1]))
    assert huge_csv == one["submission"].read_text()
    sub = pd.read_csv(huge["submission"], dtype=str)
    confs = sub["landmarks"].str.split(" ").str[1].astype(float)
    assert (confs > 0.3).all()  # not '<id> 0.000000' on every row
    cv = huge["rows"][huge["rows"]["fold"] == "cv"].set_index("model")
    assert cv.loc["m1", "weight"] == pytest.approx(0.5) and cv.loc["m2", "weight"] == pytest.approx(0.5)


def _write_knn(root, name, fold, ids, probs, labels, manifest):
    path = run_dir(root, name, fold) / schema.pred_file(manifest, source="knn")
    save_predictions(path, ids, probs, labels, meta(3), dtype="float32")


@pytest.mark.parametrize("knn", [False, True])
def test_the_leaderboard_shows_what_the_fit_chose_and_its_cv(tmp_path, knn):
    """A good member and a confidently wrong one: the fit (also over the kNN files) stays near the
    good one, every candidate's cross-fitted score is on the leaderboard, one marked chosen."""
    write_data(tmp_path)
    labels, (good, bad) = _members(11, n=80, bad=1)
    ids = np.array([f"o{i}" for i in range(80)])
    for name, probs in (("good", good), ("bad", bad)):
        for fold in (0, 1):
            rows = np.arange(80) % 2 == fold
            for m, sel in (("oof", rows), ("test", np.arange(80) < 10)):
                if knn:
                    _write_knn(tmp_path, name, fold, ids[sel], probs[sel], labels[sel], m)
                else:
                    write_pred(run_dir(tmp_path, name, fold), m, ids[sel], probs[sel], labels[sel])
    out = run_ensemble(config(tmp_path, method="weighted", fit_weights=True, knn=knn))
    rows = out["rows"]
    cv = rows[rows["fold"] == "cv"].set_index("model")
    assert cv.loc["ensemble", "gap"] >= max(cv.loc["good", "gap"], cv.loc["bad", "gap"]) - FIT_TOLERANCE
    fits = rows[rows["model"].str.startswith("fit:")]
    assert sorted(fits["model"]) == sorted(f"fit:{c}" for c in CANDIDATES)
    assert (fits["fold"] == "cv").all() and fits["chosen"].sum() == 1  # CV column: cross-fitted
    chosen = fits.loc[fits["chosen"].astype(bool), "model"].iloc[0]
    assert chosen == f"fit:{out['plan'].fit['chosen']}"
    assert fits["gap"].between(0, 1).all()
    board = (tmp_path / "runs" / "exp" / "leaderboard.csv").read_text()
    assert "fit:greedy" in board and "cv_crossfit_gap" in board  # the chosen weights cross-fitted


def test_top_k_scores_fit_like_dense_ones():
    """OOF rows stored as top-k (large label maps): the same choice, weights and cross-fitted rows."""
    labels, parts = _members(3, n=60, bad=2)
    dense = select_weights(parts, labels, "weighted", "gap", seed=1)
    sparse = select_weights([topk(p, 3) for p in parts], labels, "weighted", "gap", seed=1)
    assert sparse.chosen == dense.chosen
    np.testing.assert_allclose(sparse.weights, dense.weights)
    cf_dense = crossfit(parts, labels, "weighted", "gap", seed=1)["probs"]
    cf_sparse = crossfit([topk(p, 3) for p in parts], labels, "weighted", "gap", seed=1)["probs"]
    np.testing.assert_allclose(cf_sparse.dense(), cf_dense, atol=1e-6)
