"""Top-k prediction files through the ensemble: the same numbers as dense files where k = C, the
union of candidates where k < C, and one line for a mix of forms."""

import numpy as np
import pytest

from common import schema
from common.errors import DataError
from pipeline.ensemble.blend import stream_ensemble
from pipeline.ensemble.inputs import Checker, pred_paths
from pipeline.metrics import score_all
from pipeline.runs.predfile import load_predictions, save_predictions
from pipeline.runs.scan import scan
from pipeline.scores import TopK, topk
from tests.ensemble_helpers import FINGERPRINT, run_dir, write_data

C = 40
LANDMARKS = list(range(1000, 1000 + C))
IDS = np.array([f"q{i}" for i in range(60)])


def _probs(seed: int) -> np.ndarray:
    p = np.random.default_rng(seed).random((len(IDS), C)) ** 4
    return p / p.sum(axis=1, keepdims=True)


def _root(tmp_path, k: int):
    """Two models x two folds of test predictions, written dense (k = 0 -> C <= 1000) or as top-k."""
    d = write_data(tmp_path, LANDMARKS[:3])
    _label_map().to_csv(d / "label_map.csv", index=False)
    labels = np.random.default_rng(9).integers(-1, C, len(IDS))
    dense = {}
    for i, (model, fold) in enumerate([("m1", 0), ("m1", 1), ("m2", 0), ("m2", 1)]):
        p = _probs(i)
        dense[model, fold] = p
        d = run_dir(tmp_path, model, fold)
        scores = topk(p, k) if k else p
        save_predictions(d / "test.npz", IDS, scores, labels, _meta())
    return labels, dense


def _ensemble(tmp_path, method="weighted", w=(0.7, 0.3)):
    runs = scan(tmp_path / "runs", "exp").finished
    checker = Checker(tmp_path / "data" / "ds", _label_map())
    return stream_ensemble(pred_paths(runs, "test"), "test", [{"m1": w[0], "m2": w[1]}], method, checker)[0]


def _meta() -> dict:
    return {"prep_fingerprint": FINGERPRINT, "label_map_sha": schema.label_map_sha(_label_map()), "num_classes": C}


def _label_map():
    import pandas as pd

    return pd.DataFrame({"label": range(C), "landmark_id": LANDMARKS, "name": [f"n{i}" for i in range(C)], "count": 1})


def test_topk_file_round_trip(tmp_path):
    p = _probs(0)
    save_predictions(tmp_path / "a.npz", IDS, topk(p, 5), np.zeros(len(IDS), int), {"x": 1})
    back = load_predictions(tmp_path / "a.npz")
    assert isinstance(back["probs"], TopK) and back["probs"].k == 5 and back["meta"]["topk"] == 5
    np.testing.assert_allclose(back["probs"].val, np.sort(p, axis=1)[:, ::-1][:, :5], atol=1e-7)


@pytest.mark.parametrize("method", ["weighted", "geometric"])
def test_topk_ensemble_equals_the_dense_one_where_k_is_c(tmp_path, method):
    labels, _ = _root(tmp_path / "dense", 0)
    _root(tmp_path / "sparse", C)
    dense = _ensemble(tmp_path / "dense", method)
    sparse = _ensemble(tmp_path / "sparse", method)
    assert isinstance(sparse.probs, TopK)
    np.testing.assert_allclose(sparse.probs.dense(), dense.probs, atol=1e-5)
    assert score_all(sparse.probs, labels) == pytest.approx(score_all(dense.probs, labels))


def test_topk_ensemble_sums_over_the_union_of_candidates(tmp_path):
    _, dense = _root(tmp_path, 5)
    out = _ensemble(tmp_path, "weighted", (0.7, 0.3))
    assert out.probs.k == 5
    want = np.zeros((len(IDS), C))
    for (model, _), p in dense.items():  # fold mean of each model's top-5, then the weighted models
        t = topk(p, 5)
        want += (0.7 if model == "m1" else 0.3) * 0.5 * t.dense(np.float64)
    top = np.sort(want, axis=1)[:, ::-1][:, :5]
    np.testing.assert_allclose(out.probs.val, top, atol=1e-6)


def test_dense_and_topk_files_are_not_mixed(tmp_path):
    _root(tmp_path, 5)
    d = run_dir(tmp_path, "m2", 1)
    save_predictions(d / "test.npz", IDS, _probs(3), np.zeros(len(IDS), int), _meta())
    with pytest.raises(DataError, match="dense .* predictions, but .* holds top-5"):
        _ensemble(tmp_path)


def test_topk_files_of_another_k_are_refused(tmp_path):
    _root(tmp_path, 5)
    d = run_dir(tmp_path, "m2", 1)
    save_predictions(d / "test.npz", IDS, topk(_probs(3), 7), np.zeros(len(IDS), int), _meta())
    with pytest.raises(DataError, match="top-7 predictions, but .* holds top-5"):
        _ensemble(tmp_path)
