"""Hardening III of the competition stages (issue 18) and submission names (issue 21): stale
predictions after retraining, the validator's number rules, GAP with broken test images, export
that never overwrites what it did not write, one line instead of a traceback, and submissions
named after their experiment. Hand-made run folders (tests/ensemble_helpers.py) unless a real
trained run is the point."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from common import schema
from common.errors import DataError, PipelineError
from pipeline.ensemble.stage import run_ensemble
from pipeline.runs.predfile import WEIGHTS_KEY, load_predictions, weights_sha
from pipeline.submit.stage import run_submit
from tests.ensemble_helpers import config, onehot_probs, run_dir, write_data, write_pred
from tests.test_submit import COMP_IDS, CONF, PRED, SOLUTION, _comp

# ---------------------------------------------------------------- 1. stale predictions


def _best(d, content: bytes) -> str:
    """A fake best.pt (the check hashes bytes; nothing loads it) and its sha256."""
    (d / schema.RUN_BEST).write_bytes(content)
    return hashlib.sha256(content).hexdigest()


def test_weights_sha_hashes_each_file_once_until_it_changes(tmp_path, monkeypatch):
    calls = []
    real = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda f, name: calls.append(name) or real(f, name))
    path = tmp_path / schema.RUN_BEST
    sha = _best(tmp_path, b"weights v1")
    assert [weights_sha(path) for _ in range(3)] == [sha] * 3 and len(calls) == 1
    new = _best(tmp_path, b"weights v2, retrained")  # another size and mtime: hashed again
    assert weights_sha(path) == new != sha and len(calls) == 2
    assert weights_sha(tmp_path / "absent.pt") is None


def test_a_prediction_of_an_older_best_pt_is_refused_in_one_line(tmp_path):
    root = _comp(tmp_path)
    d = run_dir(root, "m2", 1)
    old = _best(d, b"first training")
    write_pred(d, "competition", COMP_IDS, onehot_probs(PRED, CONF), [-3] * 5, **{WEIGHTS_KEY: old})
    assert run_submit(config(root))["rows"] == 6  # current: accepted
    (root / "submissions" / "sub.csv").unlink()
    _best(d, b"retrained: other weights")
    with pytest.raises(DataError) as e:
        run_submit(config(root))
    msg = str(e.value)
    assert "\n" not in msg and str(d / "competition.npz") in msg and f"of run {d}" in msg
    assert "stale: predicted with an older best.pt" in msg and "rerun 'make predict'" in msg
    assert not (root / "submissions" / "sub.csv").exists()


def test_files_without_the_record_are_accepted_with_one_warning(tmp_path, caplog):
    root = _comp(tmp_path)  # four competition files without weights_sha256
    for m in ("m1", "m2"):
        for f in (0, 1):
            _best(run_dir(root, m, f), f"{m}{f}".encode())
    with caplog.at_level(logging.WARNING):
        run_submit(config(root))
    warned = [r for r in caplog.records if "records no weights identity" in r.getMessage()]
    assert len(warned) == 1 and "m1/fold0/competition.npz" in warned[0].getMessage()


def test_the_ensemble_refuses_a_stale_training_oof(tmp_path):
    write_data(tmp_path)
    for m in ("m1", "m2"):
        d = run_dir(tmp_path, m, 0)
        sha = _best(d, m.encode())
        write_pred(d, "oof", ["a", "b"], [[0.9, 0.1, 0], [0.2, 0.8, 0]], [0, 1], **{WEIGHTS_KEY: sha})
        write_pred(d, "test", ["t0"], [[0.5, 0.3, 0.2]], [0], **{WEIGHTS_KEY: sha})
    run_ensemble(config(tmp_path))
    _best(run_dir(tmp_path, "m1", 0), b"m1 retrained")
    with pytest.raises(DataError, match=r"m1/fold0/oof\.npz: stale: predicted with an older best\.pt"):
        run_ensemble(config(tmp_path))


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> Path:
    """runs_root of one finished tiny run (simple_cnn, fold 0, one epoch) of experiment 'p'."""
    from pipeline.train.stage import fit
    from tests.test_predict import train_config

    root = tmp_path_factory.mktemp("hardening_runs")
    fit(train_config(tiny_data, root, folds=[0]), "simple_cnn", 0)
    return root


def test_training_and_predict_record_the_final_best_pt(tiny_data, trained, tmp_path):
    """A real tiny run: training's oof/test and predict's files carry the sha256 of best.pt; after a
    retrain (best.pt replaced) the ensemble refuses the old files until predict rewrites them."""
    import torch

    from pipeline.infer.predict import run_predict
    from tests.test_predict import predict_config

    shutil.copytree(trained, tmp_path / "runs")
    run = schema.run_dir(tmp_path / "runs", "p", "simple_cnn", 0)
    sha = weights_sha(run / schema.RUN_BEST)
    for name in (schema.RUN_OOF, schema.RUN_TEST):
        assert load_predictions(run / name)["meta"][WEIGHTS_KEY] == sha
    cfg = config(tmp_path, dataset="tiny", data_root=str(tiny_data["data_root"]), experiment="p")
    run_ensemble(cfg)
    state = torch.load(run / schema.RUN_BEST, weights_only=False)
    state["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, run / schema.RUN_BEST)  # what a retrain leaves: new weights, old predictions
    with pytest.raises(DataError, match="stale: predicted with an older best.pt"):
        run_ensemble(cfg)
    run_predict(predict_config(tiny_data, tmp_path / "runs", manifests=["oof", "test"]))
    assert load_predictions(run / schema.RUN_TEST)["meta"][WEIGHTS_KEY] == weights_sha(run / schema.RUN_BEST) != sha
    run_ensemble(cfg)


# ---------------------------------------------------------------- 2. the validator's number rules


@pytest.mark.parametrize(
    "cell, problem",
    [
        ("\u0661\u0662 0.5", "is not '<landmark_id> <confidence>'"),  # Arabic-Indic digits: isdigit() is True
        ("12 \u0660.\u0665", "confidence '\u0660.\u0665' is not a number"),  # float() takes them
        ("12 0.5_0", "confidence '0.5_0' is not a number"),  # float() takes underscores
        ("9223372036854775808 0.5", "landmark id '9223372036854775808' is beyond int64"),
        ("12 1.5", "confidence '1.5' is outside [0, 1]"),
        ("12 -0.2", "confidence '-0.2' is outside [0, 1]"),
        ("12 1e400", "confidence '1e400' is not finite"),
        ("12 Infinity", "confidence 'Infinity' is not finite"),
    ],
)
def test_the_validator_takes_only_ascii_int_and_a_confidence_in_0_1(cell, problem):
    from pipeline.submit.validate import check_cell

    assert problem in (check_cell(cell) or "")


@pytest.mark.parametrize("cell", ["9223372036854775807 1", "0 0", "12 .5", "12 1e-3", "12 +0.25", "7 1.000000"])
def test_the_validator_keeps_accepting_valid_cells(cell):
    from pipeline.submit.validate import check_cell

    assert check_cell(cell) is None


def test_validate_sample_strips_padded_ids_like_prep(tmp_path, capsys):
    from data_prep.competition import read_id_csv
    from pipeline.__main__ import main as cli
    from pipeline.submit.validate import read_sample_ids

    sample = tmp_path / "sample_submission.csv"
    sample.write_text('id,landmarks\n"  abc01 ",\nabc02  ,\n')
    sub = tmp_path / "sub.csv"
    sub.write_text("id,landmarks\nabc01,12 0.5\nabc02,\n")  # what submit writes: prep's stripped ids
    assert read_sample_ids(sample) == read_id_csv(sample).tolist() == ["abc01", "abc02"]
    assert cli(["validate", str(sub), "--sample", str(sample)]) == 0
    assert "OK: 2 rows, 1 answers, 1 empty" in capsys.readouterr().out


# ---------------------------------------------------------------- 3. GAP with broken test images

# the solution file of tests/test_submit.py's set (c2 is the unreadable image): original landmark ids
TRUTH = {"c0": "1234", "c1": "77", "c3": "77", "c4": "", "c5": "56789"}


def _labelled_comp(root, c2: str | None, solution_kept: bool = True):
    """test_submit's competition set, labelled, with a solution file recorded by prep like
    data_prep/prep.py does (``prep_report.json`` ``competition.solution``)."""
    _comp(root, labels=SOLUTION)
    truth = {**TRUTH, **({"c2": c2} if c2 is not None else {})}
    sol = root / "solution.csv"
    sol.write_text("id,landmarks,Usage\n" + "".join(f"{i},{lid},Public\n" for i, lid in truth.items()))
    report = root / "data" / "ds" / schema.PREP_REPORT
    rep = json.loads(report.read_text())
    report.write_text(json.dumps({**rep, "competition": {"solution": str(sol), "labelled": True}}))
    if not solution_kept:
        sol.unlink()


def _hand_gap(answers: list[tuple[float, bool]], m: int) -> float:
    """GAP by its definition: sum over the ranked answers of precision@i x rel(i), over M."""
    hits, total = 0, 0.0
    for i, (_, right) in enumerate(sorted(answers, key=lambda a: -a[0]), start=1):
        if right:
            hits += 1
            total += hits / i
    return total / m


# the answers of the five readable rows: (confidence, right?) - c4 is a non-landmark
ANSWERS = [(0.9, True), (0.7, False), (0.5, True), (0.4, False), (0.8, True)]


@pytest.mark.parametrize(
    "c2, m",
    [
        ("56789", 5),  # a landmark photo that could not be read: empty answer, still in M (Kaggle)
        ("", 4),  # a non-landmark photo: not in M
    ],
)
def test_gap_keeps_broken_landmark_rows_in_the_denominator(tmp_path, capsys, c2, m):
    from pipeline.submit.stage import main

    _labelled_comp(tmp_path, c2)
    r = run_submit(config(tmp_path))
    assert r["gap"] == pytest.approx(_hand_gap(ANSWERS, m))
    assert r["scored"] == 6 and r["unreadable"] == 1
    main(config(tmp_path))
    assert f"GAP {_hand_gap(ANSWERS, m):.4f} over the 6 labelled rows" in capsys.readouterr().out


def test_gap_says_so_when_the_solution_of_broken_rows_is_gone(tmp_path, capsys):
    from pipeline.submit.stage import main

    _labelled_comp(tmp_path, "56789", solution_kept=False)
    main(config(tmp_path))
    out = capsys.readouterr().out
    assert f"GAP {_hand_gap(ANSWERS, 4):.4f} over the 5 labelled rows" in out
    assert "note: 1 unreadable row(s) not scored: their labels are in" in out and "solution.csv" in out


# ---------------------------------------------------------------- 4. export never overwrites what it did not write


def _export_cfg(tmp_path, out_dir, experiment: str = "exp"):
    from pipeline.config_stages import ExportConfig

    return ExportConfig(
        dataset="ds",
        data_root=str(tmp_path / "data"),
        runs_root=str(tmp_path / "runs"),
        experiment=experiment,
        out_dir=str(out_dir),
        wheel=False,
    )


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "out, message",
    [
        (lambda t: t / "runs", r"out_dir=.*runs is inside runs_root"),
        (lambda t: t / "runs" / "exp" / "bundles", r"is inside runs_root"),
        (lambda t: t / "data" / "ds", r"is inside data_root"),
        (lambda t: REPO, r"is the checkout \(it holds more than bundles\)"),
        (lambda t: REPO / "pipeline", r"is the project folder .*pipeline \(it holds more than bundles\)"),
        (lambda t: REPO / "configs" / "x", r"is the project folder .*configs"),
    ],
)
def test_export_refuses_an_out_dir_it_does_not_own(tmp_path, capsys, out, message):
    from common.cli import run_main
    from pipeline.__main__ import main as cli

    write_data(tmp_path)
    run_dir(tmp_path, "m1", 0)
    before, repo_before = _tree(tmp_path), _tree(REPO / "configs")
    with pytest.raises(PipelineError, match=message):
        from pipeline.submit.export import run_export

        run_export(_export_cfg(tmp_path, out(tmp_path)))
    args = ["export", f"data_root={tmp_path / 'data'}", f"runs_root={tmp_path / 'runs'}", "dataset=ds",
            "experiment=exp", f"out_dir={out(tmp_path)}", "wheel=false"]  # fmt: skip
    assert run_main(cli, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: export: ")
    assert _tree(tmp_path) == before and _tree(REPO / "configs") == repo_before
    assert not (REPO / "exp").exists() and not (REPO / "configs" / "x").exists()


def test_export_refuses_to_replace_a_folder_that_is_not_a_bundle(tmp_path):
    from pipeline.submit.export import run_export

    write_data(tmp_path)
    mine = tmp_path / "out" / "exp"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my own work")
    before = _tree(tmp_path / "out")
    with pytest.raises(
        PipelineError, match=r"out/exp exists and is not a bundle \(no bundle\.json written by export\)"
    ):
        run_export(_export_cfg(tmp_path, tmp_path / "out"))
    assert _tree(tmp_path / "out") == before
    with pytest.raises(PipelineError, match="must be one plain folder name"):
        run_export(_export_cfg(tmp_path, tmp_path / "out", experiment="../../x"))


def test_export_accepts_a_folder_of_bundles(tmp_path):
    """A folder holding bundles only (export's default out_dir) passes the check."""
    from pipeline.submit.export import check_out_dir

    out = tmp_path / "export"
    (out / "exp").mkdir(parents=True)
    (out / "exp" / "bundle.json").write_text("{}")
    (out / "other").mkdir()
    (out / "other" / "bundle.json").write_text("{}")
    assert check_out_dir(_export_cfg(tmp_path, out)) == (out / "exp").resolve()


# ---------------------------------------------------------------- 5. one line instead of a traceback


@pytest.fixture()
def read_only():
    """Make folders really read-only, for root too (``chattr +i``: chmod does not stop root)."""
    made = []

    def make(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
            pytest.skip("chattr +i not available here")
        made.append(path)
        return path

    yield make
    for p in made:
        subprocess.run(["chattr", "-i", str(p)], check=False)


def _cli(args: list[str], capsys) -> tuple[int, list[str]]:
    from common.cli import run_main
    from pipeline.__main__ import main

    capsys.readouterr()
    code = run_main(main, args)
    return code, capsys.readouterr().err.strip().splitlines()


def _one_line(code: int, err: list[str], *parts: str) -> None:
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    for part in parts:
        assert part in err[0], (part, err[0])


def _predict_args(tiny_data, runs_root, *more: str) -> list[str]:
    return ["predict", "dataset=tiny", f"data_root={tiny_data['data_root']}", f"runs_root={runs_root}",
            "experiment=p", "mixed_precision=no", "progress=false", *more]  # fmt: skip


def test_a_read_only_run_folder_is_one_line(tiny_data, trained, tmp_path, capsys, read_only):
    shutil.copytree(trained, tmp_path / "runs")
    run = schema.run_dir(tmp_path / "runs", "p", "simple_cnn", 0)
    before = sorted(p.name for p in run.iterdir())
    read_only(run)
    code, err = _cli(_predict_args(tiny_data, tmp_path / "runs", "manifests=test"), capsys)
    _one_line(code, err, "predict: cannot write", str(run), "permission denied (a read-only folder?)")
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_read_only_out_or_work_dir_is_one_line(tiny_data, trained, tmp_path, capsys, read_only):
    from tests.test_export import competition_folder

    photos = tmp_path / "photos"
    photos.mkdir()
    src = next((tiny_data["data_root"] / "raw" / "tiny").rglob("*.jpg"))
    shutil.copy(src, photos / "abc.jpg")
    ro = read_only(tmp_path / "ro")
    code, err = _cli(_predict_args(tiny_data, trained, f"images={photos}", f"out={ro / 'p.csv'}"), capsys)
    _one_line(code, err, "predict: cannot write", str(ro))
    (tmp_path / "a_folder.csv").mkdir()
    code, err = _cli(_predict_args(tiny_data, trained, f"images={photos}", f"out={tmp_path / 'a_folder.csv'}"), capsys)
    _one_line(code, err, "a_folder.csv is a folder; give the CSV's file name")
    test_root, _ = competition_folder(tiny_data, tmp_path / "comp")
    work = read_only(tmp_path / "work")
    code, err = _cli(_predict_args(tiny_data, trained, f"test_root={test_root}", f"work_dir={work}"), capsys)
    _one_line(code, err, "cannot write", str(work))
    assert list(work.iterdir()) == []


def _submit(tmp_path, capsys, *more: str) -> tuple[int, list[str]]:
    args = ["submit", "dataset=ds", f"data_root={tmp_path / 'data'}", f"runs_root={tmp_path / 'runs'}",
            "experiment=exp", "name=sub", *more]  # fmt: skip
    return _cli(args, capsys)


def test_submission_folder_and_name_problems_are_one_line(tmp_path, capsys, read_only):
    _comp(tmp_path)
    file_dir = tmp_path / "subs_file"
    file_dir.write_text("a file")
    _one_line(*_submit(tmp_path, capsys, f"submissions_dir={file_dir}"), "subs_file is a file, not a folder")
    (tmp_path / "s2" / "sub.csv").mkdir(parents=True)
    _one_line(*_submit(tmp_path, capsys, f"submissions_dir={tmp_path / 's2'}"), "sub.csv is a folder")
    ro = read_only(tmp_path / "ro")
    _one_line(*_submit(tmp_path, capsys, f"submissions_dir={ro}"), "submit: cannot write", str(ro))
    for name in ("a/b", "../../x", "", "n" * 300):
        code, err = _submit(tmp_path, capsys, f"submissions_dir={tmp_path / 's3'}", f"name={name}")
        _one_line(code, err, "must be one plain file name")
    assert not (tmp_path / "s3").exists() and list(ro.iterdir()) == []
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "s3" / "a").exists()


def test_compare_out_a_file_and_validate_a_folder_are_one_line(tmp_path, capsys):
    from tests.runfolders import fake_experiment

    fake_experiment(tmp_path / "runs", "e1", {"m1": 2.0}, folds=(0, 1))
    out = tmp_path / "compare_out"
    out.write_text("mine")
    code, err = _cli(["compare", "e1", "--runs-root", str(tmp_path / "runs"), "--out", str(out)], capsys)
    _one_line(code, err, "--out", "is a file")
    assert out.read_text() == "mine"
    from pipeline.__main__ import main

    capsys.readouterr()
    assert main(["validate", str(tmp_path)]) == 1
    assert capsys.readouterr().out.strip().splitlines() == [f"{tmp_path}: is a folder, not a submission CSV"]


# ---------------------------------------------------------------- 6. submissions named after their experiment


def test_the_default_name_is_the_experiment_and_is_recorded(tmp_path):
    _comp(tmp_path)
    cfg = config(tmp_path)
    values = {k: getattr(cfg, k) for k in ("dataset", "data_root", "runs_root", "submissions_dir")}
    from common.config import build_config
    from pipeline.config_stages import EnsembleConfig

    cfg = build_config(EnsembleConfig, {**values, "experiment": "exp"}, "test")  # no name given
    assert cfg.name == "exp"
    r = run_submit(cfg)
    assert r["submission"] == tmp_path / "submissions" / "exp.csv"
    record = json.loads((tmp_path / "submissions" / "exp.json").read_text())
    assert record["experiment"] == "exp" and record["name"] == "exp"
    kaggle = build_config(EnsembleConfig, {**values, "experiment": "default_kaggle", "name": "{experiment}_v2"}, "t")
    assert kaggle.name == "default_kaggle_v2"


def test_the_cli_default_name_follows_the_experiment_given_on_the_command_line(tmp_path):
    from common.config import load_stage_config
    from pipeline.config_stages import EnsembleConfig

    cfg_file = tmp_path / "ds.yaml"
    cfg_file.write_text("common:\n  dataset: ds\n  experiment: ds\n")
    assert load_stage_config(EnsembleConfig, "ensemble", str(cfg_file)).name == "ds"
    cfg = load_stage_config(EnsembleConfig, "ensemble", str(cfg_file), ["experiment=ds_kaggle"])
    assert cfg.name == "ds_kaggle"
    assert load_stage_config(EnsembleConfig, "ensemble", str(cfg_file), ["name=mine"]).name == "mine"


def test_a_submission_of_another_experiment_is_never_replaced_without_overwrite(tmp_path, capsys):
    _comp(tmp_path)
    run_submit(config(tmp_path))  # experiment 'exp' writes submissions/sub.csv
    shutil.copytree(tmp_path / "runs" / "exp", tmp_path / "runs" / "exp2")
    path = tmp_path / "submissions" / "sub.csv"
    before = path.read_bytes()
    code, err = _submit(tmp_path, capsys, f"submissions_dir={tmp_path / 'submissions'}", "experiment=exp2")
    _one_line(code, err, "sub.csv was written by experiment 'exp', this is experiment 'exp2'", "overwrite=true")
    assert path.read_bytes() == before
    run_submit(config(tmp_path))  # the same experiment replaces its own file
    r = run_submit(config(tmp_path, experiment="exp2", overwrite=True))
    assert r["submission"] == path
    assert json.loads(path.with_suffix(".json").read_text())["experiment"] == "exp2"
    path.with_suffix(".json").unlink()  # a CSV that submit did not write (no record)
    with pytest.raises(PipelineError, match=r"written by something else than submit \(no sub\.json\)"):
        run_submit(config(tmp_path, experiment="exp2"))


def test_the_internal_split_csv_is_not_called_a_submission(tmp_path, capsys):
    from pipeline.ensemble.stage import main

    write_data(tmp_path)
    for m in ("m1", "m2"):
        d = run_dir(tmp_path, m, 0)
        write_pred(d, "oof", ["a", "b"], [[0.9, 0.1, 0], [0.2, 0.8, 0]], [0, 1])
        write_pred(d, "test", ["t0"], [[0.5, 0.3, 0.2]], [0])
    assert main(config(tmp_path)) == 0
    out = capsys.readouterr().out.splitlines()
    assert not any(line.startswith("submission:") for line in out)
    assert any(
        "internal test split answers (not a submission)" in line and "sub_internal_test.csv" in line for line in out
    )


# ---------------------------------------------------------------- 7. knn + tta; 8. your photos ensembled like submit


def test_knn_with_tta_is_refused_and_the_files_read_are_recorded(tmp_path, capsys):
    from common.errors import ConfigError

    _comp(tmp_path)
    with pytest.raises(ConfigError, match="knn=true reads make embed's kNN files, made without TTA"):
        config(tmp_path, knn=True, tta=True)
    _one_line(*_submit(tmp_path, capsys, "knn=true", "tta=true"), "not with tta=true")
    for f in (0, 1):  # m1 has TTA predictions, m2 only the plain ones
        write_pred(run_dir(tmp_path, "m1", f), "competition", COMP_IDS, onehot_probs(PRED, CONF), [-3] * 5, tta=True)
    run_submit(config(tmp_path, tta=True))
    record = json.loads((tmp_path / "submissions" / "sub.json").read_text())
    assert record["tta"] is True and record["knn"] is False
    assert record["inputs"] == {"m1": ["competition_tta.npz"], "m2": ["competition.npz"]}


def test_your_photos_are_ensembled_like_submit_fold_mean_then_models():
    """Three folds of m1 and one of m2: each model counts once, as in submit (method mean)."""
    from types import SimpleNamespace

    import numpy as np

    from pipeline.infer.folders import run_shares

    rng = np.random.default_rng(0)
    runs = [SimpleNamespace(model_name=m, run_dir=Path(f"/r/{m}/fold{f}")) for m, f in
            [("m1", 0), ("m1", 1), ("m1", 2), ("m2", 0)]]  # fmt: skip
    probs = {r.run_dir: rng.dirichlet(np.ones(4), size=5) for r in runs}
    share = run_shares(runs)
    got = sum(share[d] * p for d, p in probs.items())
    m1 = (probs[Path("/r/m1/fold0")] + probs[Path("/r/m1/fold1")] + probs[Path("/r/m1/fold2")]) / 3
    np.testing.assert_allclose(got, (m1 + probs[Path("/r/m2/fold0")]) / 2)
    assert sum(share.values()) == pytest.approx(1.0)
