"""Ensembling on hand-made prediction files: fold averages, methods, fitted weights, checks, outputs."""

import json
import logging
import re

import numpy as np
import pandas as pd
import pytest

from common import schema
from common.errors import ConfigError, DataError, PipelineError
from common.lock import folder_lock
from pipeline.ensemble.blend import answers, blend, stream_ensemble
from pipeline.ensemble.frame import submission
from pipeline.ensemble.inputs import Checker, pred_paths
from pipeline.ensemble.stage import run_ensemble
from pipeline.ensemble.weights import fit_weights, objective
from pipeline.metrics import score_all
from pipeline.runs.scan import scan
from tests.ensemble_helpers import LANDMARKS, config, label_map, onehot_probs, run_dir, write_data, write_pred

T_A = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.1, 0.8]])
T_B = np.array([[0.5, 0.4, 0.1], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]])
TEST_IDS, TEST_LABELS = ["t0", "t1", "t2"], [0, 1, -1]
OOF = {  # (model, fold) -> (ids, probs, labels)
    ("m1", 0): (["a", "b"], [[0.9, 0.1, 0], [0.2, 0.8, 0]], [0, 0]),
    ("m1", 1): (["c", "d"], [[0.1, 0.1, 0.8], [0.6, 0.3, 0.1]], [2, 0]),
    ("m2", 0): (["a", "b"], [[0.4, 0.6, 0], [0.1, 0.9, 0]], [0, 0]),
    ("m2", 1): (["c", "d"], [[0.3, 0.3, 0.4], [0.8, 0.1, 0.1]], [2, 0]),
}
TESTS = {("m1", 0): T_A, ("m1", 1): T_B, ("m2", 0): T_B, ("m2", 1): T_B}


@pytest.fixture()
def root(tmp_path):
    write_data(tmp_path)
    for (model, fold), (ids, probs, labels) in OOF.items():
        d = run_dir(tmp_path, model, fold)
        write_pred(d, "oof", ids, probs, labels)
        write_pred(d, "test", TEST_IDS, TESTS[model, fold], TEST_LABELS)
    return tmp_path


def _stream(root, weights, method="mean", manifest="test"):
    runs = scan(root / "runs", "exp").finished
    checker = Checker(root / "data" / "ds", label_map())
    return stream_ensemble(pred_paths(runs, manifest), manifest, [weights], method, checker)[0]


def test_fold_average_and_model_ensemble(root):
    seen = {}
    runs = scan(root / "runs", "exp").finished
    checker = Checker(root / "data" / "ds", label_map())
    mean = stream_ensemble(
        pred_paths(runs, "test"), "test", [{"m1": 0.5, "m2": 0.5}], "mean", checker, lambda n, p: seen.update({n: p})
    )[0]
    np.testing.assert_allclose(seen["m1"].probs, (T_A + T_B) / 2, atol=1e-6)  # fold average
    np.testing.assert_allclose(mean.probs, ((T_A + T_B) / 2 + T_B) / 2, atol=1e-6)
    assert list(mean.ids) == TEST_IDS and list(mean.labels) == TEST_LABELS
    weighted = _stream(root, {"m1": 0.75, "m2": 0.25}, "weighted")
    np.testing.assert_allclose(weighted.probs, 0.75 * (T_A + T_B) / 2 + 0.25 * T_B, atol=1e-6)


def test_float16_files_average_like_float32(tmp_path):
    write_data(tmp_path)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=(2, 50))
    for fold in (0, 1):
        write_pred(
            run_dir(tmp_path, "m", fold), "test", [f"i{k}" for k in range(50)], probs[fold], [0] * 50, dtype="float16"
        )
    out = _stream(tmp_path, {"m": 1.0})
    assert out.probs.dtype == np.float32
    np.testing.assert_allclose(out.probs, probs.mean(axis=0), atol=1e-3)  # float16: 3 significant digits


