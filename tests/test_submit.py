"""The competition submission on hand-made prediction files: order, empty cells, checks, GAP."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from common import schema
from common.errors import DataError, PipelineError
from common.lock import folder_lock
from pipeline.submit.stage import main, run_submit
from pipeline.submit.validate import validate_submission
from tests.ensemble_helpers import config, onehot_probs, run_dir, write_data, write_pred

ORDER = ["c5", "c1", "c2", "c0", "c4", "c3"]  # the sample submission's order; c2 is unreadable
STATUS = ["ok", "ok", "missing_image", "ok", "ok", "ok"]
COMP_IDS = ["c0", "c1", "c3", "c4", "c5"]  # the competition manifest: readable images, its own order
PRED = [0, 1, 2, 0, 1]  # top class per COMP_IDS row
CONF = [0.9, 0.7, 0.5, 0.4, 0.8]
SOLUTION = [0, 2, 2, -1, 1]  # c0 right, c1 wrong, c3 right, c4 a non-landmark, c5 right


def _comp(root, labels=None, models=("m1", "m2"), folds=(0, 1), **kw):
    data = write_data(root)
    pd.DataFrame({"id": ORDER, "status": STATUS}).to_csv(data / schema.COMPETITION_ORDER, index=False)
    labels = labels if labels is not None else [schema.UNLABELLED] * len(COMP_IDS)
    for m in models:
        for f in folds:
            write_pred(run_dir(root, m, f), "competition", COMP_IDS, onehot_probs(PRED, CONF), labels, **kw)
    return root


def _read(path):
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_submission_keeps_order_fills_unreadable_and_never_writes_nan(tmp_path, capsys):
    root = _comp(tmp_path)
    assert main(config(root)) == 0
    path = root / "submissions" / "sub.csv"
    sub = _read(path)
    assert list(sub["id"]) == ORDER
    assert list(sub["landmarks"]) == [
        "56789 0.800000",  # c5: class 1 -> its original landmark id
        "56789 0.700000",
        "",  # c2: unreadable -> empty
        "1234 0.900000",
        "1234 0.400000",
        "77 0.500000",
    ]
    text = path.read_text()
    assert "nan" not in text.lower() and text.startswith("id,landmarks\n")
    for cell in sub["landmarks"][sub["landmarks"] != ""]:
        c = float(cell.split()[1])
        assert math.isfinite(c) and 0 <= c <= 1
    assert validate_submission(path, ORDER)[0] == []
    out = capsys.readouterr().out
    assert "valid, 6 rows, 5 answers, 1 empty (1 unreadable images, 0 left empty by post-processing)" in out
    assert "GAP" not in out  # unlabelled competition set
    record = json.loads((root / "submissions" / "sub.json").read_text())
    assert record["weights"] == {"m1": 0.5, "m2": 0.5} and record["rows"] == 6


def test_labelled_competition_set_gets_its_gap(tmp_path, capsys):
    root = _comp(tmp_path, labels=SOLUTION)
    r = run_submit(config(root))
    # ranked: c0 .9 right (P 1/1), c5 .8 right (P 2/2), c1 .7 wrong, c3 .5 right (P 3/4), c4 .4 wrong;
    # M = 4 landmark rows (c4 is a non-landmark, c2 unreadable has no label)
    assert r["gap"] == pytest.approx((1 + 1 + 3 / 4) / 4) and r["scored"] == 5
    figure = r["submission"].with_name(r["submission"].stem + "_answers.png")  # what drives that GAP
    assert figure.is_file() and figure.stat().st_size > 5000
    main(config(root))
    assert "GAP 0.6875 over the 5 labelled rows" in capsys.readouterr().out


def test_threshold_empties_rows_and_is_counted(tmp_path):
    root = _comp(tmp_path, labels=SOLUTION)
    r = run_submit(config(root, threshold="0.6"))
    sub = _read(r["submission"])
    assert list(sub["landmarks"] == "") == [False, False, True, False, True, True]  # c4 0.4, c3 0.5 cut
    assert r["empty"] == 3 and r["unreadable"] == 1
    # c3 was right: without it GAP = (1 + 1) / 4
    assert r["gap"] == pytest.approx(2 / 4)


def test_a_bundle_workspace_with_only_competition_predictions(tmp_path):
    root = _comp(tmp_path, models=("m1",), folds=(0,))  # no oof.npz, no test.npz
    assert len(_read(run_submit(config(root))["submission"])) == 6
    with pytest.raises(DataError, match=r"prediction file not found: .*m1/fold0/oof\.npz"):
        run_submit(config(root, method="weighted", fit_weights=True))


@pytest.mark.parametrize(
    "change, message",
    [
        ("extra_id", r"1 id\(s\) not in .*competition_order\.csv \(first: 'zz'\)"),
        ("lacking_id", r"1 readable id\(s\) of competition_order\.csv have no prediction \(first: 'c3'\)"),
        ("no_order", r"competition_order\.csv not found: prep the competition's test set"),
        ("no_predictions", r"prediction file not found: .*competition\.npz.*manifests=competition"),
        ("other_prep", r"predictions of prep other, but .*prep_report\.json"),
    ],
)
def test_bad_inputs_are_one_error_and_nothing_is_written(tmp_path, change, message):
    root = _comp(tmp_path)
    data = root / "data" / "ds"
    runs = [run_dir(root, m, f) for m in ("m1", "m2") for f in (0, 1)]
    if change == "extra_id":
        ids = ["c0", "c1", "zz", "c3", "c4", "c5"]
        for d in runs:
            write_pred(d, "competition", ids, onehot_probs([0] * 6, [0.5] * 6), [-3] * 6)
    elif change == "lacking_id":
        for d in runs:
            write_pred(d, "competition", ["c0", "c1", "c4", "c5"], onehot_probs([0] * 4, [0.5] * 4), [-3] * 4)
    elif change == "no_order":
        (data / schema.COMPETITION_ORDER).unlink()
    elif change == "no_predictions":
        (runs[2] / "competition.npz").unlink()
    elif change == "other_prep":
        write_pred(runs[3], "competition", COMP_IDS, onehot_probs(PRED, CONF), [-3] * 5, fingerprint="other")
    with pytest.raises(DataError, match=message):
        run_submit(config(root))
    assert not (root / "submissions").exists()


def test_tuning_on_an_unlabelled_competition_set_is_refused(tmp_path):
    root = _comp(tmp_path)
    for m in ("m1", "m2"):
        for f in (0, 1):
            write_pred(run_dir(root, m, f), "nonlandmark", ["n0", "n1"], onehot_probs([0, 0], [0.8, 0.8]), [-1, -1])
    with pytest.raises(DataError, match="tune_on=competition needs a labelled competition set"):
        run_submit(config(root, penalty="tune", tune_on="competition"))


def test_penalty_tuned_on_a_labelled_competition_set(tmp_path, capsys):
    root = _comp(tmp_path, labels=SOLUTION)
    for m in ("m1", "m2"):
        for f in (0, 1):
            write_pred(run_dir(root, m, f), "nonlandmark", ["n0", "n1"], onehot_probs([0, 0], [0.8, 0.8]), [-1, -1])
    r = run_submit(config(root, penalty="tune", tune_on="competition"))
    # r = [1, 0.125, 0.125] from the pool; the only wrong answer above a right one is c1 (class 1,
    # 0.7) over c3 (class 2, 0.5): both classes get the same penalty, so no strength helps: 0
    assert r["gap"] == pytest.approx(0.6875) and r["tuned_on_it"]
    main(config(root, penalty="tune", tune_on="competition"))
    assert "(post-processing tuned on this set: optimistic)" in capsys.readouterr().out


def test_the_submissions_lock_refuses_a_second_submit(tmp_path):
    root = _comp(tmp_path)
    with folder_lock(root / "submissions", "another submit"), pytest.raises(PipelineError, match="is in use by"):
        run_submit(config(root))
    assert not (root / "submissions" / "sub.csv").exists()


def test_geometric_and_fitted_weights_reach_the_submission(tmp_path):
    root = _comp(tmp_path, models=("m1",), folds=(0,))
    # m2 rules class 0 out on c0 (p = 0): the mean still follows m1's confident class 0
    # ((0.9 + 0) / 2 = 0.45 vs 0.25 and 0.30), the geometric mean needs agreement: class 2
    # (sqrt(0.05 * 0.55) = 0.166 > sqrt(0.05 * 0.45) = 0.150 > sqrt(0.9 * 1e-7))
    probs = onehot_probs(PRED, CONF)
    probs[0] = [0.0, 0.45, 0.55]
    write_pred(run_dir(root, "m2", 0), "competition", COMP_IDS, probs, [-3] * 5)
    mean = _read(run_submit(config(root))["submission"])
    geo = _read(run_submit(config(root, method="geometric"))["submission"])
    assert mean["landmarks"].iloc[3] == "1234 0.450000"  # c0 is 4th in the sample order
    assert geo["landmarks"].iloc[3].startswith("77 ")
    assert list(geo["landmarks"].iloc[[0, 1, 4, 5]].str.split().str[0]) == ["56789", "56789", "1234", "77"]
    conf = np.array([float(c.split()[1]) for c in geo["landmarks"] if c])
    assert np.isfinite(conf).all() and conf.min() >= 0 and conf.max() <= 1


def test_a_bundle_workspace_says_which_settings_it_cannot_run(tmp_path):
    """A workspace of predict bundle=... has competition predictions only: knn, the penalty,
    landmark-ness or fitted weights are named in one line with what to do, not a hint to run make
    embed / make prep there (which a Kaggle kernel cannot)."""
    import json

    from common.errors import ConfigError

    root = _comp(tmp_path, models=("m1",), folds=(0,))
    report = root / "data" / "ds" / schema.PREP_REPORT
    report.write_text(json.dumps({**json.loads(report.read_text()), "workspace": True}))
    assert len(_read(run_submit(config(root))["submission"])) == 6  # the plain ensemble still submits
    settings = ({"knn": True}, {"penalty": "tune"}, {"landmarkness": "0.3"}, {"method": "weighted", "fit_weights": 1})
    for over in settings:
        with pytest.raises(ConfigError, match="is a bundle workspace .* cannot run here; run submit with them where"):
            run_submit(config(root, **over))
