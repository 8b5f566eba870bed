"""Any timm model by name: ``create_model("timm:efficientnet_b0", ...)`` beside the registered ones.

A ``timm:<name>`` model follows the registry's rules (:mod:`pipeline.models.registry`):

* an unknown name is one error with close matches from ``timm.list_models()`` (a pretrained tag,
  ``timm:resnet50.a1_in1k``, is checked against ``timm.list_pretrained()``);
* the minimum input side is the smallest multiple of the model's feature reduction (its last
  ``feature_info`` entry, e.g. 32) whose forward runs, found by dry runs on the meta device (no
  memory, no arithmetic) up to the model's default input size; models with a fixed input size
  (ViT, Swin) get exactly that size (the size guard checks the minimum only);
* ``small_input=True`` swaps the stem for a stride-1 one where that is simple (:data:`SMALL_STEMS`:
  timm ResNet/ResNeXt/Res2Net, DenseNet, EfficientNet/MobileNet, patchify ConvNeXt); other models
  have no small-input variant (one clear error);
* ``pretrained=True`` loads timm's weights (one clear line when they cannot be fetched, e.g.
  offline); a local weights file works as for every model (:mod:`pipeline.models.weights`).

The information is computed once per name (about 0.1 s) and cached; ``list_models()`` keeps
listing only the registered models.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import timm
import torch
import torch.nn as nn

from common.errors import PipelineError, close_matches
from pipeline.models.registry import ModelInfo
from pipeline.models.standard import densenet_small_input_stem, small_input_stem, timm_model

log = logging.getLogger(__name__)

PREFIX = "timm:"


def _stride1_conv_stem(model: nn.Module) -> nn.Module:
    """EfficientNet / MobileNet: the 3x3 stride-2 ``conv_stem`` becomes stride 1."""
    model.conv_stem.stride = (1, 1)
    return model


def _convnext_stem(model: nn.Module) -> nn.Module:
    """ConvNeXt's 4x4 stride-4 patchify conv becomes a 3x3 stride-1 conv of the same width."""
    conv = model.stem[0]
    if not isinstance(conv, nn.Conv2d) or conv.stride != (4, 4):
        raise PipelineError(f"ConvNeXt stem {type(conv).__name__} with stride {conv.stride} is not a 4x4 patchify conv")
    model.stem[0] = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1)
    return model


def _small_stems() -> list[tuple[type, Callable[[nn.Module], nn.Module], int]]:
    """(timm class, stem swap, stride removed by the swap)."""
    from timm.models.convnext import ConvNeXt
    from timm.models.densenet import DenseNet
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
    from timm.models.resnet import ResNet

    return [
        (ResNet, small_input_stem, 4),
        (DenseNet, densenet_small_input_stem, 4),
        (EfficientNet, _stride1_conv_stem, 2),
        (MobileNetV3, _stride1_conv_stem, 2),
        (ConvNeXt, _convnext_stem, 4),
    ]


SMALL_STEMS = "timm ResNet/ResNeXt/Res2Net, DenseNet, EfficientNet, MobileNetV3, ConvNeXt"


def _small_stem_of(model: nn.Module) -> tuple[Callable[[nn.Module], nn.Module], int] | None:
    for cls, swap, factor in _small_stems():
        if isinstance(model, cls):
            return swap, factor
    return None


def split_name(name: str) -> str | None:
    """``'timm:resnet50'`` -> ``'resnet50'``; ``None`` for a registry name."""
    return name[len(PREFIX) :] if name.startswith(PREFIX) else None


def build_timm(
    arch: str, num_classes: int = 1000, pretrained: bool = False, small_input: bool = False, **kw: Any
) -> nn.Module:
    """Build timm model ``arch`` (optionally with its small-input stem)."""
    model = timm_model(arch, num_classes, pretrained, **kw)
    if small_input:
        stem = _small_stem_of(model)
        if stem is None:  # the registry refuses this before we get here
            raise PipelineError(f"model 'timm:{arch}' has no small-input variant (supported: {SMALL_STEMS})")
        model = stem[0](model)
    return model


def _runs(model: nn.Module, size: int, in_chans: int) -> bool:
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, size, size, device="meta"))
        return True
    except Exception:  # noqa: BLE001 - any failure means "not at this size"
        return False


def _smallest_size(model: nn.Module, step: int, limit: int, in_chans: int) -> int | None:
    for size in range(step, max(limit, step) + 1, step):
        if _runs(model, size, in_chans):
            return size
    return None


def _check_name(arch: str) -> None:
    if not arch:
        raise PipelineError("empty timm model name (write timm:<name>, e.g. timm:efficientnet_b0)")
    base, _, tag = arch.partition(".")
    if not timm.is_model(base):
        raise PipelineError(f"unknown timm model '{base}' ({close_matches(base, timm.list_models())})")
    if tag and arch not in timm.list_pretrained(f"{base}.*"):
        tags = timm.list_pretrained(f"{base}.*")
        hint = close_matches(arch, tags) if tags else f"'{base}' has no pretrained tags"
        raise PipelineError(f"unknown timm pretrained tag '{arch}' ({hint})")


def _has_weights(arch: str) -> bool:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    return cfg is not None and bool(cfg.hf_hub_id or cfg.url or cfg.file)


@functools.lru_cache(maxsize=256)
def timm_model_info(name: str) -> ModelInfo:
    """:class:`ModelInfo` of ``timm:<arch>`` (min sizes probed on the meta device), cached."""
    arch = split_name(name)
    if arch is None:
        raise PipelineError(f"'{name}' is not a timm:<name> model")
    _check_name(arch)
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False).eval()
    cfg = model.pretrained_cfg or {}
    default = int(cfg.get("input_size", (3, 224, 224))[-1])
    in_chans = int(cfg.get("input_size", (3,))[0])
    feature_info = getattr(model, "feature_info", None)
    reduction = int(feature_info[-1]["reduction"]) if feature_info else 32
    if cfg.get("fixed_input_size"):
        min_size = default
    else:
        min_size = _smallest_size(model, reduction, default, in_chans)
        if min_size is None:  # e.g. an op without a meta kernel: trust the model's own size
            log.warning("timm:%s: no input size runs on the meta device; using its default %d", arch, default)
            min_size = default
    min_size_small = None
    stem = _small_stem_of(model)
    if stem is not None and not cfg.get("fixed_input_size"):
        try:
            with torch.device("meta"):
                small = stem[0](model)
            min_size_small = _smallest_size(small.eval(), max(1, reduction // stem[1]), min_size, in_chans)
        except PipelineError as e:
            log.debug("timm:%s: no small-input stem (%s)", arch, e)
    return ModelInfo(
        name=name,
        builder=functools.partial(build_timm, arch),
        family="timm",
        min_size=min_size,
        min_size_small=min_size_small,
        paper=f"timm '{arch}' ({type(model).__name__})",
        pretrained=_has_weights(arch),
        tags=("timm",),
    )
