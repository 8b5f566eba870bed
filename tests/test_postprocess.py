"""Non-landmark post-processing: the per-class penalty, the threshold and landmark-ness, alone and in the ensemble."""

import numpy as np
import pandas as pd
import pytest

from common.errors import ConfigError, DataError, PipelineError
from pipeline.ensemble.blend import stream_ensemble
from pipeline.ensemble.plan import final_answers, landmark_rows, make_plan
from pipeline.ensemble.postprocess import (
    PostProcess,
    TuningSet,
    class_penalty,
    fit_landmark,
    fit_postprocess,
    tune_landmark,
    tune_strength,
    tune_threshold,
)
from pipeline.ensemble.stage import run_ensemble
from pipeline.infer.retrieval import load_nearest, nearest_file, save_nearest
from pipeline.metrics import gap, top1
from tests.ensemble_helpers import config, onehot_probs, run_dir, write_data, write_pred

NAN = float("nan")


def test_class_penalty_hand_case():
    pool = np.array([[0.8, 0.2, 0.0], [0.6, 0.2, 0.2]])
    # mean per class: 0.7, 0.2, 0.1 -> divided by the largest (0.7)
    np.testing.assert_allclose(class_penalty(pool), [1.0, 0.2 / 0.7, 0.1 / 0.7])
    np.testing.assert_allclose(class_penalty(np.zeros((2, 3))), [0, 0, 0])  # no mass: no penalty


def test_postprocess_changes_what_it_should():
    pred = np.array([0, 1, -1, 2])
    conf = np.array([0.8, 0.6, NAN, 0.3])
    r = np.array([1.0, 0.5, 0.0])
    p, c = PostProcess(strength=0.5, penalty=r)(pred, conf)
    # conf * (1 - 0.5 * r[pred]): 0.8 * 0.5, 0.6 * 0.75, empty stays empty, 0.3 * 1
    np.testing.assert_allclose(c, [0.4, 0.45, NAN, 0.3])
    assert list(p) == [0, 1, -1, 2]  # the penalty never changes the class
    p, c = PostProcess(strength=0.5, penalty=r, threshold=0.35)(pred, conf)
    assert list(p) == [0, 1, -1, -1] and np.isnan(c[3])  # 0.3 < 0.35: left empty
    assert list(conf[:2]) == [0.8, 0.6]  # inputs untouched
    assert PostProcess()(pred, conf)[1][0] == 0.8 and not PostProcess().active


def _nonlandmark_case():
    """Landmarks answered right (class 1, 2 at 0.6; class 0 at 0.95); non-landmarks fall into
    class 0 at 0.8, so they rank above most correct answers."""
    pred = np.array([0, 1, 1, 2, 0, 0, 0, 0])
    conf = np.array([0.95, 0.6, 0.6, 0.6, 0.8, 0.8, 0.8, 0.8])
    labels = np.array([0, 1, 1, 2, -1, -1, -1, -1])
    return pred, conf, labels


def test_penalty_moves_non_landmarks_down_and_raises_gap():
    pred, conf, labels = _nonlandmark_case()
    # ranked: class-0 landmark (right, P 1/1), 4 non-landmarks (wrong), 3 landmarks (P 2/6, 3/7, 4/8); M = 4
    assert gap(pred, conf, labels) == pytest.approx((1 + 2 / 6 + 3 / 7 + 4 / 8) / 4)
    r = np.array([1.0, 0.125, 0.125])
    # strength 0.3: non-landmarks 0.8 * 0.7 = 0.56 < landmarks 0.6 * (1 - 0.0375) = 0.5775: all right first
    assert gap(*PostProcess(0.3, r)(pred, conf), labels) == pytest.approx(1.0)
    strength, best = tune_strength(pred, conf, labels, r)
    assert best == pytest.approx(1.0)
    assert strength == pytest.approx(0.3)  # the weakest strength that reaches it (0.25 is not enough)
    assert gap(*PostProcess(0.25, r)(pred, conf), labels) < 1.0


