"""Triplet attention (Misra et al. 2021, "Rotate to Attend: Convolutional Triplet Attention Module")
and seed 000's improvements of it.

Three branches each squeeze one axis of the (C, H, W) tensor and gate the other two:

* C-W branch: rotate so that H is the "channel" axis, squeeze H, gate the (C, W) plane;
* C-H branch: rotate so that W is the "channel" axis, squeeze W, gate the (C, H) plane;
* spatial branch: squeeze C, gate the (H, W) plane (CBAM's spatial attention).

Each branch is ``squeeze -> 7x7 conv (2 -> 1) -> [act] -> BN -> gate`` and multiplies its input;
the three results are averaged. The paper's squeeze is the Z-pool (max and mean, concatenated),
there is no activation between conv and BN, and the gate is a sigmoid.

Seed 000 ("三、(一) Triplet Attention") varies:

* ``zpool``: ``avg_max`` (paper), ``avg_max_median``, ``l1_max``, ``l2_max`` (norms over the
  squeezed axis);
* ``act`` between the 7x7 conv and the BN: ``none`` (paper), relu, sigmoid, gelu, celu, elu,
  leaky_relu;
* ``gate``: sigmoid (paper), tanh, softmax (over the positions of the 2-D attention map: a
  softmax over the single map channel would be the constant 1);
* TripletCA (``spatial="coord"``): the spatial (H, W) branch is replaced by coordinate attention
  (Hou et al. 2021) on the un-rotated input;
* TripletLKN (``conv="lkn", squeeze="conv"``): the 7x7 conv becomes the decomposed large kernel of
  VAN (:class:`~pipeline.models.layers.lka.LargeKernelConv`), and the spatial branch squeezes C
  with a learned 1x1 conv (C -> 2) instead of the Z-pool. The rotated branches keep the Z-pool:
  their squeezed axis is H or W, whose length depends on the input resolution, so a learned
  1x1 over it would tie the module to one image size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from pipeline.models.layers.lka import LargeKernelConv

ZPOOLS: dict[str, tuple[str, ...]] = {
    "avg_max": ("max", "avg"),  # the paper's order: max first
    "avg_max_median": ("avg", "max", "median"),
    "l1_max": ("l1", "max"),
    "l2_max": ("l2", "max"),
}

_STATS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "avg": lambda x: x.mean(1, keepdim=True),
    "max": lambda x: x.amax(1, keepdim=True),
    "median": lambda x: x.median(1, keepdim=True).values,
    "l1": lambda x: torch.linalg.vector_norm(x, 1, dim=1, keepdim=True),
    "l2": lambda x: torch.linalg.vector_norm(x, 2, dim=1, keepdim=True),
}

ACTS: dict[str, Callable[[], nn.Module] | None] = {
    "none": None,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "celu": nn.CELU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}

GATES = ("sigmoid", "tanh", "softmax")
CONVS = ("7x7", "lkn")
SQUEEZES = ("zpool", "conv")
SPATIALS = ("gate", "coord", "none")


def _check(name: str, value: str, valid) -> None:
    if value not in valid:
        raise ValueError(f"triplet attention: unknown {name} '{value}' (valid: {', '.join(valid)})")


class ZPool(nn.Module):
    """Concatenate per-position statistics over dim 1 (the paper's Z-pool is max and mean)."""

    def __init__(self, mode: str = "avg_max") -> None:
        super().__init__()
        _check("zpool", mode, ZPOOLS)
        self.mode = mode
        self.stats = ZPOOLS[mode]

    @property
    def out_channels(self) -> int:
        return len(self.stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([_STATS[s](x) for s in self.stats], dim=1)

    def extra_repr(self) -> str:
        return f"mode={self.mode}"


class Gate(nn.Module):
    """Element-wise gate of an attention map; ``softmax`` normalises over the map's positions."""

    def __init__(self, kind: str = "sigmoid") -> None:
        super().__init__()
        _check("gate", kind, GATES)
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "sigmoid":
            return torch.sigmoid(x)
        if self.kind == "tanh":
            return torch.tanh(x)
        return torch.softmax(x.flatten(2), dim=-1).view_as(x)

    def extra_repr(self) -> str:
        return self.kind


class AttentionGate(nn.Module):
    """One triplet branch: ``x * gate(BN(act(conv(squeeze(x)))))`` on a (N, C', A, B) tensor.

    ``in_channels`` is needed only by the learned (1x1 conv) squeeze.
    """

    def __init__(
        self,
        kernel_size: int = 7,
        zpool: str = "avg_max",
        act: str = "none",
        gate: str = "sigmoid",
        conv: str = "7x7",
        squeeze: str = "zpool",
        in_channels: int | None = None,
    ) -> None:
        super().__init__()
        _check("act", act, ACTS)
        _check("conv", conv, CONVS)
        _check("squeeze", squeeze, SQUEEZES)
        if squeeze == "conv":
            if in_channels is None:
                raise ValueError("a learned (1x1 conv) squeeze needs in_channels")
            self.squeeze: nn.Module = nn.Conv2d(in_channels, 2, 1, bias=False)
            squeezed = 2
        else:
            self.squeeze = ZPool(zpool)
            squeezed = self.squeeze.out_channels
        if conv == "lkn":
            self.conv: nn.Module = LargeKernelConv(squeezed, 1)
        else:
            self.conv = nn.Conv2d(squeezed, 1, kernel_size, padding=kernel_size // 2, bias=False)
        act_layer = ACTS[act]
        self.act = act_layer() if act_layer is not None else nn.Identity()
        # the reference code's BasicConv uses momentum 0.01
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)
        self.gate = Gate(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.bn(self.act(self.conv(self.squeeze(x)))))


class TripletAttention(nn.Module):
    """Triplet attention and seed 000's variants (module docstring); shape preserving.

    Args:
        channels: input channels (used by ``spatial="coord"`` and ``squeeze="conv"``).
        kernel_size: side of the branch convolution (7 in the paper; unused with ``conv="lkn"``).
        zpool: squeeze statistics, one of :data:`ZPOOLS`.
        act: activation between the branch conv and its BN, one of :data:`ACTS`.
        gate: gating function, one of :data:`GATES`.
        spatial: the (H, W) branch: ``gate`` (paper), ``coord`` (TripletCA) or ``none`` (the paper's
            ``no_spatial`` ablation, two branches averaged).
        conv: ``7x7`` (paper) or ``lkn`` (TripletLKN's decomposed large kernel).
        squeeze: ``zpool`` or ``conv`` (TripletLKN: learned 1x1 squeeze of C in the spatial branch).
        coord_reduction: reduction of the coordinate-attention transform (``spatial="coord"``).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int | None = None,
        zpool: str = "avg_max",
        act: str = "none",
        gate: str = "sigmoid",
        spatial: str = "gate",
        conv: str = "7x7",
        squeeze: str = "zpool",
        coord_reduction: int | None = None,
    ) -> None:
        super().__init__()
        _check("spatial", spatial, SPATIALS)
        # options that a configuration would not use are refused rather than silently ignored
        if squeeze == "conv" and spatial != "gate":
            raise ValueError("triplet attention: squeeze='conv' acts on the spatial gate branch, absent here")
        if coord_reduction is not None and spatial != "coord":
            raise ValueError("triplet attention: coord_reduction needs spatial='coord'")
        if kernel_size is not None and conv == "lkn":
            raise ValueError("triplet attention: kernel_size sets the 7x7 conv, which conv='lkn' replaces")
        kernel_size = kernel_size or 7
        coord_reduction = coord_reduction or 32
        opts = dict(kernel_size=kernel_size, zpool=zpool, act=act, gate=gate, conv=conv)
        self.cw = AttentionGate(**opts)  # squeezes H: gates the (C, W) plane
        self.hc = AttentionGate(**opts)  # squeezes W: gates the (H, C) plane
        self.spatial_kind = spatial
        if spatial == "gate":
            self.hw: nn.Module | None = AttentionGate(**opts, squeeze=squeeze, in_channels=channels)
        elif spatial == "coord":
            from pipeline.models.layers.coord import CoordinateAttention

            self.hw = CoordinateAttention(channels, reduction=coord_reduction)
        else:
            self.hw = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.cw(x.transpose(1, 2)).transpose(1, 2)
        out = out + self.hc(x.transpose(1, 3)).transpose(1, 3)
        if self.hw is None:
            return out / 2
        return (out + self.hw(x)) / 3
