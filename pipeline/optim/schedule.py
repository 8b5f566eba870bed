"""LR schedules, stepped on two clocks, and the choice of the best epoch.

``after_step()`` runs once per optimizer step (warm-up, cosine, step) and ``after_epoch(metrics)``
once per epoch with the gathered validation metrics (halve on drop, plateau). Every process runs
the same loop and steps its own schedule once; it is deliberately not given to
``accelerator.prepare``, whose wrapper would step it once per process per call.

A schedule sets one LR for the whole optimizer: a parameter group with an ``lr_scale`` (the
head's ``head_lr_mult``, a backbone layer's ``layer_decay`` factor) trains at ``lr x lr_scale``,
so every ratio between groups holds through warm-up, cosine and every drop. Seed 001's
``halve_on_drop`` is the default.
"""

from __future__ import annotations

import math

import torch

from common.config import check_choice, choices_of
from pipeline.config import TrainConfig


def next_lr(lr: float, prev_acc: float | None, acc: float, factor: float = 0.5) -> float:
    """Seed 001's rule: multiply the LR by ``factor`` when accuracy drops below the previous epoch's."""
    if prev_acc is not None and acc < prev_acc:
        return lr * factor
    return lr


def _metric_value(metrics: dict, name: str) -> float:
    return metrics.get(f"val_{name}", float("nan"))


class Schedule:
    """Base: a constant LR after an optional linear warm-up (``schedule: none``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.steps = 0
        self.base_lr = cfg.lr  # what the per-epoch rules change
        if self.warmup_steps:
            self._set(cfg.warmup_lr)

    @property
    def lr(self) -> float:
        """The schedule's LR (a group with an ``lr_scale`` trains at ``lr x lr_scale``)."""
        g = self.optimizer.param_groups[0]
        return g["lr"] / g["lr_scale"] if "lr_scale" in g else g["lr"]

    def _set(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"] if "lr_scale" in g else lr

    @property
    def warming_up(self) -> bool:
        return self.steps < self.warmup_steps

    def after_step(self) -> None:
        self.steps += 1
        if self.warmup_steps and self.steps <= self.warmup_steps:
            w = self.cfg.warmup_lr
            self._set(w + (self.base_lr - w) * self.steps / self.warmup_steps)

    def after_epoch(self, metrics: dict) -> None:
        """Called once per epoch with the gathered validation metrics."""

    def state_dict(self) -> dict:
        return {"steps": self.steps, "base_lr": self.base_lr, "lr": self.lr}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.base_lr = state["steps"], state["base_lr"]
        self._set(state["lr"])


class HalveOnDrop(Schedule):
    """Seed 001: halve the LR when validation top-1 drops below the *previous* epoch's.

    ``ReduceLROnPlateau(mode="max", factor=0.5, patience=0, threshold=0)`` is close but compares
    with the *best* epoch so far (and halves on a tie), so after a dip it keeps halving until the
    old best is beaten; the seed compares with the previous epoch and halves only on a strict drop.
    """

    def __init__(self, optimizer, cfg: TrainConfig, steps_per_epoch: int) -> None:
        super().__init__(optimizer, cfg, steps_per_epoch)
        self.prev: float | None = None

    def after_epoch(self, metrics: dict) -> None:
        acc = _metric_value(metrics, "top1")
        new = next_lr(self.base_lr, self.prev, acc, self.cfg.lr_factor)
        self.prev = acc
        if new != self.base_lr and not self.warming_up:
            self.base_lr = new
            self._set(new)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "prev": self.prev}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.prev = state["prev"]


