"""Model helpers shared by the families: freezing a backbone for head-only fine-tuning.

Seed 003 fine-tunes an ImageNet ResNet-50 on CIFAR-10 by "freezing every parameter except the
fully connected layer" (only the new ``Linear(2048, 10)`` is trained: 20,490 parameters).
"""

from __future__ import annotations

import torch.nn as nn


def classifier_of(model: nn.Module) -> nn.Module:
    """The classification head: timm's ``get_classifier()`` where present, else the last Linear."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if head is None or not isinstance(head, nn.Module):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        head = linears[-1] if linears else None
    if head is None or not any(True for _ in head.parameters()):
        raise ValueError(f"{type(model).__name__}: no classifier head with parameters found")
    return head


def freeze_backbone(model: nn.Module) -> nn.Module:
    """Freeze every parameter except the classifier head's (seed 003's fine-tuning run).

    Only ``requires_grad`` changes: BatchNorm running statistics still update in ``train()`` mode,
    as in the seed's PyTorch fine-tuning; call ``model.eval()`` on the frozen part to stop that.
    Returns the same model.
    """
    head = classifier_of(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    return model
