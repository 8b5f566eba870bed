"""A run that says DONE is right, or it does not say DONE: the training side of the hardening issue.

Each test reproduces a case that used to exit 0 with wrong output (or a traceback) on the tiny
default and checks the behaviour now: one clear line, nothing marked DONE, nothing mixed.
"""

import dataclasses
import errno
import json
import logging
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from common import schema
from common.errors import DataError, PipelineError
from pipeline.train.stage import fit
from tests.test_train import tiny_train_config

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "LOGLEVEL": "WARNING",
    "OMP_NUM_THREADS": "1",
}


@pytest.fixture()
def own_data(tiny_data, tmp_path):
    """A private copy of the tiny prepped data and its fold files (tests here modify them)."""
    shutil.copytree(tiny_data["data_root"], tmp_path / "data")
    shutil.copytree(tiny_data["folds_dir"], tmp_path / "folds")
    return {"data_root": tmp_path / "data", "folds_dir": tmp_path / "folds"}


def _cfg(data, tmp_path, **over):
    return tiny_train_config(data, tmp_path / "runs", **{"epochs": 1, "limit_train_batches": 2, **over})


def test_diverged_loss_stops_the_fold_without_done(own_data, tmp_path):
    cfg = _cfg(own_data, tmp_path, optimizer="sgd", lr=1e30)
    with pytest.raises(PipelineError, match=r"simple_cnn/fold0: training diverged in epoch 1 \(loss (nan|inf) at step"):
        fit(cfg, "simple_cnn", 0)
    out = schema.run_dir(tmp_path / "runs", "t", "simple_cnn", 0)
    assert not (out / schema.RUN_DONE).exists() and not (out / schema.RUN_OOF).exists()


def test_lr_inf_is_refused_up_front_on_the_command_line(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "pipeline", "train", "lr=inf"], cwd=tmp_path, env=ENV, capture_output=True, text=True
    )
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == ["error: train: lr must be a finite number > 0, got inf"]


def test_a_second_process_on_the_same_run_folder_is_refused_and_a_dead_one_is_not(own_data, tmp_path):
    cfg = _cfg(own_data, tmp_path)
    out = schema.run_dir(tmp_path / "runs", "t", "simple_cnn", 0)
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from common.lock import folder_lock\nimport time\nwith folder_lock({str(out)!r}):\n"
         "    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=ENV, cwd=os.getcwd(),
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PipelineError, match=rf"is in use by pid {holder.pid} on \S+ since \d{{4}}-"):
            fit(cfg, "simple_cnn", 0)
        assert not (out / schema.RUN_CONFIG).exists()  # nothing written by the refused process
    finally:
        holder.kill()  # as kill -9: the lock goes with the process
        holder.wait()
    fit(cfg, "simple_cnn", 0)
    assert (out / schema.RUN_DONE).is_file()


def test_runs_are_tied_to_the_prep_and_fold_file_they_were_trained_on(own_data, tmp_path):
    cfg = _cfg(own_data, tmp_path)
    fit(cfg, "simple_cnn", 0)
    data = own_data["data_root"] / "tiny"
    saved = yaml.safe_load((schema.run_dir(tmp_path / "runs", "t", "simple_cnn", 0) / schema.RUN_CONFIG).read_text())
    assert saved["prep"]["fingerprint"] == schema.prep_fingerprint(data) and saved["prep"]["folds_sha"]
    # a re-prep (another fingerprint): skipping the finished fold would mix data sets
    report = json.loads((data / schema.PREP_REPORT).read_text())
    (data / schema.PREP_REPORT).write_text(json.dumps({**report, "fingerprint": "0000"}))
    with pytest.raises(PipelineError, match=r"trained on other data \(the prep .*-> 0000\)"):
        fit(cfg, "simple_cnn", 0)
    (data / schema.PREP_REPORT).write_text(json.dumps(report))
    # another label map (two classes swapped): every landmark id would shift
    lm = pd.read_csv(data / schema.LABEL_MAP)
    swapped = lm.copy()
    swapped.loc[[0, 1], "landmark_id"] = lm.loc[[1, 0], "landmark_id"].to_numpy()
    swapped.to_csv(data / schema.LABEL_MAP, index=False)
    with pytest.raises(PipelineError, match="the label map"):
        fit(cfg, "simple_cnn", 0)
    lm.to_csv(data / schema.LABEL_MAP, index=False)
    # another fold file (a valid one, other assignment)
    path = schema.fold_file(own_data["folds_dir"], "tiny", 3, 42)
    folds = pd.read_csv(path, dtype={"id": str})
    folds["fold"] = (folds["fold"] + 1) % 3
    folds.to_csv(path, index=False)
    with pytest.raises(PipelineError, match="the fold file"):
        fit(cfg, "simple_cnn", 0)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda f: pd.concat([f, f.iloc[[0]]]), r"line \d+: id '.*' appears twice"),
        (lambda f: f.assign(fold=f["fold"].where(f.index != 3, 7)), r"line 5: fold 7 outside 0..2"),
        (
            lambda f: f.assign(fold=f["fold"].astype(str).where(f.index != 0, "x")),
            r"line 2: fold 'x' is not an integer",
        ),
        (lambda f: f.iloc[1:], r"1 train ids have no fold"),
        (lambda f: f.assign(fold=f["fold"].where(f["fold"] != 2, 0)), r"fold\(s\) \[2\] have no rows"),
    ],
)
def test_bad_fold_files_are_one_error_before_training(own_data, tmp_path, edit, match):
    path = schema.fold_file(own_data["folds_dir"], "tiny", 3, 42)
    edit(pd.read_csv(path, dtype={"id": str})).to_csv(path, index=False)
    with pytest.raises(DataError, match=match):
        fit(_cfg(own_data, tmp_path), "simple_cnn", 0)
    assert not (schema.run_dir(tmp_path / "runs", "t", "simple_cnn", 0) / schema.RUN_LAST).exists()


