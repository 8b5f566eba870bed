"""Decomposed large-kernel convolution and attention (Guo et al. 2022, "Visual Attention Network").

A K x K depth-wise convolution is approximated by a (2d-1) x (2d-1) depth-wise conv, a
ceil(K/d) x ceil(K/d) depth-wise conv with dilation d and a 1x1 conv. The paper calls the VAN
default (5x5, then 7x7 with dilation 3) a 21x21 approximation; the receptive field of the two
stacked convs is actually 5 + (7 - 1) * 3 = 23 pixels (see :attr:`LargeKernelConv.receptive_field`).
Seed 000's VAN-LK (7x7, then 11x11 with dilation 5, sold as "31x31") sees 7 + 10 * 5 = 57 pixels.

``LargeKernelConv`` is the decomposed convolution itself (also used by TripletLKN in place of the
7x7 conv); ``LargeKernelAttention`` (LKA) multiplies its output with the input;
``MultiScaleLKA`` is seed 000's VAN-MB (three LKAs side by side, concatenated).
Optional ``act_layer``/``norm_layer`` after the first two convs serve seed 000's VAN-Act/VAN-BN;
``norm_after_pw`` adds the third BN (after the 1x1) that VAN-BN also has.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn


class LargeKernelConv(nn.Module):
    """dw KxK -> dw dilated -> 1x1, with optional norm/act after the two depth-wise convs."""

    def __init__(
        self,
        dim: int,
        out_dim: int | None = None,
        kernel_size: int = 5,
        dilated_kernel_size: int = 7,
        dilation: int = 3,
        act_layer: type[nn.Module] | None = None,
        norm_layer: type[nn.Module] | None = None,
        norm_after_pw: bool = False,
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
        if norm_after_pw and norm_layer is None:
            raise ValueError("norm_after_pw=True needs a norm_layer")
        self.norm2 = norm_layer(out_dim) if norm_after_pw else nn.Identity()

    @property
    def receptive_field(self) -> int:
        """Side of the input window one output pixel sees (stacked dw + dilated dw)."""
        k0 = self.conv0.kernel_size[0]
        kd, d = self.conv_spatial.kernel_size[0], self.conv_spatial.dilation[0]
        return k0 + (kd - 1) * d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.norm0(self.conv0(x)))
        x = self.act1(self.norm1(self.conv_spatial(x)))
        return self.norm2(self.conv1(x))


class LargeKernelAttention(LargeKernelConv):
    """LKA: ``x * conv1(dw_dilated(dw(x)))`` (shape preserving)."""

    def __init__(self, dim: int, **kw) -> None:
        kw.pop("out_dim", None)
        super().__init__(dim, dim, **kw)
        self.out_channels = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * super().forward(x)


class MultiScaleLKA(nn.Module):
    """Seed 000's VAN-MB: LKAs whose first dw conv is 5/7/9 wide, outputs concatenated.

    The output has ``len(kernel_sizes) * dim`` channels (``out_channels``); the caller must bring
    it back to ``dim`` (VAN widens its following 1x1 projection, see ``pipeline.models.van``).
    """

    def __init__(self, dim: int, kernel_sizes: Sequence[int] = (5, 7, 9), **kw) -> None:
        super().__init__()
        self.branches = nn.ModuleList(LargeKernelAttention(dim, kernel_size=k, **kw) for k in kernel_sizes)
        self.out_channels = dim * len(self.branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)
