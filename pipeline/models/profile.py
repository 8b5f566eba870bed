"""Model size: parameter count and multiply-accumulates (MACs) for one image.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode``, which counts FLOPs of the
matmul-like ops (convolutions, linear layers, (b)mm, attention) as 2 x MACs; we report
``flops / 2`` so that ResNet-50 at 224 px gives the usual 4.09 GMACs. Normalisation,
activations, pooling and element-wise ops are not counted (the fvcore/thop convention).

The forward runs on the ``meta`` device when the model allows it (no memory, no arithmetic:
counting a 138M-parameter VGG takes milliseconds) and falls back to a real CPU forward.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger(__name__)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all of them, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, img_size: int, in_chans: int = 3) -> int:
    """MACs of one forward pass of a single ``in_chans x img_size x img_size`` image (eval mode)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, in_chans, img_size, img_size, device=device)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
        return counter.get_total_flops() // 2
    finally:
        model.train(was_training)


def measure(build: Callable[[], nn.Module], img_size: int, in_chans: int = 3) -> tuple[int, int]:
    """``(parameters, MACs at img_size)`` of the model returned by ``build()``.

    ``build`` is a zero-argument callable (e.g. ``lambda: create_model("resnet50", 1000)``).
    It is built and run on the meta device when it can be; a model whose construction or forward
    needs real data (``.tolist()``, ``.item()``, ...) is rebuilt and measured on the CPU.
    """
    try:
        with torch.device("meta"):
            model = build()
        return count_params(model), count_macs(model, img_size, in_chans)
    except (NotImplementedError, RuntimeError) as e:
        log.debug("meta-device measurement failed (%s); measuring on the CPU", e)
    model = build()
    return count_params(model), count_macs(model, img_size, in_chans)
