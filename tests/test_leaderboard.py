"""The experiment leaderboard: sorted per-model table with fold mean +- std, run facts, figures."""

import numpy as np
import pandas as pd
import pytest

from common import schema
from common.errors import ConfigError
from pipeline.report.leaderboard import FOLDS_CSV, fold_label, run_info, summarize, write_leaderboard
from pipeline.report.plots import plot_curves, score_limits
from tests.runfolders import fake_experiment, history, write_run

MIN_PNG = 5000  # bytes: a figure with axes, marks and text, not an empty canvas


def _png_ok(path) -> bool:
    return path.is_file() and path.stat().st_size > MIN_PNG and path.read_bytes()[:4] == b"\x89PNG"


@pytest.fixture()
def experiment(tmp_path):
    runs = tmp_path / "runs"
    skills = {"weak": 0.5, "strong": 3.0, "mid": 1.5}
    rows = fake_experiment(runs, "exp", skills, folds=(0, 1, 2), summary={"params": 11_689_512, "macs": 1_820_000_000})
    return runs, rows


def test_sorted_by_cv_gap_with_fold_mean_and_std_against_numpy(experiment):
    runs, rows = experiment
    paths = write_leaderboard(runs / "exp", rows, run_info(runs, "exp", ["weak", "strong", "mid"]), "exp")
    board = pd.read_csv(paths["csv"])
    long = pd.DataFrame(rows)
    cv = long[long["fold"] == "cv"].set_index("model")
    assert list(board["model"]) == list(cv["gap"].sort_values(ascending=False).index)
    for r in board.itertuples():
        folds = long[(long["model"] == r.model) & long["fold"].isin(["0", "1", "2"])]
        for m in ("top1", "top5", "gap"):
            assert getattr(r, f"fold_{m}_mean") == pytest.approx(np.mean(folds[m]))
            assert getattr(r, f"fold_{m}_std") == pytest.approx(np.std(folds[m], ddof=1))
            assert getattr(r, f"cv_{m}") == pytest.approx(cv.loc[r.model, m])
            test = long[(long["model"] == r.model) & (long["fold"] == "test")][m].iloc[0]
            assert getattr(r, f"test_{m}") == pytest.approx(test)
        assert (r.folds, r.epochs, r.precision, r.device) == (3, 6, "bf16", "cpu")
        assert r.params_m == pytest.approx(11.689512) and r.macs_g == pytest.approx(1.82)
    # the per-(model, fold) rows stay available, with each fold's best epoch from summary.json
    folds = pd.read_csv(paths["folds"], dtype={"fold": str})
    assert len(folds) == len(rows) and set(folds["fold"]) == {"0", "1", "2", "cv", "test"}
    assert folds.loc[folds["fold"] == "0", "best_epoch"].eq(6).all()
    md = paths["md"].read_text()
    assert md.startswith("# Leaderboard: exp")
    top = board.iloc[0]
    assert f"{top.fold_gap_mean:.4f} ± {top.fold_gap_std:.4f}" in md
    assert f"**{top.cv_gap:.4f}**" in md  # the best CV in bold
    assert _png_ok(paths["png"]) and _png_ok(paths["curves"])
    assert not list((runs / "exp").glob(".*.tmp"))  # atomic writes leave no temporaries


def test_sort_by_another_metric_and_bad_sort_key():
    rows = [
        {"model": "a", "fold": "cv", "n": 10, "top1": 0.9, "top5": 1.0, "gap": 0.5},
        {"model": "b", "fold": "cv", "n": 10, "top1": 0.6, "top5": 1.0, "gap": 0.7},
    ]
    assert list(summarize(rows, {}, "gap")["model"]) == ["b", "a"]
    assert list(summarize(rows, {}, "top1")["model"]) == ["a", "b"]
    with pytest.raises(ConfigError, match="cannot sort by 'acc'.*valid: top1, top5, gap"):
        summarize(rows, {}, "acc")


def test_one_fold_has_no_std_and_models_without_cv_sort_by_fold_mean():
    rows = [
        {"model": "one", "fold": 0, "n": 5, "top1": 0.8, "top5": 1.0, "gap": 0.6},
        {"model": "two", "fold": "0", "n": 5, "top1": 0.4, "top5": 1.0, "gap": 0.7},
        {"model": "two", "fold": "fold1", "n": 5, "top1": 0.6, "top5": 1.0, "gap": 0.8},
    ]
    s = summarize(rows, {}, "gap").set_index("model")
    assert list(s.index) == ["two", "one"]
    assert np.isnan(s.loc["one", "fold_gap_std"]) and s.loc["one", "folds"] == 1
    assert s.loc["two", "fold_gap_mean"] == pytest.approx(0.75) and s.loc["two", "folds"] == 2
    assert [fold_label(v) for v in (0, 1.0, "2", "fold3", "holdout", "cv")] == ["0", "1", "2", "3", "holdout", "cv"]


