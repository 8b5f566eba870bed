"""Mixup/CutMix on the normalised float batch of the training loop (timm's Mixup), reseeded per
epoch like every other generator, and label smoothing of hard targets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.transforms import mix_seed, process_rank

if TYPE_CHECKING:
    from pipeline.config import TrainConfig


def smooth_one_hot(targets: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Label-smoothed one-hot rows (timm's convention: off = smoothing / classes)."""
    off = smoothing / num_classes
    return F.one_hot(targets, num_classes).float() * (1 - smoothing) + off


class Mixer:
    """Mixup/CutMix of a normalised float batch: ``(images, targets) -> (images, soft targets)``.

    Built on ``timm.data.Mixup`` (batch mode; label smoothing passed through, so the loss takes
    the soft targets as they are). timm draws from numpy's global generator; the mixer runs it
    on a private numpy state instead (swapped in and out around each call, main thread only),
    reseeded by :meth:`set_epoch`, so it neither depends on nor shifts anyone else's stream.

    timm mixes a batch with its reverse and needs an even size: an odd batch mixes its first
    N-1 images and gives the last one its own smoothed target.
    """

    def __init__(self, cfg: TrainConfig, num_classes: int) -> None:
        from timm.data import Mixup

        self.num_classes = num_classes
        self.smoothing = cfg.label_smoothing
        self.seed = cfg.seed
        self._mixup = Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            prob=cfg.mix_prob,
            mode="batch",
            label_smoothing=cfg.label_smoothing,
            num_classes=num_classes,
        )
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Reseed from ``(seed, epoch, rank)``; call before each epoch (resume-exact)."""
        seed = mix_seed(self.seed, epoch, process_rank(), "mix") % 2**32
        self._state = np.random.RandomState(seed).get_state()

    @contextlib.contextmanager
    def _private_numpy(self) -> Iterator[None]:
        outer = np.random.get_state()
        np.random.set_state(self._state)
        try:
            yield
        finally:
            self._state = np.random.get_state()
            np.random.set_state(outer)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(images)
        even = n - n % 2
        soft = smooth_one_hot(targets, self.num_classes, self.smoothing)
        if even:
            with self._private_numpy():
                _, mixed = self._mixup(images[:even], targets[:even])  # in place on the view
            soft[:even] = mixed.to(soft.dtype)
        return images, soft


def build_mixer(cfg: TrainConfig, num_classes: int) -> Mixer | None:
    """Mixup/CutMix for the training loop, or ``None`` when both alphas are 0 (off)."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    return Mixer(cfg, num_classes)