def test_a_missing_fold_file_is_made_like_make_folds(own_data, tmp_path):
    from data_prep.folds import make_folds

    path = schema.fold_file(own_data["folds_dir"], "tiny", 3, 42)
    path.unlink()
    fit(_cfg(own_data, tmp_path), "simple_cnn", 0)
    train = schema.read_manifest(own_data["data_root"] / "tiny", "train")
    made = pd.read_csv(path, dtype={"id": str})
    pd.testing.assert_frame_equal(made, make_folds(train, 3, 42))


def test_labels_outside_the_label_map_are_one_line_before_training(own_data, tmp_path):
    data = own_data["data_root"] / "tiny"
    for split in ("train", "test"):
        df = pd.read_csv(data / f"{split}.csv", dtype={"id": str})
        bad = df.copy()
        bad.loc[bad.index[2], "label"] = 99
        bad.to_csv(data / f"{split}.csv", index=False)
        with pytest.raises(DataError, match=rf"{split}.csv: id '{df['id'].iloc[2]}' has label 99, outside 0..5"):
            fit(_cfg(own_data, tmp_path), "simple_cnn", 0)
        df.to_csv(data / f"{split}.csv", index=False)
    assert not (schema.run_dir(tmp_path / "runs", "t", "simple_cnn", 0) / schema.RUN_LAST).exists()


def test_half_written_checkpoints_are_cleaned_and_a_corrupt_one_is_one_line(own_data, tmp_path):
    cfg = _cfg(own_data, tmp_path)
    out = schema.run_dir(tmp_path / "runs", "t", "simple_cnn", 0)
    out.mkdir(parents=True)
    (out / ".last.pt.x1y2.tmp").write_bytes(b"\0" * 1000)  # a killed atomic write
    fit(cfg, "simple_cnn", 0)
    assert not list(out.glob(".*.tmp"))
    (out / schema.RUN_DONE).unlink()
    (out / schema.RUN_LAST).write_bytes((out / schema.RUN_LAST).read_bytes()[:500])  # truncated
    with pytest.raises(PipelineError, match=r"last.pt: corrupt checkpoint .*delete it"):
        fit(dataclasses.replace(cfg, epochs=2), "simple_cnn", 0)


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(own_data, tmp_path, monkeypatch):
    cfg = _cfg(own_data, tmp_path)
    fit(cfg, "simple_cnn", 0)
    out = schema.run_dir(tmp_path / "runs", "t", "simple_cnn", 0)
    before = (out / schema.RUN_LAST).read_bytes()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(
        PipelineError, match=r"cannot write checkpoint .*: disk full \(the previous checkpoint is kept\)"
    ):
        fit(dataclasses.replace(cfg, epochs=2), "simple_cnn", 0)
    assert (out / schema.RUN_LAST).read_bytes() == before
    assert not (out / schema.RUN_DONE).exists()


def test_threads_and_workers_are_recorded_and_a_changed_resume_warns(own_data, tmp_path, caplog):
    cfg = _cfg(own_data, tmp_path)
    fit(cfg, "simple_cnn", 0)
    out = schema.run_dir(tmp_path / "runs", "t", "simple_cnn", 0)
    saved = yaml.safe_load((out / schema.RUN_CONFIG).read_text())
    assert saved["threads"] == torch.get_num_threads() and saved["num_workers"] == 0
    (out / schema.RUN_DONE).unlink()
    with caplog.at_level(logging.WARNING, logger="pipeline.train.stage"):
        fit(dataclasses.replace(cfg, num_workers=1, epochs=2), "simple_cnn", 0)
    assert "resumed with num_workers=1 (trained with 0)" in caplog.text


def test_train_log_holds_what_the_console_showed(own_data, tmp_path):
    fit(_cfg(own_data, tmp_path, epochs=2), "simple_cnn", 0)
    text = (schema.run_dir(tmp_path / "runs", "t", "simple_cnn", 0) / schema.RUN_LOG).read_text()
    (line,) = [ln for ln in text.splitlines() if "simple_cnn/fold0 epoch 2/2: train_loss" in ln]
    assert "; elapsed" in line and "ETA" in line  # one line per epoch: scores, then the run's ETA
    assert "epoch 2/2, elapsed" not in text  # no second line for the same epoch
    assert "\r" not in text and "it/s" not in text  # no progress-bar fragments


def test_a_damaged_cached_test_image_is_found_before_the_first_epoch(own_data, tmp_path):
    data = own_data["data_root"] / "tiny"
    test = schema.read_manifest(data, "test")
    (data / test["image"].iloc[0]).write_bytes(b"")  # a 0-byte test image: found after training, before
    with pytest.raises(DataError, match=r"1 cached image\(s\) damaged or missing \(first: test id .*make verify"):
        fit(_cfg(own_data, tmp_path), "simple_cnn", 0)
    assert not (schema.run_dir(tmp_path / "runs", "t", "simple_cnn", 0) / schema.RUN_LAST).exists()