def test_threshold_is_exact_and_never_helps_gap():
    pred, conf, labels = _nonlandmark_case()
    t, best = tune_threshold(pred, conf, labels)
    assert t == 0.0 and best == pytest.approx(gap(pred, conf, labels))  # a threshold cannot raise GAP
    # the tuner's prefix arithmetic matches gap() at every cut it could choose
    for cut in (0.95, 0.8, 0.6):
        kept = conf >= cut
        g = gap(np.where(kept, pred, -1), np.where(kept, conf, NAN), labels)
        assert g <= best + 1e-12
    # with UNLABELLED rows and empty answers mixed in
    pred2, conf2 = np.append(pred, [1, -1]), np.append(conf, [0.99, NAN])
    labels2 = np.append(labels, [-3, 2])
    t2, best2 = tune_threshold(pred2, conf2, labels2)
    assert t2 == 0.0 and best2 == pytest.approx(gap(pred2, conf2, labels2))


def test_fit_postprocess_learns_r_on_one_pool_half_and_tunes_on_the_other():
    pred, conf, labels = _nonlandmark_case()
    oof = slice(0, 4)  # the landmark rows play the OOF rows
    pool = onehot_probs(np.zeros(10, dtype=int), np.full(10, 0.8))  # non-landmarks -> class 0
    data = TuningSet(pred[oof], conf[oof], labels[oof], pool, pool_in_tuning=True, seed=0)
    r_half, (p, c, lab) = data.split()
    assert len(lab) == 4 + 5 and (lab[4:] == -1).all()  # OOF rows + the held-out pool half
    np.testing.assert_allclose(r_half, [1.0, 0.125, 0.125])
    pp, report = fit_postprocess(data, "tune", "tune")
    assert report["strength"] == pytest.approx(0.3) and report["threshold"] == 0.0
    assert report["tune_gap"] == pytest.approx(1.0) and report["tune_gap_before"] < 1.0
    np.testing.assert_allclose(pp.penalty, class_penalty(pool))  # the final r: the whole pool
    fixed, rep = fit_postprocess(data, 0.5, None)
    assert fixed.threshold == 0.5 and fixed.strength == 0 and fixed.penalty is None
    assert rep["tune_gap"] <= rep["tune_gap_before"]
    with pytest.raises(DataError, match="needs the non-landmark pool"):
        fit_postprocess(TuningSet(pred, conf, labels), None, "tune")


@pytest.fixture()
def pool_runs(tmp_path):
    """One model, two folds: OOF landmark rows, a non-landmark pool, an internal test split with
    landmarks and non-landmarks (the layout of _nonlandmark_case)."""
    write_data(tmp_path)
    pred, conf, labels = _nonlandmark_case()
    test = onehot_probs(pred, conf)
    oof_ids = np.array([f"o{i}" for i in range(8)])
    oof_labels = np.array([0, 1, 1, 2, 0, 1, 2, 2])
    oof = onehot_probs(oof_labels, np.where(oof_labels == 0, 0.95, 0.6))
    pool = onehot_probs(np.zeros(12, dtype=int), np.full(12, 0.8))
    for fold in (0, 1):
        d = run_dir(tmp_path, "m", fold)
        rows = np.arange(8) % 2 == fold
        write_pred(d, "oof", oof_ids[rows], oof[rows], oof_labels[rows])
        write_pred(d, "test", [f"t{i}" for i in range(8)], test, labels)
        write_pred(d, "nonlandmark", [f"n{i}" for i in range(12)], pool, np.full(12, -1))
    return tmp_path


