"""Model helpers shared by the families: freezing a backbone for head-only fine-tuning.

Seed 003 fine-tunes an ImageNet ResNet-50 on CIFAR-10 by "freezing every parameter except the
fully connected layer" (only the new ``Linear(2048, 10)`` is trained: 20,490 parameters). With a
head (:mod:`pipeline.models.heads`) the pooling (GeM's ``p``), the neck and the head stay trainable.
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


def head_modules(model: nn.Module) -> list[nn.Module]:
    """What stays trainable under :func:`freeze_backbone`: a headed model's pool, neck and head
    (its ``head_modules()``), else the classifier."""
    if callable(getattr(model, "head_modules", None)):
        return list(model.head_modules())
    return [classifier_of(model)]


def freeze_backbone(model: nn.Module) -> nn.Module:
    """Freeze every parameter except the head's (seed 003's fine-tuning run; see :func:`head_modules`).

    Only ``requires_grad`` changes: BatchNorm running statistics still update in ``train()`` mode,
    as in the seed's PyTorch fine-tuning; call ``model.eval()`` on the frozen part to stop that.
    Returns the same model.
    """
    heads = head_modules(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for head in heads:
        for p in head.parameters():
            p.requires_grad_(True)
    return model