class Plateau(Schedule):
    """torch's ``ReduceLROnPlateau`` on ``plateau_metric`` (patience, factor, min_lr), after warm-up."""

    def __init__(self, optimizer, cfg: TrainConfig, steps_per_epoch: int) -> None:
        super().__init__(optimizer, cfg, steps_per_epoch)
        self.mode = "min" if cfg.plateau_metric == "loss" else "max"
        self.best: float | None = None
        self.bad_epochs = 0

    def after_epoch(self, metrics: dict) -> None:
        # ReduceLROnPlateau's rule, kept here so it acts on base_lr and respects the warm-up
        value = _metric_value(metrics, self.cfg.plateau_metric)
        better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        if better:
            self.best, self.bad_epochs = value, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.cfg.plateau_patience and not self.warming_up:
            self.base_lr = max(self.cfg.min_lr, self.base_lr * self.cfg.lr_factor)
            self._set(self.base_lr)
            self.bad_epochs = 0

    def state_dict(self) -> dict:
        return {**super().state_dict(), "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]


class _TimmStepped(Schedule):
    """timm's schedulers stepped per optimizer step (``t_in_epochs=False``); they do their own warm-up."""

    def __init__(self, optimizer, cfg: TrainConfig, steps_per_epoch: int) -> None:
        super().__init__(optimizer, cfg, steps_per_epoch)
        self._set(cfg.lr)
        for g in optimizer.param_groups:  # timm's peak of every group; it applies each lr_scale itself
            g["initial_lr"] = cfg.lr
        self.timm = self._build(optimizer, cfg)
        self.timm.step_update(0)

    def _build(self, optimizer, cfg):  # pragma: no cover - abstract
        raise NotImplementedError

    def after_step(self) -> None:
        self.steps += 1
        self.timm.step_update(self.steps)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.timm.step_update(self.steps)


class Cosine(_TimmStepped):
    """Linear warm-up to ``lr``, then cosine down to ``min_lr`` at the last step (stepped per optimizer step)."""

    def _build(self, optimizer, cfg):
        from timm.scheduler import CosineLRScheduler

        return CosineLRScheduler(
            optimizer,
            t_initial=max(1, cfg.epochs * self.steps_per_epoch - self.warmup_steps),
            lr_min=cfg.min_lr,
            warmup_t=self.warmup_steps,
            warmup_lr_init=cfg.warmup_lr,
            warmup_prefix=True,  # the cosine starts at the peak after the warm-up and ends at min_lr
            t_in_epochs=False,
        )


class Step(_TimmStepped):
    """Multiply the LR by ``lr_factor`` every ``step_epochs`` epochs (seed 000: x0.1 every 30)."""

    def _build(self, optimizer, cfg):
        from timm.scheduler import StepLRScheduler

        return StepLRScheduler(
            optimizer,
            decay_t=cfg.step_epochs * self.steps_per_epoch,
            decay_rate=cfg.lr_factor,
            warmup_t=self.warmup_steps,
            warmup_lr_init=cfg.warmup_lr,
            t_in_epochs=False,
        )


# valid names: TrainConfig.schedule's declared choices (tests/test_recipes.py checks they match)
SCHEDULES: dict[str, type[Schedule]] = {
    "halve_on_drop": HalveOnDrop,
    "plateau": Plateau,
    "cosine": Cosine,
    "step": Step,
    "none": Schedule,
}


def build_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> Schedule:
    """The LR schedule ``cfg.schedule`` over every parameter group of ``optimizer``."""
    check_choice("train", "schedule", cfg.schedule, choices_of(TrainConfig, "schedule"))
    return SCHEDULES[cfg.schedule](optimizer, cfg, steps_per_epoch)


# ---------------------------------------------------------------------------- the best epoch

# metric -> (key in the epoch row, True when larger is better)
CHECKPOINT_METRICS = {"top1": ("val_top1", True), "gap": ("val_gap", True), "loss": ("val_loss", False)}


def is_better(metric: str, value: float, best: float | None) -> bool:
    """Whether an epoch with ``value`` beats the best so far (NaN never does)."""
    check_choice("train", "checkpoint_metric", metric, choices_of(TrainConfig, "checkpoint_metric"))
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if CHECKPOINT_METRICS[metric][1] else value < best
