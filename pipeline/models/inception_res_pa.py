"""Inception-Res-PA: Inception-ResNet-v2 with pre-activation residual units (seed 001, section 3.1).

Report: "Pre-activation and self-attention in image classification" (seed 001, Fig. 6),
combining Szegedy et al. 2017, "Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning" (Inception-ResNet-v2) with He et al. 2016, "Identity Mappings in Deep
Residual Networks" (pre-activation). In every residual unit BN+ReLU move before the
convolutions, the shortcut is a clean identity and there is no ReLU after the addition:
``x + scale * W_up(BN-ReLU(concat_b(branch_b(x))))`` with every branch conv ``BN-ReLU-conv``.

Choices where the report (and seed 004's notes on the Inception-ResNet paper) leave a gap:

* Layout: Stem, 5 x Inception-ResNet-A, Reduction-A, 10 x Inception-ResNet-B, Reduction-B,
  5 x Inception-ResNet-C (the paper's Fig. 12 and seed 004: "9 + 5*4 + 3 + 10*4 + 3 + 5*4 + 1").
  ``depths=(10, 20, 10)`` gives the depth of the TF reference / timm ``inception_resnet_v2``.
* Widths (320 / 1088 / 2080 channels, branch widths, 1x1 -> 1536 before pooling) follow the TF
  reference implementation that timm's ``inception_resnet_v2`` (the baseline we compare with)
  uses, not the paper's figures, which disagree with each other on channel counts.
* Residual scaling: 0.17 (A), 0.10 (B), 0.20 (C), the reference values, inside the paper's
  0.1-0.3 range.
* Pre-activation everywhere after the stem: each branch conv is ``BN-ReLU-conv`` (one BN per
  conv, on that conv's input), and the 1x1 up-projection gets ``BN-ReLU`` on the concatenation
  too (it follows raw conv outputs now). Reduction-A/B are not residual, but their input is the
  un-activated sum of the previous units, so their convs are pre-activated the same way; their
  max-pool branch sees the raw sum. The plain stem convs are ``conv-BN-ReLU`` as in He et al.'s
  pre-activation ResNet, whose first conv is not pre-activated either; Mixed-5b (the last part of
  the reference stem, 192 -> 320 channels) is built with the same generic pre-activated block. After the last unit:
  ``BN-ReLU-conv1x1(1536)-BN-ReLU``, global average pool, linear classifier.
* Small input (``small_input=True``): the stem becomes three 3x3 stride-1 padded convs
  (32-64-192 channels, no pooling) + Mixed-5b, so a 32x32 image reaches the A units at 32x32
  (the ImageNet stem gives 35x35 at 299 px); Reduction-A/B then give 15x15 and 7x7.
* ``inception_res_pa_small``: depths (1, 2, 1), same widths, for CPU runs and tests.

The ImageNet stem and the reductions use unpadded ("valid") convs as in the paper, so the
ImageNet stem needs inputs >= 75 px; the small-input stem needs >= 7 px.
All blocks are one generic class (:class:`InceptionBlock`) driven by branch specs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from pipeline.models.registry import register_model

# a branch is a sequence of ops; an op is (out_channels, kernel, stride) or a pool name
Op = tuple[int, int | tuple[int, int], int] | str
Branch = Sequence[Op]

PAPER = (
    "Seed 001 report (Inception-Res-PA); Szegedy et al. 2017, Inception-ResNet-v2; "
    "He et al. 2016, Identity Mappings in Deep Residual Networks"
)

# branch specs of the reference Inception-ResNet-v2 (TF-slim / timm widths)
MIXED_5B: list[Branch] = [
    [(96, 1, 1)],
    [(48, 1, 1), (64, 5, 1)],
    [(64, 1, 1), (96, 3, 1), (96, 3, 1)],
    ["avg", (64, 1, 1)],
]
BLOCK_A: list[Branch] = [[(32, 1, 1)], [(32, 1, 1), (32, 3, 1)], [(32, 1, 1), (48, 3, 1), (64, 3, 1)]]
REDUCTION_A: list[Branch] = [[(384, 3, 2)], [(256, 1, 1), (256, 3, 1), (384, 3, 2)], ["max"]]
BLOCK_B: list[Branch] = [[(192, 1, 1)], [(128, 1, 1), (160, (1, 7), 1), (192, (7, 1), 1)]]
REDUCTION_B: list[Branch] = [
    [(256, 1, 1), (384, 3, 2)],
    [(256, 1, 1), (288, 3, 2)],
    [(256, 1, 1), (288, 3, 1), (320, 3, 2)],
    ["max"],
]
BLOCK_C: list[Branch] = [[(192, 1, 1)], [(192, 1, 1), (224, (1, 3), 1), (256, (3, 1), 1)]]


def _pad(kernel: int | tuple[int, int], stride: int) -> int | tuple[int, int]:
    """'same' padding for stride 1, none ('valid') for the stride-2 reduction convs (as in the paper)."""
    if stride != 1:
        return 0
    return tuple(k // 2 for k in kernel) if isinstance(kernel, tuple) else kernel // 2


class PreActConv(nn.Sequential):
    """BN-ReLU-conv (He et al. 2016, pre-activation)."""

    def __init__(
        self, in_chs: int, out_chs: int, kernel: int | tuple[int, int] = 1, stride: int = 1, bias: bool = False
    ) -> None:
        super().__init__(
            nn.BatchNorm2d(in_chs, eps=1e-3),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_chs, out_chs, kernel, stride, _pad(kernel, stride), bias=bias),
        )


class ConvBnAct(nn.Sequential):
    """conv-BN-ReLU (post-activation), used in the stem only."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__(
            nn.Conv2d(in_chs, out_chs, kernel, stride, padding, bias=False),
            nn.BatchNorm2d(out_chs, eps=1e-3),
            nn.ReLU(inplace=True),
        )


