"""The transfer-learning recipe (issue 20): LR groups (head_lr_mult, layer_decay) through every
schedule, frozen BatchNorm, the frozen-backbone warm-up, class-balanced sampling, progressive
resizing as stages of one run (exact resume across the stage and freeze switches) and
configs/recipes/transfer.yaml. No weights are downloaded: a "pretrained" file is a saved model."""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from common import schema
from common.config import load_stage_config
from common.errors import ConfigError
from pipeline.config import TrainConfig
from pipeline.data.loaders import balanced_sampler, build_train_input
from pipeline.models.utils import head_modules
from pipeline.optim.freeze import BackboneFreeze, freeze_batchnorm
from pipeline.optim.optimizer import build_optimizer
from pipeline.optim.schedule import build_schedule
from pipeline.runs.model import build_model
from pipeline.train.build import stage_at
from pipeline.train.stage import fit
from tests.test_train import assert_same_runs, tiny_train_config

REPO = Path(__file__).resolve().parents[1]
NET = "timm:efficientnet_lite0"
HEAD = dict(pool="gem", neck="linear", embedding_size=16, head="subcenter_arcface", dynamic_margin=True)


def _net(cfg: TrainConfig, classes: int = 6) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(cfg, NET, classes, class_counts=list(range(10, 10 + classes)))


def _scales(opt: torch.optim.Optimizer, model: torch.nn.Module) -> tuple[set, set]:
    """The LRs of the head's tensors and of the backbone's, as sets."""
    head = {id(p) for m in head_modules(model) for p in m.parameters()}
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    return {v for k, v in lr_of.items() if k in head}, {v for k, v in lr_of.items() if k not in head}


@pytest.mark.parametrize(
    "schedule, optimizer",
    [("halve_on_drop", "adam"), ("plateau", "sgd"), ("cosine", "adamw"), ("step", "sgd"), ("none", "adamw")],
)
def test_head_and_backbone_groups_keep_their_rates_through_every_schedule(schedule, optimizer):
    cfg = TrainConfig(img_size=32, optimizer=optimizer, lr=1e-3, weight_decay=0.05, head_lr_mult=10,
                      schedule=schedule, warmup_epochs=1, warmup_lr=1e-5, epochs=4, step_epochs=1,
                      plateau_patience=0, **HEAD)  # fmt: skip
    model = _net(cfg)
    opt = build_optimizer(model, cfg, head=head_modules(model))
    head_lrs, backbone_lrs = _scales(opt, model)
    assert sorted(head_lrs) == pytest.approx([1e-2]) and sorted(backbone_lrs) == pytest.approx([1e-3])
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.parameters() if p.requires_grad)  # every tensor once
    for g in opt.param_groups:  # AdamW/SGD: no decay on biases and norms (Adam's L2: on all, as before)
        spared = optimizer != "adam" and all(p.ndim <= 1 for p in g["params"])
        assert g["weight_decay"] == (0.0 if spared else 0.05)
    sched = build_schedule(opt, cfg, steps_per_epoch=3)
    seen = []
    for epoch in range(4):
        for _ in range(3):
            sched.after_step()
            head_lrs, backbone_lrs = _scales(opt, model)
            assert len(head_lrs) == len(backbone_lrs) == 1
            assert head_lrs.pop() == pytest.approx(10 * backbone_lrs.pop())
            assert opt.param_groups[0]["lr"] == pytest.approx(sched.lr * opt.param_groups[0]["lr_scale"])
            seen.append(sched.lr)
        sched.after_epoch({"val_top1": 0.5 - 0.1 * epoch, "val_loss": 1.0 + epoch})
    assert len({round(v, 12) for v in seen}) > 2  # the schedule did move the LR
    other = build_optimizer(model, cfg, head=head_modules(model))
    resumed = build_schedule(other, cfg, steps_per_epoch=3)
    resumed.load_state_dict(sched.state_dict())  # a resume restores every group's rate
    assert [g["lr"] for g in other.param_groups] == pytest.approx([g["lr"] for g in opt.param_groups])


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_default_keys_build_todays_optimizer(optimizer):
    from timm.optim import create_optimizer_v2

    cfg = TrainConfig(img_size=32, optimizer=optimizer, weight_decay=0.01)
    model = _net(cfg)
    opt = build_optimizer(model, cfg, head=head_modules(model))
    if optimizer == "adam":
        expected = [[p for p in model.parameters() if p.requires_grad]]
    else:
        kw = {"betas": (0.9, 0.999)} if optimizer == "adamw" else {"momentum": 0.9}
        ref = create_optimizer_v2(model, opt="adamw" if optimizer == "adamw" else "nesterov", lr=cfg.lr,
                                  weight_decay=0.01, **kw)  # fmt: skip
        expected = [g["params"] for g in ref.param_groups]
    assert [[id(p) for p in g["params"]] for g in opt.param_groups] == [[id(p) for p in g] for g in expected]
    assert all("lr_scale" not in g and g["lr"] == cfg.lr for g in opt.param_groups)


