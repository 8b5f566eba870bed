"""Training recipes from factories: optimizer, LR schedule, loss, checkpoint choice, accumulation,
clipping, EMA, init_from: each option changes what it should; unknown names list the valid ones."""

import dataclasses
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch
from accelerate import Accelerator

from common import schema
from common.config import choices_of
from common.errors import ConfigError, PipelineError
from pipeline.config import TrainConfig
from pipeline.optim.loss import LOSSES, build_loss
from pipeline.optim.optimizer import OPTIMIZERS, build_optimizer
from pipeline.optim.schedule import CHECKPOINT_METRICS, SCHEDULES, build_schedule, is_better
from pipeline.runs.model import build_model, init_weights_from
from pipeline.runtime import new_accelerator
from pipeline.train.engine import StepParts, train_one_epoch
from pipeline.train.stage import fit
from tests.test_train import tiny_train_config


def _acc(**kw) -> Accelerator:
    return new_accelerator("auto", cpu=True, **kw)


def _opt(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def _lrs(sched, steps):
    out = []
    for _ in range(steps):
        sched.after_step()
        out.append(sched.lr)
    return out


@pytest.mark.parametrize(
    "key, bad, valid",
    [
        ("optimizer", "adamm", "adamw"),
        ("schedule", "cosin", "cosine"),
        ("checkpoint_metric", "accuracy", "top1"),
        ("augment", "heavy", "strong"),
        ("pool", "max", "gem"),
        ("head", "cosface", "arcface"),
        ("plateau_metric", "acc", "gap"),
    ],
)
def test_unknown_names_are_one_error_listing_the_valid_ones(key, bad, valid):
    with pytest.raises(ConfigError, match=rf"unknown {key} '{bad}' \(.*{valid}"):
        TrainConfig(**{key: bad}).validate()


@pytest.mark.parametrize(
    "values, match",
    [
        ({"lr": float("inf")}, "lr must be a finite number > 0"),
        ({"lr": -1e-3}, "lr must be a finite number > 0"),
        ({"lr": float("nan")}, "lr must be a finite number > 0"),
        ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0"),
        ({"label_smoothing": 1.5}, r"label_smoothing must be in \[0, 1\]"),
        ({"accumulate": 0}, "accumulate must be >= 1"),
        ({"clip_grad": 0.0}, "clip_grad must be a finite number > 0"),
        ({"rrc_scale": [0.9, 0.5]}, "rrc_scale"),
    ],
)
def test_numeric_values_are_checked_up_front(values, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**values).validate()


@pytest.mark.parametrize(
    "key, table",
    [("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("loss", LOSSES), ("checkpoint_metric", CHECKPOINT_METRICS)],
)
def test_each_factory_table_builds_exactly_the_declared_names(key, table):
    assert set(table) == set(choices_of(TrainConfig, key))


def test_keyword_optimizer_factory_and_its_config_adapter():
    from pipeline.optim.optimizer import create_optimizer, optimizer_kwargs

    model = torch.nn.Linear(4, 2)
    cfg = TrainConfig(optimizer="sgd", lr=0.3, momentum=0.7, nesterov=False)
    opt = create_optimizer(model, **optimizer_kwargs(cfg))
    assert type(opt) is torch.optim.SGD and opt.defaults["lr"] == 0.3 and opt.defaults["momentum"] == 0.7
    with pytest.raises(ConfigError, match=r"unknown optimizer 'adamm' \(.*adamw"):
        create_optimizer(model, opt="adamm")
    with pytest.raises(ConfigError, match="head_lr_mult needs the model's head modules"):
        create_optimizer(model, head_lr_mult=10)


def test_optimizers_from_the_factory():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    adam = build_optimizer(model, TrainConfig())
    assert type(adam) is torch.optim.Adam and adam.defaults["betas"] == (0.9, 0.999) and adam.defaults["lr"] == 5e-4
    adamw = build_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05, beta2=0.99))
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["betas"] == (0.9, 0.99)
    decay = {g["weight_decay"]: sum(p.numel() for p in g["params"]) for g in adamw.param_groups}
    assert decay == {0.0: 4 + 8 + 2, 0.05: 16 + 8}  # biases and BN: no decay; weight matrices: decay
    sgd = build_optimizer(model, TrainConfig(optimizer="sgd", lr=0.1, momentum=0.8))
    assert type(sgd) is torch.optim.SGD and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.8
    plain = build_optimizer(model, TrainConfig(optimizer="sgd", nesterov=False))
    assert plain.defaults["nesterov"] is False
    frozen = torch.nn.Linear(3, 3)
    frozen.weight.requires_grad_(False)
    assert sum(p.numel() for g in build_optimizer(frozen, TrainConfig()).param_groups for p in g["params"]) == 3


def test_cosine_with_warmup_is_stepped_per_optimizer_step():
    cfg = TrainConfig(schedule="cosine", lr=1.0, min_lr=0.01, warmup_epochs=1, warmup_lr=0.0, epochs=3)
    opt = _opt()
    sched = build_schedule(opt, cfg, steps_per_epoch=10)
    assert sched.lr == pytest.approx(0.0)
    lrs = _lrs(sched, 30)
    assert lrs[4] == pytest.approx(0.5)  # step 5 of a 10-step linear warm-up
    assert lrs[9] == pytest.approx(1.0)
    # after the warm-up: cosine over the remaining 20 steps, min_lr at the end
    assert lrs[19] == pytest.approx(0.01 + 0.5 * 0.99 * (1 + math.cos(math.pi * 10 / 20)))
    assert lrs[-1] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    # resume mid-way: a rebuilt schedule with the saved state continues identically
    other = build_schedule(_opt(), cfg, steps_per_epoch=10)
    fresh = build_schedule(opt, cfg, steps_per_epoch=10)
    _lrs(fresh, 12)
    other.load_state_dict(fresh.state_dict())
    assert _lrs(other, 5) == pytest.approx(lrs[12:17])


def test_step_plateau_none_and_halve_schedules():
    step = build_schedule(_opt(), TrainConfig(schedule="step", lr=1.0, step_epochs=2, lr_factor=0.1), 5)
    lrs = _lrs(step, 25)
    assert lrs[8] == pytest.approx(1.0) and lrs[9] == pytest.approx(0.1) and lrs[19] == pytest.approx(0.01)

    cfg = TrainConfig(schedule="plateau", lr=1.0, plateau_patience=1, lr_factor=0.5, plateau_metric="gap")
    plateau = build_schedule(_opt(), cfg, 5)
    seen = []
    for gap in [0.5, 0.6, 0.55, 0.58, 0.59, 0.7, 0.6]:
        plateau.after_epoch({"val_gap": gap, "val_top1": 0.0})
        seen.append(plateau.lr)
    assert seen == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]  # two epochs without beating 0.6 -> halve
    loss = build_schedule(_opt(), dataclasses.replace(cfg, plateau_metric="loss", plateau_patience=0), 5)
    for v in [1.0, 0.9, 0.95]:
        loss.after_epoch({"val_loss": v})
    assert loss.lr == 0.5  # loss went up: lower is better for it

    none = build_schedule(_opt(), TrainConfig(schedule="none", lr=0.3, warmup_epochs=0.5, warmup_lr=0.1), 4)
    assert _lrs(none, 6) == pytest.approx([0.2, 0.3, 0.3, 0.3, 0.3, 0.3])
    halve = build_schedule(_opt(), TrainConfig(lr=1.0, warmup_epochs=1, warmup_lr=0.0), 2)
    halve.after_epoch({"val_top1": 0.5})
    halve.after_epoch({"val_top1": 0.4})  # a drop during the warm-up does not halve
    assert _lrs(halve, 2)[-1] == 1.0
    halve.after_epoch({"val_top1": 0.3})
    assert halve.lr == 0.5


