"""Building a network by name (after timm's ``_factory``): registered names and ``timm:<name>``,
input-size guards, the pooling/neck/head and local weights files.

The registry (:mod:`pipeline.models.registry`) only records what the families register; this
module is the one that turns a name into a network, so the registry imports no family.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch.nn as nn

from common.errors import PipelineError, close_matches
from pipeline.models.registry import ModelInfo, lookup, registered_names


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered name or of ``timm:<name>``; close matches when unknown."""
    if name.startswith("timm:"):
        from pipeline.models.timm_models import timm_model_info

        return timm_model_info(name)
    info = lookup(name)
    if info is None:
        raise PipelineError(f"unknown model '{name}' ({close_matches(name, registered_names())})")
    return info


def min_input_size(name: str, small_input: bool = False) -> int:
    info = model_info(name)
    if small_input:
        if info.min_size_small is None:
            hint = ""
            if info.family == "timm":
                from pipeline.models.timm_models import SMALL_STEMS

                hint = f" (a stride-1 stem is swapped in for {SMALL_STEMS} only)"
            raise PipelineError(f"model '{name}' has no small-input (CIFAR stem) variant{hint}")
        return info.min_size_small
    return info.min_size


def check_input_size(name: str, img_size: int, small_input: bool = False) -> None:
    need = min_input_size(name, small_input)
    if img_size < need:
        raise PipelineError(f"model '{name}' needs inputs of at least {need}x{need}, got {img_size}")


def _size_guard(min_size: int, name: str) -> Callable:
    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0]
        if x.dim() != 4:
            raise ValueError(f"model '{name}' expects a (N, C, H, W) batch, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h < min_size or w < min_size:
            raise ValueError(f"model '{name}' needs inputs of at least {min_size}x{min_size}, got {h}x{w}")

    return hook


def create_model(
    name: str,
    num_classes: int = 1000,
    pretrained: bool | str | os.PathLike = False,
    small_input: bool = False,
    *,
    pool: str = "avg",
    neck: str = "none",
    embedding_size: int = 512,
    head: str = "linear",
    arcface_s: float = 30.0,
    arcface_m: float = 0.3,
    subcenters: int = 3,
    dynamic_margin: bool = False,
    margin_min: float = 0.05,
    class_counts: Sequence[float] | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model (or ``timm:<name>``) by name, optionally with a head.

    ``pretrained``: ``False``; ``True`` (library weights: timm/torchvision, one clear line when
    they cannot be fetched); or the path of a local weights file, loaded after a
    ``pretrained=False`` build (:func:`pipeline.models.weights.load_weights`).

    Head keys (``TrainConfig``'s, see :class:`pipeline.models.heads.HeadConfig`): with the
    defaults (``pool="avg", neck="none", head="linear"``) the model is the plain backbone,
    unchanged; anything else gives a :class:`pipeline.models.heads.HeadedModel`. Every model
    has ``embed(x)`` (L2-normalised embeddings) and ``needs_target`` (train as ``model(x, target)``).
    ``class_counts`` (training images per class) feeds ``dynamic_margin``.

    Raises :class:`PipelineError` with close matches for an unknown name, and for
    ``num_classes <= 0``, unknown head names or a missing weights file, before building anything.
    The returned module checks its input size on every forward and carries ``model.model_name``
    and ``model.min_size``.
    """
    from pipeline.models.heads import HeadConfig, as_plain, attach_head
    from pipeline.models.weights import load_weights
    from pipeline.models.weights_file import check_weights_path

    info = model_info(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes <= 0:
        raise PipelineError(f"model '{name}': num_classes must be a positive integer, got {num_classes!r}")
    head_cfg = HeadConfig(
        pool, neck, embedding_size, head, arcface_s, arcface_m, subcenters, dynamic_margin, margin_min, class_counts
    )
    head_cfg.check(name, num_classes)
    weights = None
    if isinstance(pretrained, (str, os.PathLike)):
        weights, pretrained = check_weights_path(pretrained), False
    elif pretrained and not info.pretrained:
        raise PipelineError(f"model '{name}' has no pretrained weights (it is trained from scratch here)")
    min_size = min_input_size(name, small_input)
    model = info.builder(num_classes=num_classes, pretrained=bool(pretrained), small_input=small_input, **kwargs)
    if weights is not None:
        load_weights(model, weights, name)
    model = as_plain(model) if head_cfg.is_default else attach_head(model, name, num_classes, head_cfg, min_size)
    model.model_name = name
    model.min_size = min_size
    model.register_forward_pre_hook(_size_guard(model.min_size, name))
    return model
