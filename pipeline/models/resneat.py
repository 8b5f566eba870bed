"""ResNeAt-50: ResNeXt-50 (32x4d) whose last 1x1 conv is an attention unit AU_C (seed 001, 3.2).

Report: "Pre-activation and self-attention in image classification" (seed 001, section 3.2,
Fig. 8, Table 1), built on Xie et al. 2017, "Aggregated Residual Transformations for Deep Neural
Networks" (ResNeXt) and Vaswani et al. 2017 (scaled dot-product attention). In each bottleneck
the last 1x1 conv is replaced by

    K = CV_C(x), Q = CV_C(x), V = AP(CV_C(x)), O = CV_C(x)
    Scale = sigmoid(softmax(Q K^T / sqrt(s)) V)         K, Q: (ch, s), V, Scale: (ch, 1)
    out = Scale * O + shortcut

with ``CV_C`` a grouped convolution (C = 32 groups), ``AP`` adaptive average pooling to 1x1,
``ch`` the output channels and ``s = H * W``: an attention between channels whose result
re-weights the channels of ``O``.

Choices where the report is ambiguous (each checked in ``tests/test_models_zoo1.py``):

* CV_C is a **1x1** grouped conv (width -> out channels, 32 groups, no bias): that is the only
  reading that reproduces the report's arithmetic for the 256-d block,
  ``256*128 + 128*3*3*4 + 128*256*4/32 = 41,472`` (four grouped 1x1 convs of 128*256/32 = 1,024
  weights each), against 70,144 for ResNeXt and 212,992 for a width-128 ResNet block.
  K, Q, V and O are four separate convs (one conv with 4x the outputs would mix the groups).
* The ``+ x`` of the report cannot be the AU's own input (width 128, output 256): it is the
  bottleneck's shortcut, as in Fig. 8. At a stage transition (stride 2 or a channel change) the
  shortcut is ResNeXt's projection (1x1 conv with stride + BN), unchanged.
* O is followed by BN (the ``bn3`` of ResNeXt; zero-initialised like timm's ResNeXt baseline, so
  every block starts as the identity), and a ReLU follows the sum as in the ResNeXt block of
  Fig. 8. K, Q and V have no BN or activation (the formulas have none). Softmax is over the last
  axis (each channel's attention over all channels). The stride stays in the 3x3 conv.
* The stem, stage depths (3-4-6-3), widths and head are ResNeXt-50 32x4d's (Table 1); the model is
  timm's ``ResNet`` with this block, so ``small_input=True`` uses the same CIFAR stem (3x3/1
  conv, no max-pool) as the other ResNets.

Cost: the attention adds ``2 * ch^2 * s`` MACs per block (about 0.2 GMACs per block at 224 px,
~3.3 G for the 16 blocks), which is why ResNeAt has fewer parameters but more MACs.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.models.resnet import ResNet

from pipeline.models.registry import register_model
from pipeline.models.standard import small_input_stem

PAPER = "Seed 001 report (ResNeAt); Xie et al. 2017, ResNeXt; Vaswani et al. 2017, attention"


class AttentionUnit(nn.Module):
    """AU_C(x) without the residual: ``sigmoid(softmax(Q K^T / sqrt(s)) V) * O``."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        groups: int = 32,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.key = nn.Conv2d(in_chs, out_chs, 1, groups=groups, bias=False, **dd)
        self.query = nn.Conv2d(in_chs, out_chs, 1, groups=groups, bias=False, **dd)
        self.value = nn.Conv2d(in_chs, out_chs, 1, groups=groups, bias=False, **dd)
        self.out = nn.Conv2d(in_chs, out_chs, 1, groups=groups, bias=False, **dd)
        self.norm = norm_layer(out_chs, **dd)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, ch, 1, 1) channel scale in (0, 1)."""
        k = self.key(x).flatten(2)  # (B, ch, s)
        q = self.query(x).flatten(2)  # (B, ch, s)
        v = self.value(x).mean(dim=(2, 3)).unsqueeze(-1)  # AP -> (B, ch, 1)
        attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(k.shape[-1]), dim=-1)  # (B, ch, ch)
        return torch.sigmoid(attn @ v).unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(x) * self.norm(self.out(x))


class ResNeAtBottleneck(nn.Module):
    """ResNeXt bottleneck (1x1, grouped 3x3) with AU_C as its last layer; timm ``Bottleneck`` API."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        cardinality: int = 32,
        base_width: int = 4,
        reduce_first: int = 1,
        dilation: int = 1,
        first_dilation: int | None = None,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        drop_path: nn.Module | None = None,
        device=None,
        dtype=None,
        **_: object,  # timm passes attn_layer / aa_layer / drop_block: not used by ResNeAt
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        width = int(math.floor(planes * (base_width / 64)) * cardinality)
        outplanes = planes * self.expansion
        first_dilation = first_dilation or dilation
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False, **dd)
        self.bn1 = norm_layer(width, **dd)
        self.act1 = act_layer(inplace=True)
        self.conv2 = nn.Conv2d(
            width,
            width,
            3,
            stride,
            padding=first_dilation,
            dilation=first_dilation,
            groups=cardinality,
            bias=False,
            **dd,
        )
        self.bn2 = norm_layer(width, **dd)
        self.act2 = act_layer(inplace=True)
        self.au = AttentionUnit(width, outplanes, groups=cardinality, norm_layer=norm_layer, **dd)
        self.act3 = act_layer(inplace=True)
        self.downsample = downsample
        self.drop_path = drop_path

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.au.norm.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.au(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        return self.act3(x + shortcut)


def resneat(
    layers: tuple[int, ...], num_classes: int, small_input: bool, cardinality: int = 32, base_width: int = 4, **kw
) -> ResNet:
    model = ResNet(
        block=ResNeAtBottleneck,
        layers=layers,
        num_classes=num_classes,
        cardinality=cardinality,
        base_width=base_width,
        **kw,
    )
    return small_input_stem(model) if small_input else model


@register_model(family="resneat", min_size=32, min_size_small=8, paper=PAPER)
def resneat50(num_classes: int = 1000, pretrained: bool = False, small_input: bool = False, **kw) -> nn.Module:
    """ResNeAt-50 (32 groups, Table 1 of seed 001)."""
    return resneat((3, 4, 6, 3), num_classes, small_input, **kw)