def test_label_smoothing_and_soft_targets():
    logits = torch.tensor([[8.0, 0.0, 0.0], [0.0, 6.0, 0.0]])
    target = torch.tensor([0, 1])
    plain = build_loss(TrainConfig())(logits, target)
    smooth = build_loss(TrainConfig(label_smoothing=0.2))(logits, target)
    assert smooth > plain  # confident correct answers cost more with smoothing
    assert torch.allclose(plain, torch.nn.functional.cross_entropy(logits, target))
    one_hot = torch.nn.functional.one_hot(target, 3).float()
    assert torch.allclose(build_loss(TrainConfig())(logits, one_hot), plain)  # soft-target path


def test_checkpoint_metric_directions():
    assert is_better("top1", 0.5, 0.4) and not is_better("top1", 0.4, 0.5)
    assert is_better("loss", 0.4, 0.5) and not is_better("loss", 0.5, 0.4)
    assert is_better("gap", 0.1, None) and not is_better("gap", float("nan"), 0.0)


def _batches(n=4, bs=4):
    g = torch.Generator().manual_seed(0)
    return [
        {"image": torch.randint(0, 255, (bs, 3, 8, 8), generator=g, dtype=torch.uint8),
         "target": torch.randint(0, 3, (bs,), generator=g), "id": torch.arange(bs)}
        for _ in range(n)
    ]  # fmt: skip