def test_layer_decay_scales_each_backbone_layer_and_needs_a_timm_backbone():
    cfg = TrainConfig(img_size=32, optimizer="adamw", lr=1.0, layer_decay=0.5, head_lr_mult=2, **HEAD)
    model = _net(cfg)
    opt = build_optimizer(model, cfg, head=head_modules(model))
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    stem, last_block = named["backbone.conv_stem.weight"], named["backbone.blocks.6.0.conv_pw.weight"]
    assert lr_of[id(stem)] < lr_of[id(last_block)] <= 1.0  # the top layer at lr, lower ones slower
    assert all(lr_of[id(p)] == 2.0 for m in head_modules(model) for p in m.parameters())
    assert {round(np.log2(v), 6) % 1 for v in lr_of.values()} == {0.0}  # powers of the decay 0.5
    plain = build_model(TrainConfig(img_size=32), "simple_cnn", 6)
    with pytest.raises(ConfigError, match="layer_decay needs a timm backbone"):
        build_optimizer(plain, dataclasses.replace(cfg, **{k: TrainConfig().__dict__[k] for k in HEAD}),
                        head=head_modules(plain))  # fmt: skip


def test_frozen_batchnorm_keeps_backbone_statistics_and_affine_but_the_neck_trains():
    cfg = TrainConfig(img_size=32, optimizer="sgd", lr=0.5, bn_mode="frozen", **HEAD)
    model = _net(cfg)
    freeze_batchnorm(model, head_modules(model))
    bn = model.backbone.bn1
    neck_bn = next(m for m in model.neck.modules() if isinstance(m, torch.nn.BatchNorm1d))
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    neck_before = neck_bn.running_mean.clone()
    opt = build_optimizer(model, cfg, head=head_modules(model))
    model.train()
    x, y = torch.randn(8, 3, 32, 32) * 3 + 1, torch.arange(8) % 6
    torch.nn.functional.cross_entropy(model(x, y), y).backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in bn.state_dict().items())  # stats and affine as loaded
    assert not torch.equal(neck_before, neck_bn.running_mean)  # the head's BatchNorm is not the backbone's
    assert not any(p is bn.weight for g in opt.param_groups for p in g["params"])


