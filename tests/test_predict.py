"""Predict stage: files per manifest in manifest order, TTA, the checks that write nothing, your own
photos without prep, and a 2-process DDP run that gives every row once."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from common import schema
from common.cli import run_main
from common.errors import ConfigError, DataError
from pipeline.config import TrainConfig
from pipeline.config_stages import PredictConfig
from pipeline.infer.core import predict_loader
from pipeline.infer.predict import DEFAULT_MANIFESTS, run_predict
from pipeline.infer.tta import TTA
from pipeline.runs.load import load_run
from pipeline.runs.predfile import load_predictions
from pipeline.runs.prep import read_prep_identity
from pipeline.runs.scan import finished_runs
from tests.conftest import tiny_prep_config
from tests.ddp import needs_torchrun, torchrun2

EXP = "p"


def train_config(tiny_data, runs_root, **over) -> TrainConfig:
    """The tiny recipe of tests/test_train.py, one epoch, full precision (exact comparisons)."""
    from tests.test_train import tiny_train_config

    return tiny_train_config(tiny_data, runs_root, **{"experiment": EXP, "epochs": 1, "mixed_precision": "no", **over})


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory) -> dict:
    """Two finished folds of simple_cnn; the training-time OOF predictions kept aside."""
    from pipeline.train.stage import fit

    root = tmp_path_factory.mktemp("predict_runs")
    for fold in (0, 1):
        fit(train_config(tiny_data, root, folds=[fold]), "simple_cnn", fold)
    run0 = schema.run_dir(root, EXP, "simple_cnn", 0)
    return {"root": root, "run0": run0, "train_oof": load_predictions(run0 / schema.RUN_OOF)}


def predict_config(tiny_data, runs_root, **over) -> PredictConfig:
    base = dict(
        dataset="tiny",
        data_root=str(tiny_data["data_root"]),
        folds_dir=str(tiny_data["folds_dir"]),
        runs_root=str(runs_root),
        experiment=EXP,
        mixed_precision="no",
        progress=False,
        batch_size=8,
    )
    return PredictConfig(**{**base, **over})


def cli(args: list[str], capsys) -> tuple[int, list[str]]:
    """``python -m pipeline ARGS`` in this process: exit code and the stderr lines."""
    from pipeline.__main__ import main

    capsys.readouterr()
    code = run_main(main, args)
    return code, capsys.readouterr().err.strip().splitlines()


def snapshot(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


# ---------------------------------------------------------------- files, order, identity


def test_default_manifests_are_written_in_manifest_order(tiny_data, runs):
    data_dir = tiny_data["data_root"] / "tiny"
    paths = run_predict(predict_config(tiny_data, runs["root"], folds=[0]))
    expected = [m for m in DEFAULT_MANIFESTS if schema.manifest_path(data_dir, m).is_file()]
    assert "test" in expected
    assert sorted(p.name for p in paths) == sorted(schema.pred_file(m) for m in expected)
    label_map = schema.read_label_map(data_dir)
    fingerprint = schema.prep_fingerprint(data_dir)
    for manifest in expected:
        rows = schema.read_manifest(data_dir, manifest)
        p = load_predictions(runs["run0"] / schema.pred_file(manifest), dtype=None)
        assert p["probs"].dtype == np.float16  # the default storage
        assert list(p["ids"]) == list(rows["id"]) and list(p["labels"]) == list(rows["label"])
        assert p["probs"].shape == (len(rows), len(label_map))
        probs = p["probs"].astype(np.float64)
        assert np.isfinite(probs).all() and (probs >= 0).all()
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=5e-3)  # float16 rounding of C values
        meta = p["meta"]
        assert (meta["model"], meta["fold"], meta["manifest"], meta["tta"]) == ("simple_cnn", 0, manifest, None)
        assert meta["prep_fingerprint"] == fingerprint
        assert meta["label_map_sha"] == schema.label_map_sha(label_map)
        assert meta["num_classes"] == len(label_map)


def test_oof_prediction_equals_the_training_oof(tiny_data, runs):
    """Same weights, same rows, same crop: predict reproduces what training wrote for its fold."""
    (path,) = run_predict(predict_config(tiny_data, runs["root"], folds=[0], manifests=["oof"], probs_dtype="float32"))
    assert path == runs["run0"] / schema.RUN_OOF
    now, before = load_predictions(path), runs["train_oof"]
    assert list(now["ids"]) == list(before["ids"])
    folds = pd.read_csv(tiny_data["folds_file"], dtype={"id": str})
    assert sorted(now["ids"]) == sorted(folds.loc[folds["fold"] == 0, "id"])
    np.testing.assert_allclose(now["probs"], before["probs"], atol=1e-5)


def test_finished_runs_filters_and_load_run(runs, tiny_data):
    assert finished_runs(runs["root"], EXP) == [runs["run0"], runs["run0"].parent / "fold1"]
    assert finished_runs(runs["root"], EXP, folds=[1]) == [runs["run0"].parent / "fold1"]
    with pytest.raises(DataError, match="'resnet18' has no finished fold"):
        finished_runs(runs["root"], EXP, models=["resnet18"])
    with pytest.raises(DataError, match="no runs of experiment 'absent'"):
        finished_runs(runs["root"], "absent")
    run = load_run(runs["run0"])
    assert not run.model.training and run.model_name == "simple_cnn" and run.fold == 0
    assert run.cfg.img_size == 32 and run.prep.recorded
    assert run.prep.fingerprint == read_prep_identity(tiny_data["data_root"] / "tiny").fingerprint
    best = torch.load(runs["run0"] / schema.RUN_BEST, map_location="cpu", weights_only=False)["model"]
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, best[k])


# ---------------------------------------------------------------- TTA


def _loader(tiny_data, manifest="test"):
    from pipeline.data.datasets import build_dataset
    from pipeline.data.loaders import make_loader

    data_dir = tiny_data["data_root"] / "tiny"
    rows = schema.read_manifest(data_dir, manifest)
    return make_loader(build_dataset(data_dir, rows, None, "jpeg"), 8, False)


def test_tta_views_flip_and_plain(tiny_data, runs, one_thread):
    from accelerate import Accelerator
    from torchvision.transforms.v2 import functional as TF

    from pipeline.data.datasets import normalize

    acc = Accelerator(cpu=True, mixed_precision="no")
    model = load_run(runs["run0"]).model
    loader = _loader(tiny_data)
    plain = predict_loader(model, loader, acc, 32, TTA())
    # the plain view is the eval centre crop, computed here without the loop
    with torch.no_grad():
        ref = torch.cat([model(normalize(TF.center_crop(b["image"], [32, 32]))).softmax(1) for b in loader]).numpy()
    np.testing.assert_allclose(plain["probs"], ref, atol=1e-6)
    assert list(plain["index"]) == list(range(len(loader.dataset)))
    # another output per view (the embed stage passes model.embed): here the logits themselves
    logits = predict_loader(model, loader, acc, 32, TTA(), forward=lambda m, x: m(x))["probs"]
    np.testing.assert_allclose(torch.from_numpy(logits).softmax(1).numpy(), ref, atol=1e-6)
    assert not TTA(False, (1.0,)).on and TTA(True).on and TTA(False, (1.0, 1.25)).on
    # flip: the mean of the image's and the mirror's probabilities, and not the plain ones
    flip = predict_loader(model, loader, acc, 32, TTA(flip=True))
    with torch.no_grad():
        mirrored = torch.cat(
            [model(normalize(TF.center_crop(b["image"], [32, 32]).flip(-1))).softmax(1) for b in loader]
        ).numpy()
    np.testing.assert_allclose(flip["probs"], (ref + mirrored) / 2, atol=1e-6)
    assert np.abs(flip["probs"] - plain["probs"]).max() > 1e-4
    # a scale shows the same field of view at s x the pixels
    img = next(iter(loader))["image"]
    side = img.shape[-1]
    views = list(TTA(flip=True, scales=(1.0, 1.25)).views(img, 32))
    assert [v.shape[-1] for v in views] == [32, 32, 40, 40]
    assert torch.equal(views[1], views[0].flip(-1))
    assert torch.equal(views[2], TF.center_crop(TF.resize(img, [round(1.25 * side)] * 2, antialias=True), [40, 40]))


def test_tta_files_and_the_minimum_input_size(tiny_data, runs, capsys):
    cfg = predict_config(tiny_data, runs["root"], folds=[0], manifests=["test"])
    (plain,) = run_predict(cfg)
    (same,) = run_predict(predict_config(tiny_data, runs["root"], folds=[0], manifests=["test"], tta_scales=[1.0]))
    assert same == plain  # scales [1.0] without flip is no TTA: the plain file
    (tta,) = run_predict(
        predict_config(tiny_data, runs["root"], folds=[0], manifests=["test"], tta_flip=True, tta_scales=[1.0, 1.25])
    )
    assert tta.name == schema.pred_file("test", tta=True) == "test_tta.npz"
    p, t = load_predictions(plain), load_predictions(tta)
    assert list(p["ids"]) == list(t["ids"]) and np.abs(p["probs"] - t["probs"]).max() > 1e-4
    assert t["meta"]["tta"] == {"flip": True, "scales": [1.0, 1.25]}
    # 0.75 x 32 = 24 px is below simple_cnn's 32: one line, nothing written
    before = snapshot(runs["root"])
    code, err = cli(
        ["predict", f"runs_root={runs['root']}", f"data_root={tiny_data['data_root']}", "dataset=tiny",
         f"experiment={EXP}", "tta_scales=0.75,1"], capsys)  # fmt: skip
    assert code == 2 and len(err) == 1
    assert "tta_scales 0.75 gives 24x24 inputs" in err[0] and "needs at least 32x32" in err[0]
    assert snapshot(runs["root"]) == before
    with pytest.raises(ConfigError, match="tta_scales"):
        predict_config(tiny_data, runs["root"], tta_scales=[0.0]).validate()


# ---------------------------------------------------------------- checks: one line, nothing written


def _copy_runs(runs, tmp_path) -> Path:
    root = tmp_path / "runs"
    shutil.copytree(runs["root"] / EXP, root / EXP, ignore=shutil.ignore_patterns("*.png", "last.pt", ".lock"))
    return root


def _break_missing(run: Path) -> str:
    (run / schema.RUN_BEST).unlink()
    return r"fold1: finished \(DONE\) but best.pt is missing"


def _break_corrupt(run: Path) -> str:
    data = (run / schema.RUN_BEST).read_bytes()
    (run / schema.RUN_BEST).write_bytes(data[: len(data) // 2])
    return r"fold1/best.pt: unreadable weights"


def _break_shape(run: Path) -> str:
    state = torch.load(run / schema.RUN_BEST, map_location="cpu", weights_only=False)
    state["model"]["fc1.weight"] = state["model"]["fc1.weight"][:, :300]
    torch.save(state, run / schema.RUN_BEST)
    return r"weights do not fit the recipe: 'fc1.weight' has shape \(120, 300\), the network needs \(120, 400\)"


def _break_length(run: Path) -> str:
    state = torch.load(run / schema.RUN_BEST, map_location="cpu", weights_only=False)
    del state["model"]["fc2.bias"]
    torch.save(state, run / schema.RUN_BEST)
    return r"weights do not fit the recipe: key 'fc2.bias' missing"


@pytest.mark.parametrize("breaker", [_break_missing, _break_corrupt, _break_shape, _break_length])
def test_bad_weights_are_one_line_and_nothing_is_written(tiny_data, runs, tmp_path, capsys, breaker):
    root = _copy_runs(runs, tmp_path)
    pattern = breaker(schema.run_dir(root, EXP, "simple_cnn", 1))
    before = snapshot(root)
    code, err = cli(["predict", f"runs_root={root}", f"data_root={tiny_data['data_root']}", "dataset=tiny",
                     f"experiment={EXP}", "mixed_precision=no"], capsys)  # fmt: skip
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and pd.Series(err).str.contains(pattern).all(), err
    assert snapshot(root) == before  # fold 0 is fine, but nothing of it was written either


@pytest.mark.parametrize(
    "change, pattern",
    [
        (
            {"image_size": 40},
            r"trained on another prep of .*tiny \(fingerprint \w+ -> \w+: image_size 36 -> 40\)",
        ),
        ({"top_k": 5}, r"trained on another label map \(6 classes, sha \w+\) than .*label_map.csv \(5 classes"),
    ],
)
def test_another_prep_or_label_map_is_one_line(tiny_data, runs, tmp_path, capsys, change, pattern):
    from data_prep.prep import run_prep

    raw = tiny_data["data_root"] / "raw" / "tiny"
    run_prep(tiny_prep_config(tmp_path / "data", source_root=str(raw), **change), progress=False)
    before = snapshot(runs["root"])
    code, err = cli(["predict", f"runs_root={runs['root']}", f"data_root={tmp_path / 'data'}", "dataset=tiny",
                     f"experiment={EXP}", "manifests=test"], capsys)  # fmt: skip
    assert code == 2 and len(err) == 1, err
    assert pd.Series(err).str.contains(pattern).all(), err
    assert snapshot(runs["root"]) == before


def test_unknown_manifest_is_one_line(tiny_data, runs, capsys):
    code, err = cli(["predict", f"runs_root={runs['root']}", f"data_root={tiny_data['data_root']}", "dataset=tiny",
                     f"experiment={EXP}", "manifests=tset"], capsys)  # fmt: skip
    assert code == 2 and len(err) == 1 and "manifest 'tset' not found" in err[0]


# ---------------------------------------------------------------- your own photos


def _raw_sources(tiny_data) -> dict[str, Path]:
    """id -> the raw image prep cached (the generated tree, any sub-folder)."""
    return {p.stem: p for p in (tiny_data["data_root"] / "raw" / "tiny").rglob("*.jpg")}


def test_own_photos_give_the_top5_csv_of_the_run_ensemble(tiny_data, runs, tmp_path):
    data_dir = tiny_data["data_root"] / "tiny"
    test = schema.read_manifest(data_dir, "test").head(6)
    src = _raw_sources(tiny_data)
    photos = tmp_path / "my photos"
    for i, image_id in enumerate(test["id"]):  # nested folders, the id is the file stem
        dst = photos / ("a/b" if i % 2 else "") / f"{image_id}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src[image_id], dst)
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "notes.txt").write_text("not an image")
    (out,) = run_predict(predict_config(tiny_data, runs["root"], images=str(photos), probs_dtype="float32"))
    assert out == runs["root"] / EXP / "predictions_my photos.csv"
    csv = pd.read_csv(out, dtype={"id": str})
    assert sorted(csv["id"]) == sorted([*test["id"], "empty"])
    bad = csv.set_index("id").loc["empty"]
    assert bad["status"] == "empty_file" and pd.isna(bad["landmark_id_1"])
    ok = csv[csv["status"] == "ok"].set_index("id").loc[test["id"]]
    # the same pixels as prep's cache: the mean of the two runs' test predictions, in original ids
    run_predict(predict_config(tiny_data, runs["root"], manifests=["test"], probs_dtype="float32"))
    mean = np.mean(
        [load_predictions(schema.run_dir(runs["root"], EXP, "simple_cnn", f) / "test.npz")["probs"] for f in (0, 1)],
        axis=0,
    )[: len(test)]
    lids = schema.read_label_map(data_dir)["landmark_id"].to_numpy()
    top = np.argsort(-mean, axis=1, kind="stable")[:, :5]
    for r in range(5):
        assert list(ok[f"landmark_id_{r + 1}"].astype(int)) == list(lids[top[:, r]])
        np.testing.assert_allclose(ok[f"confidence_{r + 1}"], mean[np.arange(len(test)), top[:, r]], atol=2e-6)
    assert (ok["confidence_1"] >= ok["confidence_2"]).all()


def test_own_photos_with_a_repeated_id_are_one_line(tiny_data, runs, tmp_path, capsys):
    src = next(iter(_raw_sources(tiny_data).values()))
    for sub in ("x", "y"):
        (tmp_path / "ph" / sub).mkdir(parents=True)
        shutil.copy(src, tmp_path / "ph" / sub / "same.jpg")
    code, err = cli(["predict", f"runs_root={runs['root']}", f"data_root={tiny_data['data_root']}", "dataset=tiny",
                     f"experiment={EXP}", f"images={tmp_path / 'ph'}"], capsys)  # fmt: skip
    assert code == 2 and len(err) == 1 and "two images with the id 'same'" in err[0]
    assert not (runs["root"] / EXP / "predictions_ph.csv").exists()


# ---------------------------------------------------------------- several processes


@pytest.mark.slow
@needs_torchrun
def test_two_process_ddp_predicts_every_row_once_in_order(tiny_data, runs, tmp_path):
    root = _copy_runs(runs, tmp_path)
    args = [f"runs_root={root}", f"data_root={tiny_data['data_root']}", f"folds_dir={tiny_data['folds_dir']}",
            "dataset=tiny", f"experiment={EXP}", "folds=0", "manifests=test,oof", "batch_size=5",
            "mixed_precision=no", "probs_dtype=float32", "tta_flip=true"]  # fmt: skip
    torchrun2(["-m", "pipeline", "predict", *args], tmp_path)
    run = schema.run_dir(root, EXP, "simple_cnn", 0)
    single = predict_config(tiny_data, runs["root"], folds=[0], manifests=["test", "oof"], probs_dtype="float32")
    single.tta_flip = True
    run_predict(single)
    for name in ("test_tta.npz", "oof_tta.npz"):
        ddp, one = load_predictions(run / name), load_predictions(runs["run0"] / name)
        assert len(ddp["ids"]) == len(set(ddp["ids"]))  # every row exactly once ...
        assert list(ddp["ids"]) == list(one["ids"])  # ... in manifest order
        np.testing.assert_allclose(ddp["probs"], one["probs"], atol=1e-5)
        assert yaml.safe_load((run / schema.RUN_CONFIG).read_text())["model"] == "simple_cnn"


def test_pred_topk_writes_top_k_files_that_score_like_the_dense_ones(tiny_data, runs):
    """pred_topk=3 on the tiny set (4+ classes): each row keeps its 3 best classes; GAP and top-1
    from them equal those of the dense file (the leaderboard loses nothing it shows)."""
    from pipeline.metrics import score_all
    from pipeline.scores import TopK

    cfg = predict_config(tiny_data, runs["root"], folds=[0], manifests=["test"], probs_dtype="float32")
    (dense,) = run_predict(cfg)
    d = load_predictions(dense)
    (sparse,) = run_predict(
        predict_config(tiny_data, runs["root"], folds=[0], manifests=["test"], probs_dtype="float32", pred_topk=3)
    )
    s = load_predictions(sparse)
    assert isinstance(s["probs"], TopK) and s["probs"].k == 3 and s["meta"]["topk"] == 3
    assert not isinstance(d["probs"], TopK)  # 0 = auto: dense below 1000 classes
    want, got = score_all(d["probs"], d["labels"]), score_all(s["probs"], s["labels"])
    assert got["gap"] == pytest.approx(want["gap"], abs=1e-6) and got["top1"] == want["top1"]