def _tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))


def test_gradient_clipping_bounds_the_update():
    acc = _acc()
    for clip, bound in ((None, None), (1e-3, 1e-3)):
        model = _tiny_net()
        before = torch.cat([p.detach().clone().flatten() for p in model.parameters()])
        opt = torch.optim.SGD(model.parameters(), lr=10.0)
        parts = StepParts(opt, build_loss(TrainConfig()), build_schedule(opt, TrainConfig(schedule="none"), 1),
                          clip_grad=clip)  # fmt: skip
        train_one_epoch(model, _batches(1), parts, acc)
        step = (torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm().item()
        if bound is None:
            assert step > 1.0  # lr 10 on a raw gradient moves far
        else:
            assert step <= 10.0 * bound * 1.0001  # SGD: update = lr * clipped gradient


def test_accumulation_steps_the_optimizer_every_n_batches():
    acc = _acc(gradient_accumulation_steps=2)
    model = _tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    sched = build_schedule(opt, TrainConfig(schedule="none"), 2)
    train_one_epoch(model, _batches(4), StepParts(opt, build_loss(TrainConfig()), sched), acc)
    assert sched.steps == 2


def test_nan_loss_stops_the_epoch_with_the_step():
    acc = _acc()
    model = _tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=1e38)
    parts = StepParts(opt, build_loss(TrainConfig()), build_schedule(opt, TrainConfig(schedule="none"), 1))
    with pytest.raises(PipelineError, match=r"loss (nan|inf) at step 2"):
        train_one_epoch(model, _batches(4), parts, acc)


