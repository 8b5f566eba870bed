"""Standard backbones taken from timm (He et al. 2016, ResNet; and the rest of the zoo).

These are not rewritten here: timm builds them (``pretrained=False`` by default) and this
module only adds the CIFAR-style small-input stem (3x3 stride-1 conv, no max-pool), as used
by seeds 000/002 for 32x32 inputs, and a clear error when pretrained weights cannot be fetched.
"""

from __future__ import annotations

import timm
import torch.nn as nn

from common.errors import PipelineError
from pipeline.models.registry import register_model


def timm_model(arch: str, num_classes: int, pretrained: bool, **kw) -> nn.Module:
    """``timm.create_model`` with a one-line error when pretrained weights are unreachable."""
    try:
        return timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, **kw)
    except Exception as e:  # noqa: BLE001 - any download/hub failure becomes one clear line
        if not pretrained:
            raise
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise PipelineError(
            f"could not load pretrained weights for '{arch}' (no internet or no cached weights?): {reason}"
        ) from None


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


@register_model(family="resnet", min_size=32, min_size_small=8, pretrained=True, paper="He et al. 2016, ResNet")
def resnet18(num_classes: int = 1000, pretrained: bool = False, small_input: bool = False, **kw) -> nn.Module:
    model = timm_model("resnet18", num_classes, pretrained, **kw)
    return small_input_stem(model) if small_input else model
