"""Re-parameterisable large-kernel conv and the RepLK block (Ding et al. 2022, "Scaling Up Your
Kernels to 31x31: Revisiting Large Kernel Design in CNNs").

During training a large depth-wise KxK conv runs beside a small (5x5) depth-wise conv, each
followed by BN; the small branch eases optimisation. For inference :meth:`reparameterize` folds
both BNs into their convs, zero-pads the small kernel to KxK and adds it to the large one, giving
one KxK conv with bias and the same outputs (in eval mode).

The conv itself is timm's implementation (``timm.models.fastvit.ReparamLargeKernelConv``, written
after the RepLKNet reference code); this module only makes it depth-wise by default, lets
``small_kernel=None`` work, and makes ``reparameterize`` idempotent. ``RepLKBlock`` is used both
by RepLKNet and by seed 000's VAN-RepLK.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import ConvNormAct, DropPath
from timm.models.fastvit import ReparamLargeKernelConv as _TimmReparamLargeKernelConv


class ReparamLargeKernelConv(_TimmReparamLargeKernelConv):
    """Depth-wise ``kernel_size`` conv + BN, plus a parallel ``small_kernel`` conv + BN (or none)."""

    def __init__(self, dim: int, kernel_size: int = 31, small_kernel: int | None = 5, stride: int = 1) -> None:
        if small_kernel is not None and (small_kernel > kernel_size or small_kernel % 2 == 0):
            raise ValueError(f"small_kernel must be odd and <= kernel_size ({kernel_size}), got {small_kernel}")
        super().__init__(dim, dim, kernel_size, stride, group_size=1, small_kernel=small_kernel)
        if small_kernel is None:
            self.small_conv = None  # timm leaves the attribute unset; forward() reads it

    @property
    def fused(self) -> bool:
        return self.reparam_conv is not None

    def get_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.small_conv is None:
            return self._fuse_bn(self.large_conv.conv, self.large_conv.bn)
        return super().get_kernel_bias()

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BNs and the small branch into one large conv with bias (no-op when fused)."""
        if self.fused:
            return
        super().reparameterize()


class RepLKBlock(nn.Module):
    """BN -> 1x1 conv-BN-ReLU -> large dw conv (re-parameterisable) -> ReLU -> 1x1 conv-BN, + x."""

    def __init__(
        self,
        dim: int,
        kernel_size: int = 31,
        small_kernel: int | None = 5,
        dw_ratio: float = 1.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        dw_dim = int(dim * dw_ratio)
        self.prelkb_bn = nn.BatchNorm2d(dim)
        self.pw1 = ConvNormAct(dim, dw_dim, 1, act_layer=nn.ReLU)
        self.large_kernel = ReparamLargeKernelConv(dw_dim, kernel_size, small_kernel)
        self.lk_nonlinear = nn.ReLU()
        self.pw2 = ConvNormAct(dw_dim, dim, 1, apply_act=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.out_channels = dim

    def reparameterize(self) -> None:
        self.large_kernel.reparameterize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pw1(self.prelkb_bn(x))
        out = self.pw2(self.lk_nonlinear(self.large_kernel(out)))
        return x + self.drop_path(out)


def reparameterize_modules(model: nn.Module) -> nn.Module:
    """Call ``reparameterize()`` on every re-parameterisable large-kernel conv in ``model`` (in place)."""
    for m in model.modules():
        if isinstance(m, ReparamLargeKernelConv):
            m.reparameterize()
    return model