def _make_branch(in_chs: int, ops: Branch) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    chs = in_chs
    for op in ops:
        if op == "avg":
            layers.append(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False))
        elif op == "max":
            layers.append(nn.MaxPool2d(3, stride=2))
        else:
            out, kernel, stride = op
            layers.append(PreActConv(chs, out, kernel, stride))
            chs = out
    return nn.Sequential(*layers), chs


class InceptionBlock(nn.Module):
    """Generic pre-activation Inception block: parallel branches, concatenated.

    With ``residual_scale`` set it is an Inception-ResNet unit: the concatenation is projected
    back to ``in_chs`` by a BN-ReLU-1x1 conv (with bias, as in the paper), scaled and added to a
    clean identity shortcut, with no activation after the sum. Without it, it is a plain
    multi-branch block (Mixed-5b, Reduction-A/B) whose output has ``out_chs`` channels.
    """

    def __init__(self, in_chs: int, branches: Sequence[Branch], residual_scale: float | None = None) -> None:
        super().__init__()
        built = [_make_branch(in_chs, b) for b in branches]
        self.branches = nn.ModuleList(b for b, _ in built)
        cat_chs = sum(c for _, c in built)
        self.residual_scale = residual_scale
        if residual_scale is None:
            self.up = None
            self.out_chs = cat_chs
        else:
            self.up = PreActConv(cat_chs, in_chs, 1, bias=True)
            self.out_chs = in_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([b(x) for b in self.branches], dim=1)
        if self.up is None:
            return out
        return x + self.residual_scale * self.up(out)


def imagenet_stem(in_chans: int) -> nn.Sequential:
    """Inception-ResNet-v2 reference stem up to 192 channels (299 px -> 35x35): valid convs."""
    return nn.Sequential(
        ConvBnAct(in_chans, 32, 3, stride=2),
        ConvBnAct(32, 32, 3),
        ConvBnAct(32, 64, 3, padding=1),
        nn.MaxPool2d(3, stride=2),
        ConvBnAct(64, 80, 1),
        ConvBnAct(80, 192, 3),
        nn.MaxPool2d(3, stride=2),
    )


def small_stem(in_chans: int) -> nn.Sequential:
    """CIFAR stem: 3x3 stride-1 padded convs, no pooling (32 px stays 32x32)."""
    return nn.Sequential(
        ConvBnAct(in_chans, 32, 3, padding=1), ConvBnAct(32, 64, 3, padding=1), ConvBnAct(64, 192, 3, padding=1)
    )


class InceptionResPA(nn.Module):
    """Inception-ResNet-v2 layout with pre-activation residual units (see module docstring)."""

    def __init__(
        self,
        num_classes: int = 1000,
        depths: Sequence[int] = (5, 10, 5),
        scales: Sequence[float] = (0.17, 0.10, 0.20),
        small_input: bool = False,
        in_chans: int = 3,
        num_features: int = 1536,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.stem = small_stem(in_chans) if small_input else imagenet_stem(in_chans)
        layers: list[nn.Module] = [InceptionBlock(192, MIXED_5B)]  # -> 320
        for depth, scale, block, reduction in zip(
            depths, scales, (BLOCK_A, BLOCK_B, BLOCK_C), (REDUCTION_A, REDUCTION_B, None)
        ):
            chs = layers[-1].out_chs
            layers += [InceptionBlock(chs, block, residual_scale=scale) for _ in range(depth)]
            if reduction is not None:
                layers.append(InceptionBlock(chs, reduction))  # 320 -> 1088 -> 2080
        self.blocks = nn.Sequential(*layers)
        self.num_features = num_features
        self.head_conv = nn.Sequential(
            PreActConv(layers[-1].out_chs, num_features, 1),
            nn.BatchNorm2d(num_features, eps=1e-3),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_conv(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.forward_features(x)).flatten(1)
        return self.fc(self.drop(x))


@register_model(family="inception_res_pa", min_size=75, min_size_small=7, paper=PAPER)
def inception_res_pa(num_classes: int = 1000, pretrained: bool = False, small_input: bool = False, **kw) -> nn.Module:
    return InceptionResPA(num_classes=num_classes, small_input=small_input, **kw)


@register_model(family="inception_res_pa", min_size=75, min_size_small=7, paper=PAPER)
def inception_res_pa_small(
    num_classes: int = 1000, pretrained: bool = False, small_input: bool = False, **kw
) -> nn.Module:
    kw.setdefault("depths", (1, 2, 1))
    return InceptionResPA(num_classes=num_classes, small_input=small_input, **kw)
