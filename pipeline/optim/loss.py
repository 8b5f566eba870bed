"""The training loss, built by name (``loss``); margin heads put their margin into the logits."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from common.config import check_choice, choices_of
from pipeline.config import TrainConfig


def _cross_entropy(cfg: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    smoothing = cfg.label_smoothing

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if target.dtype.is_floating_point:  # soft targets (mixup/cutmix already smoothed them)
            return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return F.cross_entropy(logits, target, label_smoothing=smoothing)

    return loss


# valid names: TrainConfig.loss's declared choices (tests/test_recipes.py checks they match)
LOSSES: dict[str, Callable[[TrainConfig], Callable]] = {"ce": _cross_entropy}


def build_loss(cfg: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss(logits, target)``; target is class indices or soft targets (N, C). Margin heads
    (ArcFace) put their margin into the logits, so they use the same cross-entropy."""
    check_choice("train", "loss", cfg.loss, choices_of(TrainConfig, "loss"))
    return LOSSES[cfg.loss](cfg)
