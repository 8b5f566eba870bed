"""Ensembling, submission format and the leaderboard, on hand-made prediction files."""

import re

import numpy as np
import pandas as pd
import pytest

from common import schema
from common.errors import DataError
from pipeline.config import EnsembleConfig
from pipeline.ensemble import combine, finished_runs, run_ensemble, submission
from pipeline.metrics import score_all

LANDMARKS = [1234, 56789, 77]


def _write_run(root, model, fold, oof_ids, oof_probs, oof_labels, test_probs):
    d = schema.run_dir(root, "exp", model, fold)
    d.mkdir(parents=True)
    np.savez(
        d / schema.RUN_OOF, ids=np.array(oof_ids), probs=np.array(oof_probs, np.float32), labels=np.array(oof_labels)
    )
    np.savez(
        d / schema.RUN_TEST,
        ids=np.array(["t0", "t1", "t2"]),
        probs=np.array(test_probs, np.float32),
        labels=np.array([0, 1, -1]),
    )
    (d / schema.RUN_DONE).write_text("ok\n")


@pytest.fixture()
def runs(tmp_path):
    data = tmp_path / "data" / "ds"
    data.mkdir(parents=True)
    pd.DataFrame({"label": [0, 1, 2], "landmark_id": LANDMARKS, "name": ["a", "b", "c"], "count": [1, 1, 1]}).to_csv(
        data / schema.LABEL_MAP, index=False
    )
    t_a = [[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.1, 0.8]]
    t_b = [[0.5, 0.4, 0.1], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]]
    _write_run(tmp_path / "runs", "m1", 0, ["a", "b"], [[0.9, 0.1, 0], [0.2, 0.8, 0]], [0, 0], t_a)
    _write_run(tmp_path / "runs", "m1", 1, ["c", "d"], [[0.1, 0.1, 0.8], [0.6, 0.3, 0.1]], [2, 0], t_b)
    _write_run(tmp_path / "runs", "m2", 0, ["a", "b"], [[0.4, 0.6, 0], [0.1, 0.9, 0]], [0, 0], t_b)
    _write_run(tmp_path / "runs", "m2", 1, ["c", "d"], [[0.3, 0.3, 0.4], [0.8, 0.1, 0.1]], [2, 0], t_b)
    return tmp_path, np.array(t_a), np.array(t_b)


def test_fold_average_and_model_ensemble(runs):
    root, t_a, t_b = runs
    res = combine(finished_runs(root / "runs", "exp"))
    np.testing.assert_allclose(res["per_model"]["m1"]["test"], (t_a + t_b) / 2, atol=1e-6)
    np.testing.assert_allclose(res["test"], ((t_a + t_b) / 2 + t_b) / 2, atol=1e-6)
    assert len(res["per_model"]["m1"]["oof"]["ids"]) == 4
    weighted = combine(finished_runs(root / "runs", "exp"), weights=[3.0, 1.0])
    np.testing.assert_allclose(weighted["test"], 0.75 * (t_a + t_b) / 2 + 0.25 * t_b, atol=1e-6)


def test_submission_and_leaderboard_files(runs):
    root, _, _ = runs
    cfg = EnsembleConfig(
        dataset="ds",
        data_root=str(root / "data"),
        runs_root=str(root / "runs"),
        experiment="exp",
        name="sub",
        submissions_dir=str(root / "submissions"),
    )
    out = run_ensemble(cfg)
    text = out["submission"].read_text().splitlines()
    assert text[0] == "id,landmarks"
    sub = pd.read_csv(out["submission"], dtype=str)
    assert list(sub["id"]) == ["t0", "t1", "t2"]  # one row per test id
    for tok in sub["landmarks"]:
        m = re.fullmatch(r"(\d+) (0\.\d{6}|1\.000000)", tok)
        assert m and int(m.group(1)) in LANDMARKS  # original landmark ids, not class indices
    board = pd.read_csv(out["leaderboard"])
    assert set(board["model"]) == {"m1", "m2", "ensemble"}
    m1f0 = board[(board["model"] == "m1") & (board["fold"] == "0")].iloc[0]
    expect = score_all(np.array([[0.9, 0.1, 0], [0.2, 0.8, 0]]), np.array([0, 0]))
    assert m1f0["top1"] == pytest.approx(expect["top1"]) and m1f0["gap"] == pytest.approx(expect["gap"])
    assert (root / "runs" / "exp" / "leaderboard.md").read_text().startswith("# Leaderboard")
    assert (root / "runs" / "exp" / "leaderboard.png").stat().st_size > 1000


def test_submission_rejects_class_count_mismatch():
    lm = pd.DataFrame({"label": [0, 1], "landmark_id": [5, 6]})
    with pytest.raises(DataError, match="3 classes but the label map has 2"):
        submission(np.array(["x"]), np.ones((1, 3)) / 3, lm)


def test_missing_runs_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no runs for experiment 'nope'"):
        finished_runs(tmp_path, "nope")
    (tmp_path / "exp" / "m").mkdir(parents=True)
    with pytest.raises(DataError, match="model 'm' has no finished fold"):
        finished_runs(tmp_path, "exp", ["m"])
