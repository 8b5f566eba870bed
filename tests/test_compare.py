"""``python -m pipeline compare``: model x experiment table and figure from run folders and leaderboards."""

import numpy as np
import pandas as pd
import pytest

from common.cli import run_main
from common.errors import ConfigError, DataError
from pipeline.__main__ import main as cli
from pipeline.report.compare import compare_table, default_out, main
from pipeline.report.leaderboard import run_info, write_leaderboard
from tests.runfolders import fake_experiment, synthetic_probs, write_run

ENS = [
    {"model": "ensemble", "fold": "cv", "n": 120, "top1": 0.9, "top5": 1.0, "gap": 0.88},
    {"model": "ensemble", "fold": "test", "n": 50, "top1": 0.8, "top5": 1.0, "gap": 0.79},
]


@pytest.fixture()
def two_experiments(tmp_path):
    """'base' (leaderboard written by the ensemble stage) and 'new' (runs only, no leaderboard)."""
    runs = tmp_path / "runs"
    a = fake_experiment(runs, "base", {"resnext": 1.5, "resneat": 2.5}, summary={"precision": "bf16"}) + ENS
    write_leaderboard(runs / "base", a, run_info(runs, "base", ["resnext", "resneat"]), "base")
    b = fake_experiment(runs, "new", {"resneat": 3.0, "only_new": 1.0}, seed=1, summary={"params": 5_000_000})
    return runs, pd.DataFrame(a), pd.DataFrame(b)


def _fold_stats(long: pd.DataFrame, model: str, m: str) -> tuple[float, float]:
    v = long[(long["model"] == model) & long["fold"].isin(["0", "1", "2"])][m].to_numpy()
    return float(np.mean(v)), float(np.std(v, ddof=1))


def test_model_by_experiment_cells(two_experiments):
    runs, a, b = two_experiments
    t = compare_table(["base", "new"], runs, "gap")
    cell = {(r.model, r.experiment): r for r in t.itertuples()}
    assert set(cell) == {("resnext", "base"), ("resneat", "base"), ("ensemble", "base"), ("resneat", "new"),
                         ("only_new", "new")}  # fmt: skip
    for (model, exp), r in cell.items():
        if model == "ensemble":
            continue
        long = a if exp == "base" else b
        for m in ("top1", "top5", "gap"):
            mean, std = _fold_stats(long, model, m)
            assert getattr(r, f"cv_{m}") == pytest.approx(mean) and getattr(r, f"cv_{m}_std") == pytest.approx(std)
            pooled = long[(long["model"] == model) & (long["fold"] == "cv")][m].iloc[0]
            assert getattr(r, f"oof_{m}") == pytest.approx(pooled)  # the runs-only path pools oof.npz the same way
    base, new = cell[("resneat", "base")], cell[("resneat", "new")]
    assert base.test_gap == pytest.approx(a[(a["model"] == "resneat") & (a["fold"] == "test")]["gap"].iloc[0])
    assert np.isnan(new.test_gap) and new.source == "runs"  # no leaderboard: no fold-averaged test
    assert cell[("ensemble", "base")].cv_gap == 0.88 and np.isnan(cell[("ensemble", "base")].cv_gap_std)
    assert base.precision == "bf16" and new.params_m == 5.0 and np.isnan(base.params_m)
    # models ordered by their best CV GAP over the experiments, experiments in the given order
    best = t.groupby("model", sort=False)["cv_gap"].max()
    assert list(best.index) == list(best.sort_values(ascending=False).index)


def test_outputs_and_the_pivot(two_experiments, capsys):
    runs, _, _ = two_experiments
    assert main(["base", "new"], str(runs), None, "top1") == 0
    out = default_out(runs, ["base", "new"])
    assert out.name == "base_vs_new"
    for ext in ("csv", "md", "png"):
        assert (out / f"compare.{ext}").stat().st_size > (5000 if ext == "png" else 100)
    md = (out / "compare.md").read_text()
    pivot = md.split("\n## ")[0]  # the model x experiment table, before the per-experiment ones
    lines = {ln.split("|")[1].strip(): ln for ln in pivot.splitlines() if ln.startswith("| ")}
    t = pd.read_csv(out / "compare.csv").set_index(["model", "experiment"])
    only = lines["only_new"].split("|")
    assert only[2].strip() == "—"  # not in 'base'
    r = t.loc[("only_new", "new")]
    assert only[3].strip().strip("*") == f"{r.cv_top1:.4f} ± {r.cv_top1_std:.4f}"
    d = t.loc[("resneat", "new"), "cv_top1"] - t.loc[("resneat", "base"), "cv_top1"]
    assert f"{d:+.4f}" in lines["resneat"]
    assert "## base" in md and "## new" in md and "Scored from the run folders" in md
    assert "| resneat |" in capsys.readouterr().out


def test_stale_leaderboard_is_rescored_from_the_runs(two_experiments):
    runs, _, _ = two_experiments
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 8, 40)
    ids = np.array([f"x{i}" for i in range(40)])
    write_run(runs, "base", "resneat", 3, (ids, synthetic_probs(rng, labels, 8, 2.5), labels))  # after the ensemble
    t = compare_table(["base"], runs).set_index("model")
    assert t.loc["resneat", "folds"] == 4 and t.loc["resneat", "source"] == "runs"
    assert np.isnan(t.loc["resneat", "test_gap"]) and t.loc["resnext", "source"] == "leaderboard"


def test_missing_or_unfinished_experiment_is_one_error_line(two_experiments, capsys):
    runs, _, _ = two_experiments
    with pytest.raises(DataError, match=r"experiment 'bse' not found under .*did you mean: base"):
        compare_table(["bse", "new"], runs)
    (runs / "empty" / "resnet").mkdir(parents=True)
    with pytest.raises(DataError, match=r"experiment 'empty' has no finished runs"):
        compare_table(["base", "empty"], runs)
    with pytest.raises(ConfigError, match="unknown metric 'acc'"):
        compare_table(["base"], runs, "acc")
    with pytest.raises(ConfigError, match="listed twice: base"):
        compare_table(["base", "base"], runs)
    assert run_main(cli, ["compare", "base", "nope", "--runs-root", str(runs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: compare: experiment 'nope' not found")
    assert not (runs / "compare").exists()  # nothing written


def test_many_models_and_experiments_figure(tmp_path):
    runs = tmp_path / "runs"
    exps = [f"exp_{i}" for i in range(4)]
    for i, e in enumerate(exps):
        fake_experiment(runs, e, {f"net_{j:02d}": 0.2 * j + 0.1 * i for j in range(9)}, folds=(0, 1), n_per_fold=10,
                        n_test=10, epochs=2, seed=i)  # fmt: skip
    assert main(exps, str(runs), str(tmp_path / "out"), "gap") == 0
    assert (tmp_path / "out" / "compare.png").stat().st_size > 10000
    assert len(pd.read_csv(tmp_path / "out" / "compare.csv")) == 36
