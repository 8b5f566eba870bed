"""Seed 003's "Sample ResNet": a small CBAM network (Woo et al. 2018, "CBAM: Convolutional Block
Attention Module"; residual blocks after He et al. 2016).

Seed 003 stacks ``conv7x7 -> BN -> ReLU -> max-pool -> ResAttention -> AttentionModule ->
ResAttention -> avg-pool -> FC -> softmax``. Its figure of the two parts is missing from the text,
which describes the model only as "CBAM (channel then spatial attention) introduced into our
model". Here, as in CBAM's Fig. 3, ``ResAttention`` is a residual basic block (two 3x3 convs)
with CBAM on the residual branch before the addition (timm's ``BasicBlock`` with an attention
layer), and ``AttentionModule`` is a stand-alone CBAM. The second block doubles the width with
stride 2, as a ResNet stage would. The final softmax is left to the loss (the pipeline trains on
logits). The CBAM ResNet-50 of seed 003 is ``resnet50_cbam`` (:mod:`pipeline.models.attn_resnet`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.models.resnet import BasicBlock, downsample_conv

from pipeline.models.layers import attn_layer, create_attn
from pipeline.models.registry import register_model
from pipeline.models.standard import small_input_stem
from pipeline.models.utils import freeze_backbone as _freeze_backbone


def res_attention(in_chs: int, out_chs: int, stride: int = 1, attn: str | None = "cbam", **attn_kw: Any) -> nn.Module:
    """Seed 003's ResAttention: a basic residual block with ``attn`` before the addition."""
    down = None
    if stride != 1 or in_chs != out_chs:
        down = downsample_conv(in_chs, out_chs, kernel_size=1, stride=stride, norm_layer=nn.BatchNorm2d)
    return BasicBlock(in_chs, out_chs, stride, down, attn_layer=attn_layer(attn, **attn_kw))


class SampleResNet(nn.Module):
    """Seed 003's Sample ResNet (module docstring); ``num_features`` = ``widths[1]``."""

    def __init__(
        self,
        num_classes: int = 1000,
        widths: tuple[int, int] = (64, 128),
        attn: str | None = "cbam",
        attn_kw: dict[str, Any] | None = None,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        w0, w1 = widths
        attn_kw = attn_kw or {}
        self.conv1 = nn.Conv2d(in_chans, w0, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w0)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.block1 = res_attention(w0, w0, 1, attn, **attn_kw)
        self.attn = create_attn(attn, w0, **attn_kw) or nn.Identity()  # the "AttentionModule"
        self.block2 = res_attention(w0, w1, 2, attn, **attn_kw)
        self.num_features = w1
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w1, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.block2(self.attn(self.block1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.global_pool(self.forward_features(x)).flatten(1))


@register_model(
    family="cbam_nets",
    min_size=8,
    min_size_small=2,
    paper="Woo et al. 2018, CBAM; seed 003 Sample ResNet",
    tags=("seed003:Sample ResNet",),
)
def sample_resnet_cbam(
    num_classes: int = 1000,
    pretrained: bool = False,
    small_input: bool = False,
    freeze_backbone: bool = False,
    **kw: Any,
) -> nn.Module:
    """Seed 003's Sample ResNet with CBAM (``attn=None`` gives the plain two-block network)."""
    model = SampleResNet(num_classes, **kw)
    if small_input:
        model = small_input_stem(model)
    return _freeze_backbone(model) if freeze_backbone else model