def test_extra_columns_ensemble_variants_and_missing_models(tmp_path):
    rows = [
        {"model": "m1", "fold": "0", "n": 4, "top1": 0.5, "top5": 1.0, "gap": 0.4, "weight": 0.7},
        {"model": "m1", "fold": "cv", "n": 4, "top1": 0.5, "top5": 1.0, "gap": 0.4, "weight": 0.7},
        {"model": "ensemble", "fold": "cv", "n": 4, "top1": 0.75, "top5": 1.0, "gap": 0.6, "variant": "weighted"},
        {"model": "ensemble", "fold": "cv_half", "n": 2, "top1": 0.5, "top5": 1.0, "gap": 0.55},
        {"model": "ensemble+threshold", "fold": "test", "n": 4, "top1": 0.5, "top5": 1.0, "gap": 0.65},
    ]
    info = {"m1": {"folds": 1, "epochs": 3, "precision": "fp32"}, "m2": {"missing": "no finished fold"}}
    paths = write_leaderboard(tmp_path, rows, info, "t")
    board = pd.read_csv(paths["csv"]).set_index("model")
    assert list(board.index) == ["ensemble+threshold", "ensemble", "m1", "m2"]  # test GAP stands in for a CV
    assert board.loc["m1", "weight"] == 0.7 and board.loc["ensemble", "variant"] == "weighted"
    assert board.loc["ensemble", "cv_half_gap"] == 0.55
    assert np.isnan(board.loc["ensemble", "fold_gap_mean"])  # an ensemble has no folds
    assert board.loc["m2", "status"] == "missing: no finished fold" and np.isnan(board.loc["m2", "cv_gap"])
    assert board.loc["m1", "precision"] == "fp32"
    assert "| m2 |" in paths["md"].read_text() and "missing: no finished fold" in paths["md"].read_text()
    assert pd.read_csv(tmp_path / FOLDS_CSV)["weight"].notna().sum() == 2
    assert _png_ok(paths["png"]) and "curves" not in paths  # no run folders: no experiment curves


def test_run_info_reads_summary_then_config_and_shows_blanks_for_older_runs(tmp_path):
    rng = np.random.default_rng(0)
    oof = (np.array(["a", "b"]), np.full((2, 3), 1 / 3, np.float32), np.array([0, 1]))
    new = {"params": 2_000_000, "macs": 300_000_000, "seconds_per_epoch": 4.0, "precision": "bf16"}
    write_run(tmp_path, "e", "new", 0, oof, summary=new, hist=history(3, 1.0, rng))
    write_run(tmp_path, "e", "new", 1, oof, summary=new, done=False)  # still training
    write_run(tmp_path, "e", "old", 0, oof, epochs=4, config={"resolved_mixed_precision": "no", "processes": 2})
    write_run(tmp_path, "e", "unfinished", 0, oof, done=False)
    info = run_info(tmp_path, "e", ["new", "old", "unfinished", "absent"])
    assert info["new"]["precision"] == "bf16" and info["new"]["params_m"] == 2.0 and info["new"]["macs_g"] == 0.3
    assert info["new"]["sec_per_epoch"] == 4.0 and info["new"]["unfinished"] == 1 and info["new"]["folds"] == 1
    assert info["old"]["params_m"] is None and info["old"]["macs_g"] is None
    assert info["old"]["precision"] == "fp32" and info["old"]["device"] == "cpu x2"
    assert info["old"]["sec_per_epoch"] == pytest.approx(12.5)  # summary seconds / epochs
    assert info["unfinished"] == {"missing": "no finished fold (1 started)"}
    assert info["absent"] == {"missing": "no run folder"}
    rows = [{"model": "new", "fold": "0", "n": 2, "top1": 0.5, "top5": 1.0, "gap": 0.3}]
    board = pd.read_csv(write_leaderboard(tmp_path / "e", rows, info, "e")["csv"]).set_index("model")
    assert board.loc["new", "status"] == "1 fold(s) unfinished"
    assert board.loc["old", "status"] == "no scores (run the ensemble stage)"
    assert board.loc["unfinished", "status"].startswith("missing: no finished fold")


@pytest.mark.parametrize("n_models, n_folds", [(1, 1), (14, 5)])
def test_figures_for_one_model_one_fold_and_many_models(tmp_path, n_models, n_folds):
    skills = {f"model_{i:02d}_with_a_long_name": 0.3 * i for i in range(n_models)}
    rows = fake_experiment(tmp_path, "e", skills, folds=tuple(range(n_folds)), n_per_fold=12, n_test=12, epochs=3)
    rows.append({"model": "ensemble", "fold": "cv", "n": 12, "top1": 0.5, "top5": 0.9, "gap": 0.45})
    paths = write_leaderboard(tmp_path / "e", rows, run_info(tmp_path, "e", list(skills)), "e")
    assert _png_ok(paths["png"]) and _png_ok(paths["curves"])
    assert len(pd.read_csv(paths["csv"])) == n_models + 1