def test_geometric_differs_from_mean_where_it_should():
    m1 = np.array([[0.9, 0.1, 0.0], [0.2, 0.5, 0.3]])
    m2 = np.array([[0.0, 0.45, 0.55], [0.2, 0.5, 0.3]])
    w = np.array([0.5, 0.5])
    mean, geo = blend([m1, m2], w, "mean"), blend([m1, m2], w, "geometric")
    # row 0: the mean follows m1's confident class 0 (0.45 vs 0.275 vs 0.275), which m2 rules out
    # (p = 0); the geometric mean needs agreement: class 1 has sqrt(0.1 * 0.45) = 0.21, class 0 ~ 0
    assert mean[0].argmax() == 0 and geo[0].argmax() == 1
    expect = np.sqrt([max(0.9 * 0.0, 1e-7 * 0.9), 0.1 * 0.45, max(0.0 * 0.55, 1e-7 * 0.55)])
    np.testing.assert_allclose(geo[0], expect / expect.sum(), rtol=1e-3)
    # row 1: the models agree, so both methods give the same probabilities
    np.testing.assert_allclose(geo[1], mean[1], atol=1e-6)
    for p in (mean, geo):
        assert np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1
        np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-5)


def test_geometric_weights_and_extreme_inputs_stay_finite():
    zeros = np.zeros((2, 3))  # a degenerate model: all probabilities 0
    ones = np.eye(3)[:2]
    geo = blend([zeros, ones], np.array([0.3, 0.7]), "geometric")
    assert np.isfinite(geo).all() and geo.min() >= 0 and geo.max() <= 1
    assert list(geo.argmax(axis=1)) == [0, 1]
    only_first = blend([ones, zeros], np.array([1.0, 0.0]), "geometric")  # weight 0: left out
    np.testing.assert_allclose(only_first, ones, atol=1e-6)


