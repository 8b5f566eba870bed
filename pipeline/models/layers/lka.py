"""Decomposed large-kernel convolution and attention (Guo et al. 2022, "Visual Attention Network").

A K x K depth-wise convolution is approximated by a small depth-wise conv, a dilated depth-wise
conv and a 1x1 conv: with the VAN defaults (5x5, 7x7 dilation 3) the receptive field is 21x21.
``LargeKernelConv`` is the decomposed convolution itself (also used by TripletLKN in place of the
7x7 conv); ``LargeKernelAttention`` (LKA) multiplies its output with the input.
Optional ``act_layer``/``norm_layer`` after the first two convs serve seed 000's VAN-Act/VAN-BN.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class LargeKernelConv(nn.Module):
    def __init__(
        self,
        dim: int,
        out_dim: int | None = None,
        kernel_size: int = 5,
        dilated_kernel_size: int = 7,
        dilation: int = 3,
        act_layer: type[nn.Module] | None = None,
        norm_layer: type[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        out_dim = out_dim or dim
        self.conv0 = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm0 = norm_layer(dim) if norm_layer else nn.Identity()
        self.act0 = act_layer() if act_layer else nn.Identity()
        pad = (dilated_kernel_size // 2) * dilation
        self.conv_spatial = nn.Conv2d(dim, dim, dilated_kernel_size, padding=pad, groups=dim, dilation=dilation)
        self.norm1 = norm_layer(dim) if norm_layer else nn.Identity()
        self.act1 = act_layer() if act_layer else nn.Identity()
        self.conv1 = nn.Conv2d(dim, out_dim, 1)

    @property
    def receptive_field(self) -> int:
        k0 = self.conv0.kernel_size[0]
        kd, d = self.conv_spatial.kernel_size[0], self.conv_spatial.dilation[0]
        return k0 + (kd - 1) * d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.norm0(self.conv0(x)))
        x = self.act1(self.norm1(self.conv_spatial(x)))
        return self.conv1(x)


class LargeKernelAttention(LargeKernelConv):
    """LKA: ``x * conv1(dw_dilated(dw(x)))`` (shape preserving)."""

    def __init__(self, dim: int, **kw) -> None:
        kw.pop("out_dim", None)
        super().__init__(dim, dim, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * super().forward(x)