def test_plot_curves_one_epoch_many_epochs_and_old_columns(tmp_path):
    rng = np.random.default_rng(0)
    h = history(12, 2.0, rng)
    assert _png_ok(plot_curves(h, tmp_path / "a.png", "exp: m/fold0", best_epoch=7))
    assert _png_ok(plot_curves(h.head(1), tmp_path / "b.png", best_epoch=1))
    old = h.drop(columns=["val_gap"]).assign(lr=0.0)  # a run from before GAP; LR 0 cannot go on a log axis
    assert _png_ok(plot_curves(old, tmp_path / "c.png", best_epoch=None))


def test_score_axis_zooms_on_the_data():
    lo, hi = score_limits([0.81, 0.83, 0.85])
    assert 0.75 < lo < 0.81 and 0.85 < hi < 0.9
    lo, hi = score_limits([0.5])  # one value still gets a span
    assert lo < 0.5 < hi and hi - lo >= 0.04
    assert score_limits([np.nan]) == (0.0, 1.0)


def test_experiment_curves_skip_unreadable_metrics(tmp_path):
    from pipeline.report.plots import plot_experiment_curves

    rng = np.random.default_rng(1)
    oof = (np.array(["a"]), np.ones((1, 2), np.float32) / 2, np.array([0]))
    write_run(tmp_path, "e", "m", 0, oof, hist=history(4, 1.0, rng))
    d = write_run(tmp_path, "e", "m", 1, oof)
    (d / schema.RUN_METRICS).write_text("")  # empty: left out with a warning, not a crash
    assert _png_ok(plot_experiment_curves(tmp_path, "e", tmp_path / "curves.png"))
    assert plot_experiment_curves(tmp_path, "nothing", tmp_path / "none.png") is None


@pytest.fixture()
def drawn(monkeypatch):
    """The figures the plot functions build, kept instead of only written, to inspect them."""
    from pipeline.report import plots_classes, plots_curves

    figs = []
    for module in (plots_curves, plots_classes):
        save = module.save
        monkeypatch.setattr(module, "save", lambda fig, path, save=save: figs.append(fig) or save(fig, path))
    return figs


def test_curves_end_at_one_label_every_lr_step_and_say_train_longer(tmp_path, drawn):
    from pipeline.report.plots_curves import TRAIN_LONGER

    h = history(12, 2.0, np.random.default_rng(0)).assign(val_top5=np.linspace(0.9, 1.0, 12))  # top-5 reaches 1
    plot_curves(h, tmp_path / "a.png", "e: m/fold0", best_epoch=7)
    scores, _, lr = drawn[-1].axes
    assert scores.get_ylim()[1] == pytest.approx(1.0)  # not 1.2: no score is above 1
    assert [t.get_text() for t in lr.texts] == ["5e-4", "2.5e-4", "1.25e-4", "6.25e-5"]  # each halving
    assert TRAIN_LONGER not in [t.get_text() for t in drawn[-1].texts]
    plot_curves(h, tmp_path / "b.png", "e: m/fold0", best_epoch=12)  # the best epoch is the last
    assert TRAIN_LONGER in [t.get_text() for t in drawn[-1].texts]
    cosine = h.assign(lr=np.geomspace(1e-3, 1e-5, 12))  # a new LR every epoch: first, lowest, last only
    plot_curves(cosine, tmp_path / "c.png", best_epoch=3)
    assert [t.get_text() for t in drawn[-1].axes[2].texts] == ["1e-3", "1e-5"]


def test_leaderboard_md_is_readable_and_says_train_longer(tmp_path, caplog):
    rows = fake_experiment(tmp_path, "e", {"a": 2.0, "b": 1.0}, folds=(0, 1), epochs=6)
    info = run_info(tmp_path, "e", ["a", "b"])
    info["b"]["best_epoch"] = {"0": 4, "1": 6}  # b's fold 1 peaked on its last epoch, a's every fold
    info["a"]["best_epoch"] = {"0": 6, "1": 6}
    with caplog.at_level("WARNING"):
        md = write_leaderboard(tmp_path / "e", rows, info, "e")["md"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| #"))
    assert header.count("|") - 1 <= 9, header  # about 8 columns; the rest is in the CSV
    assert "CV GAP" in header and "GAP folds (mean ± std)" in header and "test top-1" in header
    assert "| 2 folds x 6 epochs, bf16, cpu |" in md
    assert "a: best epoch = the last (6) in fold(s) 0, 1; b: best epoch = the last (6) in fold(s) 1." in md
    warned = [r.getMessage() for r in caplog.records if "train longer" in r.getMessage()]
    assert len(warned) == 2 and warned[1].startswith("b: best epoch = the last (6) in fold(s) 1")
    info["a"]["best_epoch"] = info["b"]["best_epoch"] = {"0": 3, "1": 5}
    assert "Train longer" not in write_leaderboard(tmp_path / "e", rows, info, "e")["md"].read_text()
