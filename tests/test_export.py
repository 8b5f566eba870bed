"""Export bundle: contents, fused weights (RepLKNet), the same probabilities as the run folders it
came from, the submit stage on its workspace, the wheel installed offline, and no half bundle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from common import schema
from common.cli import run_main
from pipeline.config_stages import EnsembleConfig, ExportConfig, PredictConfig
from pipeline.infer.predict import run_predict
from pipeline.runs.bundle import BUNDLE_JSON, BUNDLE_RUNS, PREP_JSON, read_bundle
from pipeline.runs.load import load_run
from pipeline.runs.predfile import load_predictions
from pipeline.submit.export import run_export
from tests.test_predict import train_config

EXP = "x"
# RepLKNet-31T at a tiny width: the same 31/29/27/13 kernels and re-parameterisable branches
TINY_REPLKNET = {"channels": [8, 16, 16, 32], "layers": [1, 1, 2, 1]}
MODELS = ("simple_cnn", "replknet_31t")


@pytest.fixture(scope="module")
def exported(tiny_data, tmp_path_factory) -> dict:
    from pipeline.train.stage import fit

    root = tmp_path_factory.mktemp("export")
    runs = root / "runs"
    fit(train_config(tiny_data, runs, experiment=EXP), "simple_cnn", 0)
    fit(train_config(tiny_data, runs, experiment=EXP, model_kwargs=TINY_REPLKNET, lr=1e-3), "replknet_31t", 0)
    cfg = ExportConfig(
        dataset="tiny",
        data_root=str(tiny_data["data_root"]),
        runs_root=str(runs),
        experiment=EXP,
        out_dir=str(root / "export"),
    )
    bundle = run_export(cfg)
    return {"root": root, "runs": runs, "bundle": bundle, "cfg": cfg}


def competition_folder(tiny_data, root: Path) -> tuple[Path, list[str]]:
    """A GLR 2020-style test folder (sample_submission.csv + test/a/b/c/<id>.jpg) holding the raw
    images of the internal test split, plus one empty file and one missing image."""
    data_dir = tiny_data["data_root"] / "tiny"
    raw = {p.stem: p for p in (tiny_data["data_root"] / "raw" / "tiny").rglob("*.jpg")}
    ids = list(schema.read_manifest(data_dir, "test")["id"])
    order = ids[:3] + ["0000empty"] + ids[3:] + ["ffffmissing"]
    for image_id in order:
        dst = root / "test" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
        if image_id == "ffffmissing":
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if image_id == "0000empty":
            dst.write_bytes(b"")
        else:
            shutil.copy(raw[image_id], dst)
    pd.DataFrame({"id": order, "landmarks": ""}).to_csv(root / "sample_submission.csv", index=False)
    return root, order


def test_bundle_contents(exported, tiny_data):
    b = exported["bundle"]
    data_dir = tiny_data["data_root"] / "tiny"
    meta = json.loads((b / BUNDLE_JSON).read_text())
    assert (meta["dataset"], meta["experiment"], meta["num_classes"]) == ("tiny", EXP, 6)
    assert {(r["model"], r["fused"]) for r in meta["runs"]} == {("simple_cnn", False), ("replknet_31t", True)}
    assert meta["versions"]["torch"] == metadata.version("torch") and meta["wheel"].endswith(".whl")
    prep = json.loads((b / PREP_JSON).read_text())
    assert prep["fingerprint"] == schema.prep_fingerprint(data_dir)
    assert (prep["image_size"], prep["resize_mode"]) == (36, "square")
    pd.testing.assert_frame_equal(schema.read_label_map(b), schema.read_label_map(data_dir))
    for model in MODELS:
        run = schema.run_dir(b / BUNDLE_RUNS, EXP, model, 0)
        assert {p.name for p in run.iterdir()} == {"best.pt", "config.yaml", "summary.json", "DONE"}
        recipe = yaml.safe_load((run / schema.RUN_CONFIG).read_text())
        assert recipe["model"] == model and recipe["fused"] == (model == "replknet_31t")
        assert recipe["prep"]["fingerprint"] == prep["fingerprint"]
        keys = set(torch.load(run / schema.RUN_BEST, map_location="cpu", weights_only=False)["model"])
        if model == "replknet_31t":  # fused: one large conv with bias per block, no branches left
            assert any("reparam_conv" in k for k in keys) and not any("small_conv" in k for k in keys)
    (wheel,) = (b / "wheels").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    want = {"pipeline/infer/predict.py", "pipeline/__main__.py", "data_prep/images.py", "common/schema.py"}
    assert want <= set(names)
    readme = (b / "README.md").read_text()
    assert "pip install --no-index --no-deps /kaggle/input/" in readme and "torch 2." in readme
    assert "test_root=/kaggle/input/landmark-recognition-2021" in readme and "python -m pipeline submit" in readme
    assert read_bundle(b).prep.fingerprint == prep["fingerprint"]
    assert [p.name for p in b.parent.iterdir() if p.name != ".lock"] == [EXP]  # no temporary folder left


def test_fused_replknet_gives_the_trained_network_outputs(exported):
    orig = load_run(schema.run_dir(exported["runs"], EXP, "replknet_31t", 0))
    fused = load_run(schema.run_dir(exported["bundle"] / BUNDLE_RUNS, EXP, "replknet_31t", 0))
    assert fused.fused and not orig.fused
    assert sum(p.numel() for p in fused.model.parameters()) < sum(p.numel() for p in orig.model.parameters())
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(fused.model(x), orig.model(x), atol=1e-4, rtol=1e-4)


def test_bundle_predicts_the_run_folders_probabilities_and_submit_runs_on_it(exported, tiny_data, tmp_path):
    data_dir = tiny_data["data_root"] / "tiny"
    test_root, order = competition_folder(tiny_data, tmp_path / "comp")
    common = dict(mixed_precision="no", progress=False, probs_dtype="float32", batch_size=8)
    run_predict(
        PredictConfig(
            dataset="tiny",
            data_root=str(tiny_data["data_root"]),
            runs_root=str(exported["runs"]),
            experiment=EXP,
            manifests=["test"],
            **common,
        )  # fmt: skip
    )
    work = tmp_path / "work"
    written = run_predict(
        PredictConfig(bundle=str(exported["bundle"]), test_root=str(test_root), work_dir=str(work), **common)
    )
    wdata, wruns = work / "data" / "tiny", work / "runs" / EXP
    status = pd.read_csv(wdata / schema.COMPETITION_ORDER, dtype=str).set_index("id")["status"]
    assert list(status.index) == order  # every id, in sample_submission order
    assert status["0000empty"] == "empty_file" and status["ffffmissing"] == "missing_image"
    assert (status.drop(["0000empty", "ffffmissing"]) == "ok").all()
    report = json.loads((wdata / schema.PREP_REPORT).read_text())
    assert report["fingerprint"] == schema.prep_fingerprint(data_dir)
    test_ids = list(schema.read_manifest(data_dir, "test")["id"])
    for model in MODELS:
        ours = load_predictions(schema.run_dir(exported["runs"], EXP, model, 0) / "test.npz")
        path = wruns / model / "fold0" / "competition.npz"
        assert path in written and (path.parent / schema.RUN_DONE).is_file()
        theirs = load_predictions(path)
        assert list(theirs["ids"]) == test_ids  # readable ids only, in sample order
        assert (theirs["labels"] == schema.UNLABELLED).all()
        # the same pixels and weights: the same probabilities (RepLKNet fused in the bundle)
        np.testing.assert_allclose(theirs["probs"], ours["probs"], atol=1e-4 if model == "replknet_31t" else 1e-6)
        assert theirs["meta"]["prep_fingerprint"] == report["fingerprint"]
        assert theirs["meta"]["fused"] == (model == "replknet_31t")

    # the submit stage runs unchanged on the workspace
    from pipeline.submit.stage import run_submit

    res = run_submit(
        EnsembleConfig(
            dataset="tiny",
            experiment=EXP,
            data_root=str(work / "data"),
            runs_root=str(work / "runs"),
            name="submission",
            submissions_dir=str(tmp_path / "subs"),
        )  # fmt: skip
    )
    sub = pd.read_csv(res["submission"], dtype=str, keep_default_na=False)
    assert list(sub["id"]) == order
    assert sub.set_index("id").loc[["0000empty", "ffffmissing"], "landmarks"].eq("").all()
    assert res["unreadable"] == 2


def test_workspace_never_overwrites_a_prepped_data_set(exported, tiny_data, tmp_path, capsys):
    from pipeline.__main__ import main

    test_root, _ = competition_folder(tiny_data, tmp_path / "comp")
    # work_dir whose data/tiny is the real prep: refused, nothing touched
    work = tiny_data["data_root"].parent
    before = {p: p.stat().st_mtime_ns for p in (work / "data" / "tiny").glob("*.*")}
    capsys.readouterr()
    args = [
        "predict",
        f"bundle={exported['bundle']}",
        f"test_root={test_root}",
        f"work_dir={work}",
        "mixed_precision=no",
    ]
    code = run_main(main, args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "holds a prepped data set, not a predict workspace" in err[0]
    assert before == {p: p.stat().st_mtime_ns for p in (work / "data" / "tiny").glob("*.*")}


def test_export_of_a_broken_run_is_one_line_and_writes_no_bundle(exported, tmp_path, capsys):
    from pipeline.__main__ import main

    runs = tmp_path / "runs"
    shutil.copytree(exported["runs"] / EXP, runs / EXP)
    best = schema.run_dir(runs, EXP, "replknet_31t", 0) / schema.RUN_BEST
    best.write_bytes(best.read_bytes()[:1000])
    cfg = exported["cfg"]
    capsys.readouterr()
    code = run_main(main, ["export", f"runs_root={runs}", f"data_root={cfg.data_root}", "dataset=tiny",
                           f"experiment={EXP}", f"out_dir={tmp_path / 'out'}"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "replknet_31t/fold0/best.pt: unreadable weights" in err[0]
    assert not (tmp_path / "out").exists() or not [p for p in (tmp_path / "out").iterdir() if p.name != ".lock"]


def test_re_export_replaces_the_bundle_whole(exported, tmp_path):
    cfg = exported["cfg"]
    out = tmp_path / "out"
    first = run_export(ExportConfig(**{**cfg.__dict__, "out_dir": str(out), "wheel": False, "models": ["simple_cnn"]}))
    assert json.loads((first / BUNDLE_JSON).read_text())["wheel"] is None
    second = run_export(ExportConfig(**{**cfg.__dict__, "out_dir": str(out), "wheel": False, "fuse": False}))
    assert second == first
    meta = json.loads((second / BUNDLE_JSON).read_text())
    assert {(r["model"], r["fused"]) for r in meta["runs"]} == {("simple_cnn", False), ("replknet_31t", False)}
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == [EXP]  # no .tmp / .old left


@pytest.mark.slow
def test_the_wheel_installs_offline_and_predicts_from_the_bundle(exported, tiny_data, tmp_path):
    """What a Kaggle notebook does: pip install --no-index the bundle's wheel, predict from the bundle."""
    b = exported["bundle"]
    target = tmp_path / "site"
    (wheel,) = (b / "wheels").glob("*.whl")
    env = {**os.environ, "PIP_NO_INDEX": "1", "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--target", str(target), str(wheel)]
    p = subprocess.run(pip, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    where = subprocess.run(
        [sys.executable, "-c", "import pipeline.infer.predict as m; print(m.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr
    test_root, _ = competition_folder(tiny_data, tmp_path / "comp")
    cmd = [sys.executable, "-m", "pipeline", "predict", f"bundle={b}", f"test_root={test_root}", "work_dir=work",
           "mixed_precision=no", "probs_dtype=float32"]  # fmt: skip
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "next: python -m pipeline submit dataset=tiny experiment=x" in p.stdout
    got = load_predictions(tmp_path / "work" / "runs" / EXP / "replknet_31t" / "fold0" / "competition.npz")
    ref = load_predictions(schema.run_dir(exported["runs"], EXP, "replknet_31t", 0) / "test.npz")
    np.testing.assert_allclose(got["probs"], ref["probs"], atol=1e-3)  # ref may be stored as float16
