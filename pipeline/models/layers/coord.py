"""Coordinate attention (Hou et al. 2021, "Coordinate Attention for Efficient Mobile Network
Design"), used on its own (``coord``) and inside triplet attention's TripletCA variant."""

from __future__ import annotations

import torch.nn as nn
from timm.layers.coord_attn import CoordAttn


class CoordinateAttention(CoordAttn):
    """Coordinate attention (Hou et al. 2021): pool along H and along W, shared 1x1 transform
    (BN, h-swish), then one sigmoid gate per direction: ``x * a_h * a_w``."""

    def __init__(self, channels: int, reduction: int = 32, min_channels: int = 8) -> None:
        super().__init__(
            channels,
            rd_channels=max(min_channels, channels // reduction),
            bias=True,
            act_layer=nn.Hardswish,
        )
