"""Standard backbones taken from timm and torchvision, not rewritten.

Papers: He et al. 2016 (ResNet), Xie et al. 2017 (ResNeXt), Hu et al. 2018 (SENet),
Huang et al. 2017 (DenseNet), Szegedy et al. 2015/2016/2017 (GoogLeNet, Inception-v3,
Inception-v4 and Inception-ResNet-v2), Simonyan & Zisserman 2015 (VGG), Krizhevsky et al. 2012
(AlexNet). These are the baselines of seeds 001 (Table 3), 002 and 004.

Every model is one row of :data:`STANDARD_MODELS` (registry name -> library arch, min sizes,
small-input stem) and one generic builder; the library builds it (``pretrained=False`` by
default), this module only

* adds the CIFAR-style small-input stem (3x3 stride-1 conv, no max-pool) to the ResNet family
  and DenseNet, as seeds 000/002 use for 32x32 inputs;
* exposes ``num_features`` (the channel width of the last feature map) on torchvision models,
  read from the model;
* turns a failed weight download (timm hub or torchvision URL) into one clear PipelineError line.

Minimum sizes: ``min_size`` is the smallest input side whose forward works and whose last
feature map is at least 1x1 without relying on padding alone (the total stride, 32, for the
padded nets); the Inception nets use unpadded ("valid") convs and need >= 75 px (no small-input
variant: the architecture is defined by its valid-conv stem). AlexNet needs 63. With the
small-input stem the total stride drops to 8, hence ``min_size_small=8``.

``densenet_bc_cifar`` is seed 002's DenseNet-BC (growth 32, blocks 6-12-24-16, bottleneck
width 4k, compression 0.5, dropout 0.2 after every dense layer): the DenseNet-121 layout with
``proj_drop_rate=0.2``. Its default stem is the ImageNet one (7x7/2 + max-pool), exactly as in
the seed's code; ``small_input=True`` swaps in the CIFAR stem. ``densenet121(small_input=True)``
gets the same stem swap without the dropout (so small_input changes only the stem everywhere).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import timm
import torch.nn as nn

from common.errors import PipelineError
from pipeline.models.registry import register_builder, register_model

log = logging.getLogger(__name__)


def _pretrained_error(arch: str, e: Exception) -> PipelineError:
    reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    return PipelineError(
        f"could not load pretrained weights for '{arch}' (no internet or no cached weights?): {reason}"
    )


def timm_model(arch: str, num_classes: int, pretrained: bool, **kw) -> nn.Module:
    """``timm.create_model`` with a one-line error when pretrained weights are unreachable."""
    try:
        return timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, **kw)
    except Exception as e:  # noqa: BLE001 - any download/hub failure becomes one clear line
        if not pretrained:
            raise
        raise _pretrained_error(arch, e) from None


def torchvision_model(arch: str, num_classes: int, pretrained: bool, **kw) -> nn.Module:
    """``torchvision.models.get_model`` with the same one-line error as :func:`timm_model`.

    torchvision refuses ``num_classes != 1000`` together with weights, so a pretrained model is
    built with its 1000-class head and the last ``nn.Linear`` is replaced afterwards.
    """
    import torchvision

    if not pretrained:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kw)
    try:
        model = torchvision.models.get_model(arch, weights="DEFAULT", **kw)
    except Exception as e:  # noqa: BLE001 - URLError, hash mismatch, ...: one clear line
        raise _pretrained_error(arch, e) from None
    if num_classes != 1000:
        _replace_last_linear(model, num_classes)
    return model


def _replace_last_linear(model: nn.Module, num_classes: int) -> None:
    name, last = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], nn.Linear(last.in_features, num_classes))


def small_input_stem(model: nn.Module) -> nn.Module:
    """Swap a timm ResNet-style ImageNet stem (7x7/2 conv + 3x3/2 max-pool) for a 3x3/1 conv.

    Works on every timm ``ResNet`` (ResNet, ResNeXt, SE-ResNet, ResNet-D, Res2Net): it reads
    the stem width from the existing ``conv1`` rather than guessing it from the name.
    """
    conv = model.conv1
    if isinstance(conv, nn.Sequential):  # deep stem (ResNet-C/D): keep it, make it stride 1
        first = conv[0]
        conv[0] = nn.Conv2d(first.in_channels, first.out_channels, 3, 1, 1, bias=False)
    else:
        model.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def densenet_small_input_stem(model: nn.Module) -> nn.Module:
    """Swap a timm DenseNet ImageNet stem (7x7/2 conv + max-pool) for a 3x3/1 conv (CIFAR stem)."""
    conv = model.features.conv0
    model.features.conv0 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1, bias=False)
    model.features.pool0 = nn.Identity()
    return model


def _last_conv_width(model: nn.Module) -> int:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


@dataclass(frozen=True)
class StandardSpec:
    """One library backbone: where it comes from and what input it needs."""

    arch: str
    family: str
    paper: str
    library: str = "timm"  # "timm" or "torchvision"
    min_size: int = 32
    small_stem: Callable[[nn.Module], nn.Module] | None = None  # None = no small-input variant
    min_size_small: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)  # defaults for the library builder
    num_features: Callable[[nn.Module], int] | None = None  # torchvision: read the width from the model
    pretrained: bool = True  # library weights exist for this arch


_RESNET = dict(small_stem=small_input_stem, min_size_small=8)
_DENSENET = dict(small_stem=densenet_small_input_stem, min_size_small=8)
_INCEPTION = dict(min_size=75)
_HE = "He et al. 2016, Deep Residual Learning (ResNet)"
_XIE = "Xie et al. 2017, Aggregated Residual Transformations (ResNeXt)"
_HU = "Hu et al. 2018, Squeeze-and-Excitation Networks (SENet)"
_HUANG = "Huang et al. 2017, Densely Connected Convolutional Networks (DenseNet)"
_VGG = "Simonyan & Zisserman 2015, Very Deep Convolutional Networks (VGG)"

STANDARD_MODELS: dict[str, StandardSpec] = {
    # resnet18 keeps its own decorated builder below (same row, registered by hand)
    "resnet18": StandardSpec("resnet18", "resnet", _HE, **_RESNET),
    "resnet34": StandardSpec("resnet34", "resnet", _HE, **_RESNET),
    "resnet50": StandardSpec("resnet50", "resnet", _HE, **_RESNET),
    "resnet101": StandardSpec("resnet101", "resnet", _HE, **_RESNET),
    "resnet152": StandardSpec("resnet152", "resnet", _HE, **_RESNET),
    "resnext50_32x4d": StandardSpec("resnext50_32x4d", "resnext", _XIE, **_RESNET),
    "resnext101_32x4d": StandardSpec("resnext101_32x4d", "resnext", _XIE, **_RESNET),
    "resnext101_32x8d": StandardSpec("resnext101_32x8d", "resnext", _XIE, **_RESNET),
    "seresnet18": StandardSpec("seresnet18", "senet", _HU, **_RESNET),
    "seresnet34": StandardSpec("seresnet34", "senet", _HU, **_RESNET),
    "seresnet50": StandardSpec("seresnet50", "senet", _HU, **_RESNET),
    "seresnext50_32x4d": StandardSpec("seresnext50_32x4d", "senet", _HU, **_RESNET),
    "densenet121": StandardSpec("densenet121", "densenet", _HUANG, **_DENSENET),
    "densenet169": StandardSpec("densenet169", "densenet", _HUANG, **_DENSENET),
    "densenet201": StandardSpec("densenet201", "densenet", _HUANG, **_DENSENET),
    "densenet_bc_cifar": StandardSpec(
        "densenet121",
        "densenet",
        _HUANG + "; seed 002 DenseNet-BC (k=32, 6-12-24-16, theta 0.5, drop 0.2)",
        kwargs=dict(proj_drop_rate=0.2),
        pretrained=False,
        **_DENSENET,
    ),
    "inception_v3": StandardSpec("inception_v3", "inception", "Szegedy et al. 2016, Inception-v3", **_INCEPTION),
    "inception_v4": StandardSpec("inception_v4", "inception", "Szegedy et al. 2017, Inception-v4", **_INCEPTION),
    "inception_resnet_v2": StandardSpec(
        "inception_resnet_v2", "inception", "Szegedy et al. 2017, Inception-ResNet-v2", **_INCEPTION
    ),
    "googlenet": StandardSpec(
        "googlenet",
        "inception",
        "Szegedy et al. 2015, Going Deeper with Convolutions (GoogLeNet)",
        library="torchvision",
        kwargs=dict(aux_logits=False, init_weights=True),
        num_features=lambda m: m.fc.in_features,
    ),
    "vgg11_bn": StandardSpec("vgg11_bn", "vgg", _VGG),
    "vgg16_bn": StandardSpec("vgg16_bn", "vgg", _VGG),
    "alexnet": StandardSpec(
        "alexnet",
        "alexnet",
        "Krizhevsky et al. 2012, ImageNet Classification with Deep CNNs (AlexNet)",
        library="torchvision",
        min_size=63,
        num_features=_last_conv_width,
    ),
}

# kwargs torchvision rejects together with weights (it sets them itself when loading)
_TV_PRETRAINED_DROP = {"aux_logits", "init_weights"}


def build_standard(
    name: str, num_classes: int = 1000, pretrained: bool = False, small_input: bool = False, **kw
) -> nn.Module:
    """Build the backbone of row ``name`` of :data:`STANDARD_MODELS`."""
    spec = STANDARD_MODELS[name]
    kw = {**spec.kwargs, **kw}
    if spec.library == "timm":
        model = timm_model(spec.arch, num_classes, pretrained, **kw)
    else:
        if pretrained:
            kw = {k: v for k, v in kw.items() if k not in _TV_PRETRAINED_DROP}
        model = torchvision_model(spec.arch, num_classes, pretrained, **kw)
        model.num_features = spec.num_features(model)
    if small_input:
        if spec.small_stem is None:  # the registry refuses this before we get here
            raise PipelineError(f"model '{name}' has no small-input variant")
        model = spec.small_stem(model)
    return model


def _register(name: str, spec: StandardSpec) -> None:
    def builder(num_classes: int = 1000, pretrained: bool = False, small_input: bool = False, **kw) -> nn.Module:
        return build_standard(name, num_classes, pretrained, small_input, **kw)

    register_builder(
        name,
        builder,
        f"{spec.paper} ({spec.library} '{spec.arch}').",
        family=spec.family,
        min_size=spec.min_size,
        min_size_small=spec.min_size_small if spec.small_stem is not None else None,
        paper=spec.paper,
        pretrained=spec.pretrained,
    )


@register_model(family="resnet", min_size=32, min_size_small=8, pretrained=True, paper="He et al. 2016, ResNet")
def resnet18(num_classes: int = 1000, pretrained: bool = False, small_input: bool = False, **kw) -> nn.Module:
    model = timm_model("resnet18", num_classes, pretrained, **kw)
    return small_input_stem(model) if small_input else model


for _name, _spec in STANDARD_MODELS.items():
    if _name != "resnet18":
        _register(_name, _spec)