def test_fit_options_change_what_they_should(tiny_data, tmp_path, one_thread):
    base = tiny_train_config(tiny_data, tmp_path, epochs=2, limit_train_batches=4)
    # best epoch by loss = the epoch of the lowest val_loss
    s = fit(dataclasses.replace(base, checkpoint_metric="loss", experiment="loss"), "simple_cnn", 0)
    hist = pd.read_csv(schema.run_dir(tmp_path, "loss", "simple_cnn", 0) / schema.RUN_METRICS)
    assert s["best_epoch"] == int(hist["val_loss"].idxmin()) + 1
    # accumulation: half the optimizer steps (the schedule counts them)
    for accumulate, exp in ((1, "acc1"), (2, "acc2")):
        fit(dataclasses.replace(base, accumulate=accumulate, epochs=1, experiment=exp), "simple_cnn", 0)
    steps = {
        a: torch.load(schema.run_dir(tmp_path, e, "simple_cnn", 0) / schema.RUN_LAST, weights_only=False)["scheduler"][
            "steps"
        ]
        for a, e in ((1, "acc1"), (2, "acc2"))
    }
    assert steps[1] >= 3 and steps[2] == math.ceil(steps[1] / 2)  # the last partial window steps too
    # EMA: best.pt (what predicts) holds the EMA weights, not the raw ones
    fit(dataclasses.replace(base, ema=True, ema_decay=0.5, epochs=1, experiment="ema"), "simple_cnn", 0)
    out = schema.run_dir(tmp_path, "ema", "simple_cnn", 0)
    last = torch.load(out / schema.RUN_LAST, weights_only=False)
    best = torch.load(out / schema.RUN_BEST, weights_only=False)["model"]
    assert all(torch.equal(best[k], last["ema"][k]) for k in best)
    assert any(not torch.equal(best[k], last["model"][k]) for k in best if best[k].is_floating_point())
    # cosine with warm-up: the LR column follows the schedule
    fit(dataclasses.replace(base, schedule="cosine", warmup_epochs=1, epochs=3, experiment="cos"), "simple_cnn", 0)
    lrs = pd.read_csv(schema.run_dir(tmp_path, "cos", "simple_cnn", 0) / schema.RUN_METRICS)["lr"].tolist()
    assert lrs[0] == pytest.approx(base.warmup_lr) and lrs[1] == pytest.approx(base.lr) and lrs[2] < lrs[1]


def test_init_from_keeps_the_backbone_and_reinitialises_another_head(tmp_path, caplog):
    cfg = TrainConfig(img_size=32)
    torch.manual_seed(1)
    src = build_model(cfg, "simple_cnn", 4)
    torch.save({"model": src.state_dict()}, tmp_path / "w.pt")
    torch.manual_seed(2)
    dst = build_model(cfg, "simple_cnn", 6)
    fresh_head = {k: v.clone() for k, v in dst.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="pipeline.runs.model"):
        skipped = init_weights_from(dst, str(tmp_path / "w.pt"), str(tmp_path))
    assert skipped and "re-initialised" in caplog.text
    for k, v in dst.state_dict().items():
        expected = fresh_head[k] if k in skipped else src.state_dict()[k]
        assert torch.equal(v, expected), k
    with pytest.raises(PipelineError, match="another network"):
        init_weights_from(build_model(cfg, "resnet18", 6), str(tmp_path / "w.pt"), str(tmp_path))
    with pytest.raises(PipelineError, match="checkpoint not found"):
        init_weights_from(dst, str(tmp_path / "nope.pt"), str(tmp_path))


def test_init_from_a_run_folder_trains_on(tiny_data, tmp_path, one_thread):
    base = tiny_train_config(tiny_data, tmp_path, epochs=1, limit_train_batches=2)
    fit(base, "simple_cnn", 0)
    src = schema.run_dir(tmp_path, "t", "simple_cnn", 0)
    fine = dataclasses.replace(base, init_from=str(src), experiment="ft", img_size=36, lr=1e-9)
    fit(fine, "simple_cnn", 0)
    a = torch.load(src / schema.RUN_BEST, weights_only=False)["model"]
    b = torch.load(schema.run_dir(tmp_path, "ft", "simple_cnn", 0) / schema.RUN_LAST, weights_only=False)["model"]
    # lr 1e-9: the fine-tuned weights are still the source's (progressive resizing 32 -> 36 px)
    assert all(np.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_log_with_tensorboard_writes_events_offline(tiny_data, tmp_path, one_thread):
    from pipeline.train.stage import run_train

    cfg = tiny_train_config(tiny_data, tmp_path, epochs=1, limit_train_batches=2, log_with="tensorboard")
    run_train(cfg)
    events = list((tmp_path / "t").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert "simple_cnn/fold0/val_top1" in acc.Tags()["scalars"]