def test_ensemble_stage_reports_each_variant_held_out(pool_runs):
    out = run_ensemble(config(pool_runs, threshold="tune", penalty="tune"))
    rows = out["rows"].set_index(["model", "fold"])
    base = rows.loc[("ensemble", "test"), "gap"]
    assert base == pytest.approx((1 + 2 / 6 + 3 / 7 + 4 / 8) / 4)
    assert rows.loc[("ensemble+penalty", "test"), "gap"] == pytest.approx(1.0)  # held out: better
    assert rows.loc[("ensemble+threshold", "test"), "gap"] == pytest.approx(base)  # tuned to 0: no change
    assert rows.loc[("ensemble+threshold", "test"), "threshold"] == 0.0
    assert rows.loc[("ensemble+penalty+threshold", "test"), "gap"] == pytest.approx(1.0)
    assert rows.loc[("ensemble+penalty", "cv"), "tune_gap"] >= rows.loc[("ensemble", "cv"), "tune_gap"]
    # the internal CSV gets the full post-processing: the class-0 landmark 0.95 * (1 - 0.3 * 1)
    sub = pd.read_csv(out["submission"], dtype=str, keep_default_na=False)
    assert sub["landmarks"].iloc[0] == "1234 0.665000"
    assert (sub["landmarks"] != "").all()


def test_a_fixed_threshold_leaves_low_answers_empty(pool_runs):
    out = run_ensemble(config(pool_runs, threshold="0.7"))
    sub = pd.read_csv(out["submission"], dtype=str, keep_default_na=False)
    # confidences 0.95, 0.6 x3, 0.8 x4: the three 0.6 answers are left empty
    assert list(sub["landmarks"] == "") == [False, True, True, True, False, False, False, False]
    rows = out["rows"].set_index(["model", "fold"])
    # empty answers on right rows lose them: (1 + 0 ...) -> only the class-0 landmark counts: 1/4
    assert rows.loc[("ensemble+threshold", "test"), "gap"] == pytest.approx(1 / 4)


def test_penalty_without_pool_predictions_is_one_error(pool_runs):
    (pool_runs / "runs" / "exp" / "m" / "fold1" / "nonlandmark.npz").unlink()
    with pytest.raises(DataError, match=r"nonlandmark\.npz.*manifests=nonlandmark"):
        run_ensemble(config(pool_runs, penalty="tune"))
    assert not (pool_runs / "submissions").exists()


# --------------------------------------------------------------------------- landmark-ness


def test_landmark_ness_scales_by_the_nearest_photo_similarity():
    pred = np.array([0, 1, -1, 2])
    conf = np.array([0.8, 0.6, NAN, 0.5])
    sim = np.array([0.5, 1.0, 0.9, -0.2])
    p, c = PostProcess(landmark=0.125)(pred, conf, sim)  # power 16 * 0.125 = 2
    np.testing.assert_allclose(c, [0.8 * 0.25, 0.6, NAN, 0.0])  # a negative cosine: 0
    assert list(p) == [0, 1, -1, 2] and PostProcess(landmark=0.125).active
    assert "landmark-ness 0.125" in PostProcess(landmark=0.125).describe()
    with pytest.raises(PipelineError, match="one nearest-photo similarity per answer"):
        PostProcess(landmark=0.5)(pred, conf)


def test_tuned_landmark_ness_moves_photos_far_from_training_photos_down():
    pred, conf, labels = _nonlandmark_case()
    sim = np.where(labels >= 0, 0.95, 0.5)  # landmarks near a training photo, non-landmarks far
    a, best = tune_landmark(pred, conf, labels, sim)
    # non-landmarks 0.8 * 0.5^p fall below landmarks 0.6 * 0.95^p for p = 16a > 0.448: a = 0.05
    assert best == pytest.approx(1.0) and a == pytest.approx(0.05)
    assert gap(*PostProcess(landmark=0.0)(pred, conf, sim), labels) < 1.0


