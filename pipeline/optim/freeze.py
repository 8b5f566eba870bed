"""What of a pretrained backbone trains: frozen BatchNorm (``bn_mode``) and the frozen warm-up
(``freeze_epochs``). The head modules (pool, neck, classifier) come from the caller, so this
component never imports a network.

Frozen BatchNorm keeps the loaded running statistics and affine parameters: the affine tensors
stop requiring gradients (the optimizer never sees them) and a forward pre-hook keeps the
layer in eval mode under ``model.train()``; the architecture and state-dict keys are unchanged,
so prediction rebuilds the same network. The neck's BatchNorm (part of the head) still trains.

The frozen warm-up keeps every backbone tensor in the optimizer and turns ``requires_grad`` off
for the first epochs: no gradient, so no update, no momentum and no weight decay (torch's
optimizers skip tensors without a gradient) and no backward pass through the backbone. Epoch
``e`` decides the state alone, so a resumed run is frozen exactly when an uninterrupted one was.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch.nn as nn

from common.errors import ConfigError

log = logging.getLogger(__name__)


def _head_ids(head: Iterable[nn.Module]) -> tuple[set[int], set[int]]:
    mods = list(head)
    return {id(m) for h in mods for m in h.modules()}, {id(p) for h in mods for p in h.parameters()}


def _keep_eval(module: nn.Module, args: tuple) -> None:
    module.training = False  # frozen BatchNorm: running statistics, never batch statistics


def freeze_batchnorm(model: nn.Module, head: Iterable[nn.Module]) -> int:
    """Freeze every BatchNorm outside ``head`` (``bn_mode=frozen``); returns how many."""
    head_modules, _ = _head_ids(head)
    n = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in head_modules:
            for p in m.parameters():
                p.requires_grad_(False)
            m.register_forward_pre_hook(_keep_eval)
            m.eval()
            n += 1
    log.info("bn_mode=frozen: %d backbone BatchNorm layers keep their statistics and affine parameters", n)
    return n


class BackboneFreeze:
    """The frozen warm-up: the backbone's trainable tensors stop training for ``epochs`` epochs.

    Build it after the optimizer (which must hold the backbone tensors) and after
    :func:`freeze_batchnorm` (frozen BatchNorm stays frozen when the backbone thaws).
    """

    def __init__(self, model: nn.Module, head: Iterable[nn.Module], epochs: int) -> None:
        _, head_params = _head_ids(head)
        self.epochs = epochs
        self.params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_params]
        if epochs and not self.params:
            raise ConfigError("train: freeze_epochs: the model has no trainable backbone tensors to freeze")

    def set_epoch(self, epoch: int) -> bool:
        """Freeze (``epoch < epochs``) or thaw the backbone for 0-based ``epoch``; True when frozen."""
        frozen = epoch < self.epochs
        for p in self.params:
            p.requires_grad_(not frozen)
        return frozen
