"""RepLKNet (Ding et al. 2022, "Scaling Up Your Kernels to 31x31: Revisiting Large Kernel Design
in CNNs", CVPR).

timm has no RepLKNet; the network is built here from timm layers and the shared
re-parameterisable large-kernel conv (:mod:`pipeline.models.layers.replk`). Stem: 3x3/2 conv,
3x3 dw, 1x1, 3x3/2 dw (all conv-BN-ReLU); four stages of [RepLK block, ConvFFN] pairs with stage
kernels 31/29/27/13 (each with a parallel 5x5 branch); transitions 1x1 + 3x3/2 dw; BN, average
pool, linear head. :meth:`RepLKNet.reparameterize` fuses every large kernel for inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.layers import ConvNormAct, DropPath

from pipeline.models.layers.replk import RepLKBlock, reparameterize_modules
from pipeline.models.registry import register_model

REPLKNET_ARCHS: dict[str, dict[str, Any]] = {
    # the paper's RepLKNet-31B
    "31b": dict(large_kernel_sizes=(31, 29, 27, 13), layers=(2, 2, 18, 2), channels=(128, 256, 512, 1024)),
    # repo-defined small variant (same kernels, half width, 6 blocks in stage 3) for CIFAR-scale budgets
    "31t": dict(large_kernel_sizes=(31, 29, 27, 13), layers=(2, 2, 6, 2), channels=(64, 128, 256, 512)),
}


class ConvFFN(nn.Module):
    """BN -> 1x1 conv-BN -> GELU -> 1x1 conv-BN, + x."""

    def __init__(self, dim: int, hidden: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.preffn_bn = nn.BatchNorm2d(dim)
        self.pw1 = ConvNormAct(dim, hidden, 1, apply_act=False)
        self.nonlinear = nn.GELU()
        self.pw2 = ConvNormAct(hidden, dim, 1, apply_act=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.pw2(self.nonlinear(self.pw1(self.preffn_bn(x)))))


class RepLKNet(nn.Module):
    """Generic RepLKNet; ``small_input=True`` makes both strided stem convs stride 1 (CIFAR 32x32:
    stages at 32/16/8/4 instead of 8/4/2/1 pixels)."""

    def __init__(
        self,
        large_kernel_sizes: Sequence[int] = (31, 29, 27, 13),
        layers: Sequence[int] = (2, 2, 18, 2),
        channels: Sequence[int] = (128, 256, 512, 1024),
        small_kernel: int | None = 5,
        dw_ratio: float = 1.0,
        ffn_ratio: float = 4.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        c0 = channels[0]
        s = 1 if small_input else 2
        self.stem = nn.Sequential(
            ConvNormAct(in_chans, c0, 3, stride=s, act_layer=nn.ReLU),
            ConvNormAct(c0, c0, 3, groups=c0, act_layer=nn.ReLU),
            ConvNormAct(c0, c0, 1, act_layer=nn.ReLU),
            ConvNormAct(c0, c0, 3, stride=s, groups=c0, act_layer=nn.ReLU),
        )
        dpr = torch.linspace(0, drop_path_rate, sum(layers)).tolist()
        stages: list[nn.Module] = []
        k = 0
        for i, (dim, depth, lk) in enumerate(zip(channels, layers, large_kernel_sizes, strict=True)):
            blocks: list[nn.Module] = []
            for j in range(depth):
                blocks.append(RepLKBlock(dim, lk, small_kernel, dw_ratio, dpr[k + j]))
                blocks.append(ConvFFN(dim, int(dim * ffn_ratio), dpr[k + j]))
            if i < len(channels) - 1:  # transition to the next stage
                nxt = channels[i + 1]
                blocks.append(ConvNormAct(dim, nxt, 1, act_layer=nn.ReLU))
                blocks.append(ConvNormAct(nxt, nxt, 3, stride=2, groups=nxt, act_layer=nn.ReLU))
            stages.append(nn.Sequential(*blocks))
            k += depth
        self.stages = nn.Sequential(*stages)
        self.num_features = channels[-1]
        self.norm = nn.BatchNorm2d(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes)

    def reparameterize(self) -> nn.Module:
        """Fuse each large-kernel conv's small branch and BNs into one conv with bias (in place)."""
        return reparameterize_modules(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def create_replknet(arch: str, num_classes: int = 1000, small_input: bool = False, **kw) -> RepLKNet:
    """RepLKNet-``arch`` with ``kw`` overriding the architecture (e.g. reduced ``channels`` in tests)."""
    return RepLKNet(**{**REPLKNET_ARCHS[arch], **kw}, num_classes=num_classes, small_input=small_input)


_PAPER = "Ding et al. 2022, Scaling Up Your Kernels to 31x31"


@register_model(family="replknet", min_size=32, min_size_small=8, paper=_PAPER)
def replknet_31b(num_classes: int = 1000, pretrained: bool = False, small_input: bool = False, **kw) -> nn.Module:
    """RepLKNet-31B: channels 128-1024, 2/2/18/2 blocks, kernels 31/29/27/13 (+5x5 branch)."""
    return create_replknet("31b", num_classes, small_input, **kw)


@register_model(family="replknet", min_size=32, min_size_small=8, paper=_PAPER + "; repo-defined small config")
def replknet_31t(num_classes: int = 1000, pretrained: bool = False, small_input: bool = False, **kw) -> nn.Module:
    """Small RepLKNet (not from the paper): channels 64-512, 2/2/6/2 blocks, same kernels."""
    return create_replknet("31t", num_classes, small_input, **kw)
