"""End to end through the CLI faces: prep -> folds -> train -> ensemble, as `make all` runs them."""

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import TINY_PREP
from tests.ddp import ENV, needs_torchrun, torchrun2


def run(args, cwd, check=True):
    p = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p


def write_config(tmp: Path, prep: dict, train: dict, name: str = "exp.yaml") -> Path:
    """An experiment file stating dataset, experiment and folds once (``common:``)."""
    prep = dict(prep)
    common = {"dataset": prep.pop("dataset"), "experiment": "smoke", "k": 3, "fold_seed": 42}
    for key in ("data_root", "folds_dir"):  # paths given for training serve every stage
        if key in train:
            common[key] = train.pop(key)
    cfg = {
        "common": common,
        "prep": prep,
        "train": {"img_size": 32, "batch_size": 16, "progress": False, **train},
        "predict": {"batch_size": 16},
        "ensemble": {"name": "smoke"},
    }
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def one_epoch_config(tmp: Path, tiny_data: dict) -> Path:
    """simple_cnn, fold 0, one epoch on the session's tiny data set (the several-process tests)."""
    train = {"models": ["simple_cnn"], "folds": [0], "epochs": 1, "data_root": str(tiny_data["data_root"]),
             "folds_dir": str(tiny_data["folds_dir"])}  # fmt: skip
    return write_config(tmp, {**TINY_PREP}, train)


def pipeline_all(tmp: Path, cfg: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """prep -> folds -> train -> ensemble; returns (leaderboard per model, per (model, fold))."""
    run(["data_prep", "prep", "--config", str(cfg)], tmp)
    run(["data_prep", "folds", "--config", str(cfg)], tmp)
    out = run(["pipeline", "train", "--config", str(cfg)], tmp)
    assert re.search(r"fold 0: top1 \d\.\d{4}", out.stdout)
    out = run(["pipeline", "ensemble", "--config", str(cfg)], tmp)
    assert "submissions/smoke_internal_test.csv" in out.stdout
    root = tmp / "runs" / "smoke"
    return pd.read_csv(root / "leaderboard.csv"), pd.read_csv(root / "leaderboard_folds.csv", dtype={"fold": str})


def test_smoke_tiny_default(tmp_path):
    cfg = write_config(tmp_path, TINY_PREP, {"models": ["simple_cnn", "resnet18"], "folds": [0, 1], "epochs": 2})
    board, folds = pipeline_all(tmp_path, cfg)
    assert {"simple_cnn", "resnet18"} <= set(board["model"]) and board["model"].str.startswith("ensemble").any()
    assert len(folds[folds["fold"].isin(["0", "1"])]) == 4  # model x fold rows
    sub = pd.read_csv(tmp_path / "submissions" / "smoke_internal_test.csv", dtype=str)
    test = pd.read_csv(tmp_path / "data" / "tiny" / "test.csv", dtype={"id": str})
    assert list(sub["id"]) == list(test["id"])
    lids = set(pd.read_csv(tmp_path / "data" / "tiny" / "label_map.csv")["landmark_id"].astype(str))
    assert all(tok.split()[0] in lids for tok in sub["landmarks"].dropna())
    for model in ("simple_cnn", "resnet18"):
        assert (tmp_path / "runs" / "smoke" / model / "fold0" / "curves.png").stat().st_size > 1000
    # the competition: predict the generated competition-style test set, submit, validate
    run(["pipeline", "predict", "--config", str(cfg), "tta_flip=true"], tmp_path)
    assert (tmp_path / "runs" / "smoke" / "resnet18" / "fold1" / "competition_tta.npz").is_file()
    out = run(["pipeline", "submit", "--config", str(cfg), "tta=true", "penalty=tune"], tmp_path)
    assert "submissions/smoke.csv" in out.stdout
    sample = tmp_path / "data" / "raw" / "tiny" / "competition" / "sample_submission.csv"
    out = run(["pipeline", "validate", str(tmp_path / "submissions" / "smoke.csv"), "--sample", str(sample)], tmp_path)
    assert out.returncode == 0 and "OK" in out.stdout
    order = pd.read_csv(sample, dtype=str)["id"].tolist()
    assert pd.read_csv(tmp_path / "submissions" / "smoke.csv", dtype=str)["id"].tolist() == order


@pytest.mark.realdata
def test_smoke_real_paris6k_through_the_gld_path(tmp_path, shared_data):
    """The real photos, converted to the GLD v2 layout, through the whole pipeline."""
    gld = tmp_path / "paris_gld"
    out = run(["data_prep", "convert-folder", str(shared_data / "paris6k_sample"), str(gld)], tmp_path)
    assert "250 images in 5 classes" in out.stdout
    prep = {
        "dataset": "paris",
        "source": "gld_v2",
        "source_root": str(gld),
        "top_k": 5,
        "sample_ratio": 1.0,
        "image_size": 40,
        "seed": 0,
    }
    cfg = write_config(tmp_path, prep, {"models": ["simple_cnn"], "folds": [0], "epochs": 2})
    _, folds = pipeline_all(tmp_path, cfg)
    assert folds.loc[folds["fold"] == "0", "n"].iloc[0] > 50
    lm = pd.read_csv(tmp_path / "data" / "paris" / "label_map.csv")
    assert sorted(lm["name"]) == ["defense", "eiffel_tower", "invalides", "louvre", "moulinrouge"]
    assert len(pd.read_csv(tmp_path / "submissions" / "smoke_internal_test.csv")) == len(
        pd.read_csv(tmp_path / "data/paris/test.csv")
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["pipeline", "train", "models=resnt18"], r"^error: unknown model 'resnt18' \(did you mean: resnet18"),
        (
            ["pipeline", "train", "epocs=3"],
            r"^error: command line: unknown key 'epocs' for train \(did you mean: epochs",
        ),
        (["pipeline", "ensemble", "experiment=none"], r"^error: .*(not found|no runs)"),
        (["data_prep", "folds", "dataset=absent"], r"^error: train manifest not found: data/absent/train.csv"),
        (
            ["data_prep", "prep", "source=imagefolder", "source_root=nowhere"],
            r"^error: image folder not found: nowhere",
        ),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, args, message):
    p = run([args[0], args[1], *args[2:]], tmp_path, check=False)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), p.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt"))