def test_frozen_warmup_trains_only_the_head_then_everything():
    cfg = TrainConfig(img_size=32, optimizer="adamw", lr=1e-2, **HEAD)
    model = _net(cfg)
    head = head_modules(model)
    opt = build_optimizer(model, cfg, head=head)
    freeze = BackboneFreeze(model, head, epochs=1)
    stem, neck_w = model.backbone.conv_stem.weight, model.neck[0].weight
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    for epoch, backbone_moves in ((0, False), (1, True)):
        assert freeze.set_epoch(epoch) is not backbone_moves
        a, b = stem.detach().clone(), neck_w.detach().clone()
        torch.nn.functional.cross_entropy(model(x, y), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        assert not torch.equal(b, neck_w) and torch.equal(a, stem) is not backbone_moves
        assert (stem in opt.state) is backbone_moves  # no momentum or decay while frozen
    with pytest.raises(ConfigError, match="not both"):
        TrainConfig(freeze_backbone=True, freeze_epochs=2).validate()


def test_balanced_sampling_evens_out_the_classes_and_is_seeded():
    labels = np.repeat([0, 1, 2], [900, 90, 10])
    g = torch.Generator()
    assert balanced_sampler(labels, "none", g) is None

    def share(mode, seed=0):
        g.manual_seed(seed)
        drawn = labels[list(balanced_sampler(labels, mode, g))]
        return np.bincount(drawn, minlength=3) / len(drawn), drawn

    inverse, first = share("inverse")
    assert np.allclose(inverse, 1 / 3, atol=0.05)
    sqrt, _ = share("sqrt")  # 1/sqrt(n): shares proportional to sqrt(n) = 30 : 9.5 : 3.2
    assert np.allclose(sqrt, np.sqrt([900, 90, 10]) / np.sqrt([900, 90, 10]).sum(), atol=0.05)
    assert np.array_equal(share("inverse")[1], first) and not np.array_equal(share("inverse", 1)[1], first)


def test_balanced_training_input_draws_the_same_rows_per_epoch(tiny_data, tmp_path):
    cfg = tiny_train_config(tiny_data, tmp_path, balanced_sampling="inverse", ram_cache_mb=0)
    rows = pd.read_csv(tiny_data["data_root"] / "tiny" / "train.csv")
    ti = build_train_input(tiny_data["data_root"] / "tiny", rows, cfg)

    def ids(epoch):
        ti.set_epoch(epoch)
        return torch.cat([b["id"] for b in ti.loader]).tolist()

    assert ids(3) == ids(3) and ids(3) != ids(4)
    drawn = rows["label"].to_numpy()[sum((ids(e) for e in range(8)), [])]
    counts = np.bincount(rows["label"])
    assert counts.max() / counts.min() >= 3  # the tiny set is skewed ...
    share = np.bincount(drawn, minlength=len(counts)) / len(drawn)
    natural = counts / counts.sum()
    assert np.abs(share - 1 / len(counts)).max() < 0.05  # ... the balanced draw is not (320 draws)
    assert natural.max() - share[counts.argmax()] > 0.1 and share[counts.argmin()] > natural.min() + 0.03


def test_stages_map_epochs_to_sizes_and_are_checked():
    cfg = TrainConfig(img_size=128, epochs=10, stage_epochs=[4, 2], stage_img_sizes=[64, 96])
    assert [stage_at(cfg, e) for e in (0, 3, 4, 5, 6, 9, 12)] == [
        (0, 64), (0, 64), (1, 96), (1, 96), (2, 128), (2, 128), (2, 128)
    ]  # fmt: skip
    assert stage_at(TrainConfig(img_size=64), 5) == (0, 64)  # no stages: one stage at img_size
    with pytest.raises(ConfigError, match="one entry per stage"):
        TrainConfig(stage_epochs=[4, 2], stage_img_sizes=[64]).validate()
    with pytest.raises(ConfigError, match="stage_img_sizes must be >= 8"):
        TrainConfig(stage_epochs=[4], stage_img_sizes=[4]).validate()


def _transfer_cfg(tiny_data, root, **over) -> TrainConfig:
    """The recipe's keys on the tiny set (no pretrained file: the resume, not the start, is tested)."""
    recipe = load_stage_config(TrainConfig, "train", REPO / "configs" / "recipes" / "transfer.yaml").__dict__
    keys = ("optimizer", "lr", "weight_decay", "schedule", "warmup_epochs", "head_lr_mult", "bn_mode",
            "balanced_sampling", "label_smoothing", *HEAD)  # fmt: skip
    base = {k: recipe[k] for k in keys} | {"embedding_size": 16, "warmup_epochs": 1}
    stages = dict(stage_epochs=[1], stage_img_sizes=[32], img_size=36, freeze_epochs=1, limit_train_batches=3)
    return tiny_train_config(tiny_data, root, models=[NET], **{**base, **stages, **over})


def test_stages_and_frozen_warmup_resume_exactly_between_stages(tiny_data, tmp_path, one_thread):
    full = _transfer_cfg(tiny_data, tmp_path / "a", epochs=3)
    fit(full, NET, 0)
    part = dataclasses.replace(full, runs_root=str(tmp_path / "b"), epochs=1)  # stops after stage 1
    fit(part, NET, 0)
    out_b = schema.run_dir(tmp_path / "b", "t", NET, 0)
    (out_b / schema.RUN_DONE).unlink()  # as if killed between the stages
    fit(dataclasses.replace(part, epochs=3), NET, 0)
    hist = assert_same_runs(schema.run_dir(tmp_path / "a", "t", NET, 0), out_b)
    assert list(hist["stage"]) == [1, 2, 2] and list(hist["img_size"]) == [32, 36, 36]


def test_kill_9_between_stages_resumes_into_the_next_stage(tiny_data, tmp_path, one_thread):
    """A real ``kill -9`` of the training process as soon as stage 1's last.pt is on disk. One torch
    thread here as in the killed process (OMP_NUM_THREADS=1): bit-equal weights need equal
    reduction orders."""
    cfg = _transfer_cfg(tiny_data, tmp_path / "k", epochs=3, stage_epochs=[2], limit_train_batches=6)
    args = [f"{k}={v}" for k, v in {
        "dataset": "tiny", "data_root": cfg.data_root, "folds_dir": cfg.folds_dir, "runs_root": cfg.runs_root,
        "experiment": "t", "models": NET, "folds": 0, "k": 3, "batch_size": 16, "progress": "false",
    }.items()]  # fmt: skip
    recipe = {k: getattr(cfg, k) for k in TrainConfig.recipe_keys() if getattr(cfg, k) != getattr(TrainConfig(), k)}
    args += [f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in recipe.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train", *args, "epochs=3"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    out = schema.run_dir(tmp_path / "k", "t", NET, 0)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / schema.RUN_METRICS).is_file() and len(pd.read_csv(out / schema.RUN_METRICS)) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert proc.wait(60) == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (out / schema.RUN_DONE).exists()
    epoch_at_kill = torch.load(out / schema.RUN_LAST, weights_only=False)["epoch"]
    assert epoch_at_kill in (2, 3)  # killed after stage 1 (2 epochs), before the run finished
    fit(cfg, NET, 0)  # resume in-process
    fit(dataclasses.replace(cfg, runs_root=str(tmp_path / "u")), NET, 0)  # uninterrupted
    hist = assert_same_runs(schema.run_dir(tmp_path / "u", "t", NET, 0), out)
    assert list(hist["img_size"]) == [32, 32, 36]


def test_transfer_recipe_layers_on_a_data_set_and_trains_from_a_weights_file(tiny_data, tmp_path, one_thread):
    path = REPO / "configs" / "recipes" / "transfer.yaml"
    header = path.read_text().split("train:")[0]
    assert "pretrained=" in header and "efficientnet_lite0" in header  # the user's part is documented
    cfg = load_stage_config(TrainConfig, "train", [REPO / "configs" / "paris6k.yaml", path])
    assert cfg.models == [NET] and cfg.head == "subcenter_arcface" and cfg.dynamic_margin and cfg.pool == "gem"
    assert cfg.head_lr_mult > 1 and cfg.schedule == "cosine" and cfg.warmup_epochs > 0 and cfg.stage_epochs
    assert cfg.dataset == "paris6k"  # the data set's file decides the data
    torch.manual_seed(1)
    weights = tmp_path / "lite0.pth"  # stands in for the converted efficientnet-lite0 file
    torch.save(build_model(TrainConfig(img_size=32), NET, 1000).state_dict(), weights)
    run = _transfer_cfg(tiny_data, tmp_path, epochs=2, pretrained=str(weights), limit_train_batches=2)
    summary = fit(run, NET, 0)
    trained = torch.load(schema.run_dir(tmp_path, "t", NET, 0) / schema.RUN_LAST, weights_only=False)["model"]
    loaded = torch.load(weights, weights_only=True)
    bn = "backbone.bn1.running_mean"  # bn_mode=frozen: the file's statistics, untouched by training
    assert torch.equal(trained[bn], loaded["bn1.running_mean"])
    assert summary["epochs"] == 2 and np.isfinite(summary["val_top1"])


def test_a_run_ending_in_an_early_stage_still_predicts_at_img_size(tiny_data, tmp_path, one_thread):
    """Trained and validated at the stage's 32 px like a plain 32 px run, but its out-of-fold
    predictions are made at img_size (36), as predict makes the test ones."""
    staged = tiny_train_config(tiny_data, tmp_path / "s", epochs=1, img_size=36, stage_epochs=[3], stage_img_sizes=[32])
    plain = tiny_train_config(tiny_data, tmp_path / "p", epochs=1, img_size=32)
    for cfg in (staged, plain):
        fit(cfg, "simple_cnn", 0)
    s, p = (schema.run_dir(c.runs_root, "t", "simple_cnn", 0) for c in (staged, plain))
    hs = pd.read_csv(s / schema.RUN_METRICS)
    assert list(hs.pop("img_size")) == [32] and list(hs.pop("stage")) == [1]
    timing = ["seconds", "seconds_outside"]
    pd.testing.assert_frame_equal(hs.drop(columns=timing), pd.read_csv(p / schema.RUN_METRICS).drop(columns=timing))
    ws, wp = (torch.load(d / schema.RUN_LAST, weights_only=False)["model"] for d in (s, p))
    assert all(torch.equal(ws[k], wp[k]) for k in ws)
    assert not np.allclose(np.load(s / schema.RUN_OOF)["probs"], np.load(p / schema.RUN_OOF)["probs"])
