"""Old import path of the recipe's factories, now split by part (kept so callers need no change):
:mod:`pipeline.optim.optimizer`, :mod:`pipeline.optim.schedule` (with the best-epoch choice) and
:mod:`pipeline.optim.loss`. New code imports from those modules."""

from pipeline.optim.loss import LOSSES, build_loss
from pipeline.optim.optimizer import OPTIMIZERS, build_optimizer, create_optimizer, optimizer_kwargs
from pipeline.optim.schedule import (
    CHECKPOINT_METRICS,
    SCHEDULES,
    Cosine,
    HalveOnDrop,
    Plateau,
    Schedule,
    Step,
    build_schedule,
    is_better,
    next_lr,
)

__all__ = [
    "CHECKPOINT_METRICS", "LOSSES", "OPTIMIZERS", "SCHEDULES", "Cosine", "HalveOnDrop", "Plateau", "Schedule",
    "Step", "build_loss", "build_optimizer", "build_schedule", "create_optimizer", "is_better", "next_lr",
    "optimizer_kwargs",
]  # fmt: skip