@pytest.mark.slow
@needs_torchrun
def test_two_process_ddp_on_cpu(tmp_path, tiny_data):
    """Two gloo ranks: same loop, predictions gathered without duplicates."""
    cfg = one_epoch_config(tmp_path, tiny_data)
    torchrun2(["-m", "pipeline", "train", "--config", str(cfg)], tmp_path)
    run_dir = tmp_path / "runs" / "smoke" / "simple_cnn" / "fold0"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["processes"] == 2
    import numpy as np

    oof = np.load(run_dir / "oof.npz")
    folds = pd.read_csv(tiny_data["folds_file"], dtype={"id": str})
    assert sorted(oof["ids"]) == sorted(folds.loc[folds["fold"] == 0, "id"])  # each id once


@pytest.mark.slow
@needs_torchrun
def test_two_process_schedule_steps_once_per_step_and_logs_once(tmp_path, tiny_data):
    """Under 2 ranks a per-step schedule advances once per optimizer step (not once per rank),
    SyncBN is refused on CPU with a warning (torch's SyncBatchNorm is GPU-only), and every log
    line is printed once."""
    import numpy as np
    import torch

    cfg = write_config(
        tmp_path,
        {**TINY_PREP},
        {
            "models": ["resnet18"],
            "folds": [0],
            "epochs": 2,
            "schedule": "cosine",
            "warmup_epochs": 0.5,
            "lr": 0.004,
            "min_lr": 0.0001,
            "sync_bn": True,
            "data_root": str(tiny_data["data_root"]),
            "folds_dir": str(tiny_data["folds_dir"]),
        },
    )
    p = torchrun2(["-m", "pipeline", "train", "--config", str(cfg)], tmp_path, LOGLEVEL="INFO")
    run_dir = tmp_path / "runs" / "smoke" / "resnet18" / "fold0"
    assert len(re.findall(r"epoch 2/2: train_loss", p.stderr)) == 1  # one line, not one per rank
    last = torch.load(run_dir / "last.pt", weights_only=False)
    train_rows = int(np.load(run_dir / "oof.npz")["ids"].shape[0])
    folds = pd.read_csv(tiny_data["folds_file"])
    n_train = int((folds["fold"] != 0).sum())
    assert train_rows == int((folds["fold"] == 0).sum())
    per_rank_batches = n_train // 16 // 2  # drop_last batches of 16, dealt to 2 ranks (an odd one dropped)
    assert per_rank_batches >= 1
    assert last["scheduler"]["steps"] == 2 * per_rank_batches  # 2 epochs, one step per batch on each rank
    assert last["scheduler"]["lr"] == pytest.approx(0.0001, rel=1e-3)  # the cosine ended exactly at min_lr
    assert "sync_bn=true has no effect on cpu" in (run_dir / "train.log").read_text()  # said, not a crash


@pytest.mark.slow
@needs_torchrun
def test_two_process_embeddings_cover_every_row_once(tmp_path, tiny_data):
    import numpy as np

    from pipeline.train.stage import fit
    from tests.test_train import tiny_train_config

    fit(tiny_train_config(tiny_data, tmp_path / "runs", epochs=1, limit_train_batches=1, experiment="smoke"),
        "simple_cnn", 0)  # fmt: skip
    cfg = write_config(tmp_path, {**TINY_PREP}, {"data_root": str(tiny_data["data_root"])})
    torchrun2(["-m", "pipeline", "embed", "--config", str(cfg), "batch_size=5"], tmp_path)
    run_dir = tmp_path / "runs" / "smoke" / "simple_cnn" / "fold0"
    for manifest in ("train", "test"):
        emb = np.load(run_dir / f"emb_{manifest}.npy").astype(np.float32)
        n = len(pd.read_csv(tiny_data["data_root"] / "tiny" / f"{manifest}.csv"))
        assert emb.shape[0] == n
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=2e-3)  # no row left empty
        assert len(np.unique(emb.round(3), axis=0)) == n  # and none written twice over another
