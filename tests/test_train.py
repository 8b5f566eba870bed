"""Training engine: the LR rule, loss goes down, run-folder contents, exact resume, bad input."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from common import schema
from common.errors import DataError, PipelineError
from pipeline.config import TrainConfig
from pipeline.optim.factories import HalveOnDrop, next_lr
from pipeline.runtime import resolve_mixed_precision
from pipeline.train.stage import fit, run_train


def assert_same_runs(a, b) -> pd.DataFrame:
    """Two run folders trained alike: equal metrics (timings aside) and bit-equal last weights;
    returns the metrics."""
    timing = ["seconds", "seconds_outside"]
    ha = pd.read_csv(a / schema.RUN_METRICS).drop(columns=timing)
    hb = pd.read_csv(b / schema.RUN_METRICS).drop(columns=timing)
    pd.testing.assert_frame_equal(ha, hb)
    wa = torch.load(a / schema.RUN_LAST, weights_only=False)["model"]
    wb = torch.load(b / schema.RUN_LAST, weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    return ha


def tiny_train_config(tiny_data, runs_root, **over) -> TrainConfig:
    base = dict(
        dataset="tiny",
        data_root=str(tiny_data["data_root"]),
        folds_dir=str(tiny_data["folds_dir"]),
        runs_root=str(runs_root),
        experiment="t",
        models=["simple_cnn"],
        folds=[0],
        k=3,
        epochs=2,
        batch_size=16,
        img_size=32,
        progress=False,
        lr=2e-3,
    )
    return TrainConfig(**{**base, **over})


def test_next_lr_is_seed_001_rule():
    assert next_lr(1.0, None, 0.5) == 1.0  # first epoch: nothing to compare
    assert next_lr(1.0, 0.5, 0.6) == 1.0  # better
    assert next_lr(1.0, 0.5, 0.5) == 1.0  # equal is not a drop
    assert next_lr(1.0, 0.6, 0.5) == 0.5  # drop -> halve


def test_halve_on_drop_compares_with_previous_epoch_not_best():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = TrainConfig(lr=1.0)
    sched = HalveOnDrop(opt, cfg, steps_per_epoch=10)
    lrs = []
    for acc in [0.5, 0.6, 0.55, 0.58, 0.57, 0.59]:
        sched.after_epoch({"val_top1": acc})
        lrs.append(opt.param_groups[0]["lr"])
    # 0.58 < best 0.6 but > previous 0.55: no halving (ReduceLROnPlateau would halve here)
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    state = sched.state_dict()
    other = HalveOnDrop(opt, cfg, steps_per_epoch=10)
    other.load_state_dict(state)
    assert other.prev == 0.59 and other.base_lr == 0.25


def test_mixed_precision_resolution():
    assert resolve_mixed_precision("no") == "no"
    assert resolve_mixed_precision("bf16") == "bf16"
    assert resolve_mixed_precision("auto", cpu=True) in ("no", "bf16")


def test_two_epochs_reduce_the_loss_and_write_the_run_folder(tiny_data, tmp_path):
    cfg = tiny_train_config(tiny_data, tmp_path, epochs=3)
    summary = fit(cfg, "simple_cnn", 0)
    out = schema.run_dir(tmp_path, "t", "simple_cnn", 0)
    hist = pd.read_csv(out / schema.RUN_METRICS)
    assert list(hist.columns[:6]) == ["epoch", "lr", "train_loss", "val_loss", "val_top1", "val_top5"]
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]
    assert hist["train_loss"].iloc[-1] < np.log(6)  # below the loss of a uniform guess over 6 classes
    for name in (
        schema.RUN_CONFIG,
        schema.RUN_CURVES,
        schema.RUN_LAST,
        schema.RUN_BEST,
        schema.RUN_SUMMARY,
        schema.RUN_DONE,
    ):
        assert (out / name).is_file(), name
    folds = schema.read_folds(tiny_data["folds_file"])
    oof = np.load(out / schema.RUN_OOF)
    assert sorted(oof["ids"]) == sorted(folds.loc[folds["fold"] == 0, "id"])
    assert oof["probs"].shape == (len(oof["ids"]), 6)
    np.testing.assert_allclose(oof["probs"].sum(1), 1.0, atol=1e-4)
    test = np.load(out / schema.RUN_TEST)
    assert list(test["ids"]) == list(schema.read_manifest(tiny_data["data_root"] / "tiny", "test")["id"])
    assert summary["best_epoch"] == int(hist["val_top1"].idxmax()) + 1
    best = torch.load(out / schema.RUN_BEST, weights_only=False)
    assert "optimizer" not in best and best["epoch"] == summary["best_epoch"]  # weights only
    assert "optimizer" in torch.load(out / schema.RUN_LAST, weights_only=False)  # resume needs it
    # rerun: finished folds are skipped, nothing rewritten
    mtime = (out / schema.RUN_BEST).stat().st_mtime_ns
    fit(cfg, "simple_cnn", 0)
    assert (out / schema.RUN_BEST).stat().st_mtime_ns == mtime


def test_resume_equals_uninterrupted(tiny_data, tmp_path):
    """Also with the prefetch thread on and the RAM cache off in the interrupted run only: neither
    changes anything."""
    full = tiny_train_config(tiny_data, tmp_path / "a", epochs=2)  # prefetch auto: off on a CPU
    fit(full, "simple_cnn", 1)
    part = tiny_train_config(tiny_data, tmp_path / "b", epochs=1, prefetch="true", ram_cache_mb=0)
    fit(part, "simple_cnn", 1)
    out_b = schema.run_dir(tmp_path / "b", "t", "simple_cnn", 1)
    (out_b / schema.RUN_DONE).unlink()  # as if killed after epoch 1
    fit(dataclasses.replace(part, epochs=2), "simple_cnn", 1)
    assert_same_runs(schema.run_dir(tmp_path / "a", "t", "simple_cnn", 1), out_b)


def test_changed_recipe_is_refused_and_more_epochs_continue(tiny_data, tmp_path):
    cfg = tiny_train_config(tiny_data, tmp_path, epochs=1)
    fit(cfg, "simple_cnn", 2)
    with pytest.raises(PipelineError, match=r"another recipe \(lr: 0.002 -> 0.001\).*experiment="):
        fit(dataclasses.replace(cfg, lr=1e-3), "simple_cnn", 2)
    s = fit(dataclasses.replace(cfg, epochs=2, progress=True), "simple_cnn", 2)  # not a recipe key: continues
    hist = pd.read_csv(schema.run_dir(tmp_path, "t", "simple_cnn", 2) / schema.RUN_METRICS)
    assert list(hist["epoch"]) == [1, 2] and s["epochs"] == 2


def test_holdout_fold_uses_val_manifest(tiny_data, tmp_path):
    cfg = tiny_train_config(tiny_data, tmp_path, epochs=1, folds=[-1])
    s = fit(cfg, "simple_cnn", -1)
    assert s["val_images"] == len(schema.read_manifest(tiny_data["data_root"] / "tiny", "val"))
    assert (tmp_path / "t" / "simple_cnn" / "holdout" / schema.RUN_DONE).is_file()


def test_bad_inputs_fail_before_training(tiny_data, tmp_path):
    with pytest.raises(PipelineError, match="unknown model 'resnt18'.*resnet18"):
        run_train(tiny_train_config(tiny_data, tmp_path, models=["resnt18"]))
    with pytest.raises(PipelineError, match="needs inputs of at least"):
        run_train(tiny_train_config(tiny_data, tmp_path, models=["inception_v3"], img_size=32))
    with pytest.raises(DataError, match="label map not found"):
        fit(tiny_train_config(tiny_data, tmp_path, dataset="absent"), "simple_cnn", 0)
    assert not (tmp_path / "t" / "simple_cnn" / "fold0").exists()


def test_crop_padding_shifts_small_images():
    from pipeline.data.datasets import build_train_transform

    img = torch.full((3, 8, 8), 200, dtype=torch.uint8)
    torch.manual_seed(0)
    outs = [build_train_transform(8, hflip=0.0, padding=2)(img) for _ in range(20)]
    assert all(o.shape == (3, 8, 8) for o in outs)
    assert any((o == 0).any() for o in outs)  # the zero border shows up in some crops
    assert all(torch.equal(build_train_transform(8, hflip=0.0)(img), img) for _ in range(3))  # no padding: identity


def test_eta_prices_each_model_at_its_own_rate(monkeypatch):
    from pipeline.train.progress import Progress

    clock = iter([0.0, 1.0, 2.0, 12.0])  # start; then epochs of a fast (1 s) and a slow (10 s) model
    monkeypatch.setattr("pipeline.train.progress.time.time", lambda: next(clock))
    p = Progress({"fast": 2, "slow": 2})

    class R:
        fold = 0

        def __init__(self, name):
            self.model_name, self.cfg = name, TrainConfig(epochs=2)

    p.line(R("fast"), 1)
    line = p.line(R("fast"), 2)
    # the slow model's speed is not known yet: no price from the fast one's (it would say 2 s for 20 s)
    assert "ETA unknown: 0:00:00 for what is timed, then slow (not timed yet) (2/4 epochs)" in line
    line = p.line(R("slow"), 1)
    assert "ETA 0:00:10 " in line and line.endswith("(3/4 epochs)")  # its own rate: one epoch of 10 s left