def _oof_two_models(n=60, seed=0):
    """m1 right on every row with confidence 0.6; m2 right on the first half, confidently wrong on
    the second (0.9): equal weights follow m2's wrong answers there, a fitted weight does not."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    m1 = onehot_probs(labels, np.full(n, 0.6))
    wrong = (labels + 1) % 3
    m2 = onehot_probs(np.where(np.arange(n) < n // 2, labels, wrong), np.full(n, 0.9))
    return labels, m1, m2


@pytest.mark.parametrize("metric", ["gap", "top1"])
@pytest.mark.parametrize("method", ["weighted", "geometric"])
def test_fitted_weights_beat_or_equal_equal_weights(metric, method):
    labels, m1, m2 = _oof_two_models()
    w, best = fit_weights([m1, m2], labels, method, metric)
    equal = objective(*answers([m1, m2], np.array([0.5, 0.5]), method), labels, metric)
    assert w.min() >= 0 and w.sum() == pytest.approx(1.0)
    assert best >= equal
    assert best == pytest.approx(1.0) and equal < 0.9  # here the fit finds the perfect mixture
    assert best == pytest.approx(objective(*answers([m1, m2], w, method), labels, metric))  # what it reports
    assert w[0] > w[1]


def test_fit_weights_on_the_leaderboard_with_an_honest_estimate(tmp_path):
    write_data(tmp_path)
    labels, m1, m2 = _oof_two_models(n=40)
    ids = np.array([f"o{i}" for i in range(40)])
    for name, probs in (("m1", m1), ("m2", m2)):
        for fold in (0, 1):
            rows = np.arange(40) % 2 == fold
            d = run_dir(tmp_path, name, fold)
            write_pred(d, "oof", ids[rows], probs[rows], labels[rows])
            write_pred(d, "test", ids[:6], probs[:6], labels[:6])
    out = run_ensemble(config(tmp_path, method="weighted", fit_weights=True))
    rows = out["rows"]
    cv = rows[rows["fold"] == "cv"].set_index("model")
    assert cv.loc["m1", "weight"] + cv.loc["m2", "weight"] == pytest.approx(1.0)
    assert cv.loc["m1", "weight"] > cv.loc["m2", "weight"]
    # fitted (in-sample) >= equal weights; the cross-fitted CV (fit on one half, scored on the
    # other) is the honest number and cannot exceed a perfect in-sample score
    fit = out["plan"].fit
    assert fit["in_sample"] >= fit["equal"] and fit["crossfit"] <= fit["in_sample"] + 1e-12
    assert cv.loc["ensemble", "gap"] >= cv.loc["ensemble-equal", "gap"]
    crossfit = rows[(rows["model"] == "ensemble") & (rows["fold"] == "cv_crossfit")]
    assert len(crossfit) == 1 and 0 <= crossfit["gap"].iloc[0] <= 1
    assert "m1:" in cv.loc["ensemble", "weights"]
    assert set(rows.loc[rows["fold"] == "test", "model"]) == {"m1", "m2", "ensemble", "ensemble-equal"}


def test_internal_submission_and_leaderboard(root):
    out = run_ensemble(config(root))
    text = out["submission"].read_text().splitlines()
    assert text[0] == "id,landmarks"
    sub = pd.read_csv(out["submission"], dtype=str)
    assert list(sub["id"]) == TEST_IDS  # one row per internal test id, in order
    for tok in sub["landmarks"]:
        m = re.fullmatch(r"(\d+) (0\.\d{6}|1\.000000)", tok)
        assert m and int(m.group(1)) in LANDMARKS  # original landmark ids, not class indices
    # the ensemble's top-1: row 0 -> class 0 (landmark 1234) with ((0.7 + 0.5) / 2 + 0.5) / 2 = 0.55
    assert sub["landmarks"].iloc[0] == "1234 0.550000"
    rows = out["rows"]
    assert set(rows["model"]) == {"m1", "m2", "ensemble"}
    m1f0 = rows[(rows["model"] == "m1") & (rows["fold"] == "0")].iloc[0]
    expect = score_all(np.array(OOF["m1", 0][1]), np.array(OOF["m1", 0][2]))
    assert m1f0["top1"] == pytest.approx(expect["top1"]) and m1f0["gap"] == pytest.approx(expect["gap"])
    assert (root / "runs" / "exp" / "leaderboard.md").read_text().startswith("# Leaderboard")
    assert (root / "runs" / "exp" / "leaderboard.png").stat().st_size > 1000


def test_a_single_model_has_no_ensemble_rows(root):
    rows = run_ensemble(config(root, models=["m1"]))["rows"]
    assert set(rows["model"]) == {"m1"}


def test_submission_rejects_class_count_mismatch():
    lm = pd.DataFrame({"label": [0, 1], "landmark_id": [5, 6]})
    with pytest.raises(DataError, match="3 classes but the label map has 2"):
        submission(np.array(["x"]), np.ones((1, 3)) / 3, lm)


def test_missing_runs_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no runs of experiment 'nope'"):
        scan(tmp_path, "nope")
    (tmp_path / "exp" / "m").mkdir(parents=True)
    with pytest.raises(DataError, match="model 'm' has no finished fold"):
        scan(tmp_path, "exp", ["m"])


def test_unfinished_model_is_warned_and_shown_missing(root, caplog):
    run_dir(root, "m3", 0, done=False)  # started, never finished
    found = scan(root / "runs", "exp")
    runs, missing = found.finished, found.missing
    assert list(runs) == ["m1", "m2"] and "1 started" in missing["m3"]
    with caplog.at_level(logging.WARNING):
        out = run_ensemble(config(root))
    assert any("m3" in r.message and "no finished fold" in r.message for r in caplog.records)
    assert "no finished fold" in out["info"]["m3"]["missing"]  # the leaderboard shows it as missing


def _nothing_written(root):
    return not (root / "submissions").exists() and not (root / "runs" / "exp" / "leaderboard.csv").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"fingerprint": "prep-fp-2"}, r"m2/fold1/test\.npz: predictions of prep prep-fp-2, but .*prep_report\.json"),
        ({"landmarks": [1, 2, 3]}, r"m2/fold1/test\.npz: made with label map .* class i means another landmark"),
        ({"ids": ["t0", "t1", "x"]}, r"m2/fold1/test\.npz: row 2 is id 'x', but 't2'.*cover different ids"),
        ({"classes": 4}, r"m2/fold1/test\.npz: 4 classes, but .*label_map\.csv has 3"),
    ],
)
def test_inconsistent_prediction_files_are_one_error_and_nothing_is_written(root, change, message):
    d = root / "runs" / "exp" / "m2" / "fold1"
    probs = T_B if change.get("classes") != 4 else np.full((3, 4), 0.25)
    kw = {k: change[k] for k in ("fingerprint", "landmarks") if k in change}
    write_pred(d, "test", change.get("ids", TEST_IDS), probs, TEST_LABELS, **kw)
    with pytest.raises(DataError, match=message):
        run_ensemble(config(root))
    assert _nothing_written(root)


def test_runs_from_two_preps_without_a_prep_report(tmp_path):
    write_data(tmp_path, fingerprint=None)  # no prep_report.json: runs are still compared
    write_pred(run_dir(tmp_path, "m1", 0), "test", TEST_IDS, T_A, TEST_LABELS, fingerprint="A")
    write_pred(run_dir(tmp_path, "m2", 0), "test", TEST_IDS, T_A, TEST_LABELS, fingerprint="B")
    with pytest.raises(DataError, match=r"prep B, but .*m1/fold0/test\.npz of prep A"):
        _stream(tmp_path, {"m1": 0.5, "m2": 0.5})


def test_non_finite_probabilities_are_refused(root):
    d = root / "runs" / "exp" / "m1" / "fold0"
    bad = T_A.copy()
    bad[1, 1] = np.nan
    np.savez(d / "test.npz", ids=np.array(TEST_IDS), probs=bad, labels=np.array(TEST_LABELS))  # an old-style file
    with pytest.raises(DataError, match=r"m1/fold0/test\.npz: probabilities must be finite"):
        run_ensemble(config(root))


def test_missing_prediction_file_names_it(root):
    (root / "runs" / "exp" / "m2" / "fold0" / "test.npz").unlink()
    with pytest.raises(DataError, match=r"prediction file not found: .*m2/fold0/test\.npz"):
        run_ensemble(config(root))


def test_tta_files_where_present_else_the_plain_file_with_a_warning(root, caplog):
    flipped = T_A[:, ::-1].copy()
    write_pred(root / "runs" / "exp" / "m1" / "fold0", "test", TEST_IDS, flipped, TEST_LABELS, tta=True)
    runs = scan(root / "runs", "exp").finished
    with caplog.at_level(logging.WARNING):
        paths = pred_paths(runs, "test", tta=True)
    assert paths["m1"][0].name == "test_tta.npz" and paths["m1"][1].name == "test.npz"
    assert any("3 of 4 runs have no test_tta.npz" in r.message for r in caplog.records)
    checker = Checker(root / "data" / "ds", label_map())
    out = stream_ensemble(paths, "test", [{"m1": 1.0, "m2": 0.0}], "weighted", checker)[0]
    np.testing.assert_allclose(out.probs, (flipped + T_B) / 2, atol=1e-6)


def test_bad_weights_and_methods_are_config_errors(root):
    with pytest.raises(ConfigError, match="weights must be finite, >= 0 and not all 0"):
        config(root, models=["m1", "m2"], method="weighted", weights=[1, -1])
    with pytest.raises(ConfigError, match="not all 0"):
        config(root, models=["m1", "m2"], method="weighted", weights=[0, 0])
    with pytest.raises(ConfigError, match="method 'mean' uses equal weights"):
        config(root, models=["m1", "m2"], weights=[1, 2])
    with pytest.raises(ConfigError, match="'weighted' needs 'weights' or fit_weights"):
        config(root, method="weighted")
    with pytest.raises(ConfigError, match=r"unknown method 'geometrc' \(did you mean: geometric"):
        config(root, method="geometrc")
    with pytest.raises(ConfigError, match="threshold must be none, tune or a number in \\[0, 1\\], got '1.5'"):
        config(root, threshold="1.5")
    cfg = config(root, models=["m1", "m2"], method="weighted", weights=[3, 1])
    rows = run_ensemble(cfg)["rows"]
    assert rows.loc[(rows["model"] == "m1") & (rows["fold"] == "cv"), "weight"].iloc[0] == pytest.approx(0.75)


def test_the_output_lock_refuses_a_second_ensemble(root):
    with folder_lock(root / "runs" / "exp", "another ensemble"), pytest.raises(PipelineError, match="is in use by"):
        run_ensemble(config(root))


def test_written_prediction_meta_is_what_the_checks_read(root):
    # the helper writes meta the way pipeline.infer.predict does; old files without meta skip the meta checks
    p = np.load(root / "runs" / "exp" / "m1" / "fold0" / "test.npz")
    meta = json.loads(str(p["meta"]))
    assert meta["label_map_sha"] == schema.label_map_sha(label_map()) and meta["num_classes"] == 3


def test_files_without_meta_from_older_runs_still_ensemble(tmp_path):
    write_data(tmp_path)
    for model, fold in TESTS:
        d = run_dir(tmp_path, model, fold)
        ids, probs, labels = OOF[model, fold]
        np.savez(d / "oof.npz", ids=np.array(ids), probs=np.array(probs, np.float32), labels=np.array(labels))
        np.savez(
            d / "test.npz",
            ids=np.array(TEST_IDS),
            probs=TESTS[model, fold].astype(np.float32),
            labels=np.array(TEST_LABELS),
        )
    sub = pd.read_csv(run_ensemble(config(tmp_path))["submission"], dtype=str)
    assert list(sub["id"]) == TEST_IDS and sub["landmarks"].iloc[0] == "1234 0.550000"


def test_streaming_holds_one_prediction_file_at_a_time(root, monkeypatch):
    import weakref

    import pipeline.ensemble.inputs as ens

    alive, most = [0], [0]

    class Loaded(dict):
        pass

    def load(path, dtype=None):
        assert dtype is None  # the stored precision is kept (float16 stays float16)
        out = Loaded(real_load(path, dtype))
        alive[0] += 1
        most[0] = max(most[0], alive[0])
        weakref.finalize(out, lambda: alive.__setitem__(0, alive[0] - 1))
        return out

    real_load = ens.load_predictions
    monkeypatch.setattr(ens, "load_predictions", load)
    out = _stream(root, {"m1": 0.5, "m2": 0.5})
    assert most[0] == 1 and alive[0] == 0  # 4 files read, never two alive together
    np.testing.assert_allclose(out.probs, ((T_A + T_B) / 2 + T_B) / 2, atol=1e-6)


def test_models_without_common_oof_ids(root, caplog):
    import shutil

    shutil.rmtree(root / "runs" / "exp" / "m1" / "fold1")  # m1: ids a, b; m2 fold0 gone: ids c, d
    shutil.rmtree(root / "runs" / "exp" / "m2" / "fold0")
    with caplog.at_level(logging.WARNING):
        rows = run_ensemble(config(root))["rows"]
    assert any("no id is out-of-fold for every model" in r.message for r in caplog.records)
    assert ("ensemble", "cv") not in set(zip(rows["model"], rows["fold"]))
    assert ("ensemble", "test") in set(zip(rows["model"], rows["fold"]))
    with pytest.raises(DataError, match="nothing to fit on"):
        run_ensemble(config(root, method="weighted", fit_weights=True))


def test_timm_model_folders_have_no_colon_and_old_ones_still_load(tmp_path):
    """timm:<name> runs live in timm-<name>/ (no colon: Windows, shells, make); a run folder of an
    older version with the colon is still found under the model's name."""
    from common import schema as sch
    from pipeline.runs.scan import scan

    new = sch.run_dir(tmp_path, "exp", "timm:efficientnet_b0", 0)
    assert new.parent.name == "timm-efficientnet_b0" and ":" not in str(new.relative_to(tmp_path))
    old = tmp_path / "exp" / "timm:convnext_atto" / "fold0"
    old.mkdir(parents=True)
    (old / sch.RUN_DONE).write_text("ok\n")
    assert sch.run_dir(tmp_path, "exp", "timm:convnext_atto", 0) == old
    assert scan(tmp_path, "exp", ["timm:convnext_atto"]).finished == {"timm:convnext_atto": [old]}


def test_competition_predictions_of_another_test_set_are_refused(tmp_path):
    """The competition test set has its own identity: predictions of an older one are refused in one
    line (the runs stay valid: only predict again)."""
    import json

    from common import schema as sch
    from pipeline.ensemble.inputs import Checker
    from tests.ensemble_helpers import FINGERPRINT, label_map, run_dir, write_data, write_pred

    data = write_data(tmp_path)
    (data / sch.PREP_REPORT).write_text(json.dumps({"fingerprint": FINGERPRINT, "test_fingerprint": "t-new"}))
    d = run_dir(tmp_path, "m1", 0)
    probs = np.full((2, 3), 1 / 3)
    old = write_pred(d, sch.COMPETITION, ["aaa", "bbb"], probs, [-3, -3], test_fingerprint="t-old")
    with pytest.raises(DataError, match="another competition test set .*rerun 'make predict'"):
        Checker(data, label_map()).load(old, sch.COMPETITION)
    same = write_pred(d, sch.COMPETITION, ["aaa", "bbb"], probs, [-3, -3], test_fingerprint="t-new")
    assert len(Checker(data, label_map()).load(same, sch.COMPETITION)["ids"]) == 2