def test_landmark_ness_tunes_without_a_pool():
    """OOF rows alone: wrong answers far from their class's photos, right ones near."""
    labels = np.array([0, 1, 2, 0, 1, 2])
    pred = np.array([0, 1, 2, 1, 2, 0])
    conf = np.array([0.6, 0.6, 0.6, 0.9, 0.9, 0.9])
    sim = np.array([0.9, 0.9, 0.9, 0.4, 0.4, 0.4])
    pp, report = fit_landmark(TuningSet(pred, conf, labels), sim, None, "tune")
    assert report["landmark"] > 0 and pp.landmark == report["landmark"]
    # right answers first: (1 + 1 + 1) / 6; before, the 3 wrong ones ranked above them
    assert report["tune_gap"] == pytest.approx(0.5)
    assert report["tune_gap_before"] == pytest.approx((1 / 4 + 2 / 5 + 3 / 6) / 6)
    fixed, rep = fit_landmark(TuningSet(pred, conf, labels), sim, None, 0.25)
    assert fixed.landmark == 0.25 and rep["tune_n"] == 6


def _write_nearest(root, sims: dict[str, dict[str, float]]):
    for fold in (0, 1):
        d = run_dir(root, "m", fold)
        for manifest, by_id in sims.items():
            ids = list(by_id)
            if manifest == "oof":  # a fold's OOF rows only
                ids = [i for i in ids if int(i[1:]) % 2 == fold]
            save_nearest(d / nearest_file(manifest), np.array(ids), np.array([by_id[i] for i in ids]))


def test_landmark_ness_in_the_plan_with_and_without_the_pool(pool_runs):
    _, _, labels = _nonlandmark_case()
    test_sim = {f"t{i}": (0.95 if labels[i] >= 0 else 0.3) for i in range(8)}
    _write_nearest(pool_runs, {"oof": {f"o{i}": 0.9 for i in range(8)}, "test": test_sim,
                               "nonlandmark": {f"n{i}": 0.3 for i in range(12)}})  # fmt: skip
    plan = make_plan(config(pool_runs, landmarkness="tune"))
    assert plan.lm_report["with_pool"] and plan.landmark.landmark > 0  # the pool is what it learns from
    assert plan.lm_report["tune_gap"] > plan.lm_report["tune_gap_before"]
    cv = [r for r in plan.rows if r["model"] == "ensemble+landmark"]
    assert len(cv) == 1 and cv[0]["fold"] == "cv"
    test = stream_ensemble(plan.paths("test"), "test", [plan.weights], "mean", plan.checker)[0]
    (row,) = landmark_rows(plan, "test", test, "test")
    assert row["gap"] == pytest.approx(1.0) and gap(*top1(test.probs), test.labels) < 0.9
    pred, conf = final_answers(plan, "test", test)
    assert conf[0] < 0.95 and conf[4] < conf[1]  # the non-landmark now ranks below the landmarks
    # without the pool's similarities: tuned on the OOF rows alone, no error
    (pool_runs / "runs" / "exp" / "m" / "fold1" / nearest_file("nonlandmark")).unlink()
    plan = make_plan(config(pool_runs, landmarkness="tune"))
    assert not plan.lm_report["with_pool"]
    # a missing similarity file is one line naming it
    (pool_runs / "runs" / "exp" / "m" / "fold0" / nearest_file("test")).unlink()
    with pytest.raises(DataError, match=r"fold0/nearest_test\.npz: nearest-photo similarities missing.*make embed"):
        landmark_rows(plan, "test", test, "test")


def test_bad_similarity_files_and_settings_are_one_line(tmp_path):
    path = tmp_path / "nearest_test.npz"
    np.savez(path, ids=np.array(["a", "b"]), sim=np.array([0.5, 3.0]))
    with pytest.raises(DataError, match="within \\[-1, 1\\]"):
        load_nearest(path)
    with pytest.raises(PipelineError, match="2 ids but similarities of shape"):
        save_nearest(path, np.array(["a", "b"]), np.array([0.5]))
    write_data(tmp_path)
    with pytest.raises(ConfigError, match="landmarkness must be none, tune or a number in \\[0, 1\\], got '2'"):
        config(tmp_path, landmarkness="2")
