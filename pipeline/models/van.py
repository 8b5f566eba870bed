"""Visual Attention Network (Guo et al. 2022, "Visual Attention Network", arXiv:2202.09741) and
seed 000's VAN variants.

timm has no VAN, so this is one generic :class:`VAN`: four stages of an overlapping patch embed
(strided conv + BN), blocks of ``x + ls * Attention(BN(x))`` and ``x + ls * Mlp(BN(x))``, and a
LayerNorm. The attention is 1x1 -> GELU -> spatial gating unit -> 1x1 with its own shortcut; the
MLP is 1x1 -> 3x3 depth-wise conv -> GELU -> 1x1.

Seed 000's variants are argument sets (:data:`VAN_VARIANTS`), not copies:

* ``lk``: LKA with a 7x7 dw conv and an 11x11 dw conv of dilation 5 (seed's "31x31" LKA).
* ``mb``: three LKAs whose first dw conv is 5/7/9, concatenated (3*dim channels); the attention's
  second 1x1 projection takes the 3*dim channels back to dim (no extra layer).
* ``act``: an activation after each of the first two LKA convs (``lka_act``, default ReLU as in
  the seed's code; the seed's ablation also tries GELU/CELU/ELU).
* ``bn``: BN after each of the three LKA convs.
* ``replk``: a RepLK block (Ding et al. 2022, 31x31 dw conv with a 5x5 re-parameterisable branch)
  in place of LKA; :meth:`VAN.reparameterize` fuses it for inference.
* ``res2net``: the MLP's dw conv is replaced by a Res2Net bottleneck (Gao et al. 2019) that
  widens hidden -> 4*hidden channels, so the MLP's ``fc2`` takes 4*hidden inputs.
* ``res2net_replk``: both of the above.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.layers import ConvNormAct, DropPath, LayerNorm2d, LayerScale2d, get_act_layer, trunc_normal_

from common.errors import PipelineError
from pipeline.models.layers.lka import LargeKernelAttention, MultiScaleLKA
from pipeline.models.layers.replk import RepLKBlock, reparameterize_modules
from pipeline.models.registry import register_builder

VAN_ARCHS: dict[str, dict[str, Any]] = {
    "b0": dict(embed_dims=(32, 64, 160, 256), depths=(3, 3, 5, 2), mlp_ratios=(8, 8, 4, 4)),
    "b1": dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 4, 2), mlp_ratios=(8, 8, 4, 4)),
}

VAN_VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "lk": dict(lka_kernel_size=7, lka_dilated_kernel_size=11, lka_dilation=5),
    "mb": dict(attn_type="mb", mb_kernel_sizes=(5, 7, 9)),
    "act": dict(lka_act="relu"),
    "bn": dict(lka_norm=True),
    "replk": dict(attn_type="replk"),
    "res2net": dict(mlp_mixer="res2net"),
    "res2net_replk": dict(attn_type="replk", mlp_mixer="res2net"),
}

ATTN_TYPES = ("lka", "mb", "replk")
MLP_MIXERS = ("dw", "res2net")


class Res2NetBottleneck(nn.Module):
    """Res2Net bottleneck (Gao et al. 2019, "Res2Net: A New Multi-scale Backbone Architecture").

    1x1 conv to ``scale`` groups of ``width`` channels; group i > 0 goes through a 3x3 conv after
    adding the previous group's output (hierarchical residual, so later groups see larger
    receptive fields); the last group passes through; concat -> 1x1 conv to ``4 * planes``; plus a
    1x1 conv-BN projection of the input (the seed's ``downsample``, since in != 4 * planes).
    ``base_width=16`` (width = planes / 4, so the 4 groups split the hidden channels exactly)
    reproduces seed 000's parameter count; Res2Net-50's own setting is 26.
    """

    expansion = 4

    def __init__(self, in_dim: int, planes: int | None = None, base_width: int = 16, scale: int = 4) -> None:
        super().__init__()
        if scale < 2:
            raise ValueError(f"Res2Net scale must be >= 2, got {scale}")
        planes = planes or in_dim
        self.width = int(math.floor(planes * base_width / 64.0))
        self.out_channels = planes * self.expansion
        self.conv1 = ConvNormAct(in_dim, self.width * scale, 1, act_layer=nn.ReLU)
        self.convs = nn.ModuleList(ConvNormAct(self.width, self.width, 3, act_layer=nn.ReLU) for _ in range(scale - 1))
        self.conv3 = ConvNormAct(self.width * scale, self.out_channels, 1, apply_act=False)
        self.shortcut = (
            ConvNormAct(in_dim, self.out_channels, 1, apply_act=False) if in_dim != self.out_channels else nn.Identity()
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        splits = torch.split(self.conv1(x), self.width, dim=1)
        outs: list[torch.Tensor] = []
        sp = splits[0]
        for i, conv in enumerate(self.convs):
            sp = conv(splits[i] if i == 0 else sp + splits[i])
            outs.append(sp)
        outs.append(splits[-1])
        return self.act(self.conv3(torch.cat(outs, dim=1)) + self.shortcut(x))


class VanMlp(nn.Module):
    """1x1 -> mixer (3x3 dw conv, or a Res2Net bottleneck) -> GELU -> 1x1."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        mixer: str = "dw",
        drop: float = 0.0,
        res2net_kw: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        if mixer == "dw":
            self.dwconv: nn.Module = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
            mixed = hidden
        else:  # seed 000: fc2 reads the bottleneck's 4 * hidden channels
            self.dwconv = Res2NetBottleneck(hidden, **(res2net_kw or {}))
            mixed = self.dwconv.out_channels
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(mixed, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x))))
        return self.drop(self.fc2(x))


class VanAttention(nn.Module):
    """1x1 -> GELU -> spatial gating unit (LKA / multi-scale LKA / RepLK block) -> 1x1, + x."""

    def __init__(self, dim: int, gating: nn.Module) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = gating
        self.proj_2 = nn.Conv2d(gating.out_channels, dim, 1)  # also folds VAN-MB's 3*dim back to dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x))))


class VanBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        mlp_ratio: float,
        gating: nn.Module,
        mlp_mixer: str = "dw",
        drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init: float = 1e-2,
        res2net_kw: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = VanAttention(dim, gating)
        self.ls1 = LayerScale2d(dim, layer_scale_init)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = VanMlp(dim, int(dim * mlp_ratio), mlp_mixer, drop, res2net_kw)
        self.ls2 = LayerScale2d(dim, layer_scale_init)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class OverlapPatchEmbed(nn.Sequential):
    """Strided conv with overlapping windows (padding k // 2) + BN."""

    def __init__(self, in_chans: int, dim: int, kernel_size: int, stride: int) -> None:
        super().__init__(nn.Conv2d(in_chans, dim, kernel_size, stride, kernel_size // 2), nn.BatchNorm2d(dim))


class VAN(nn.Module):
    """Generic VAN; every seed 000 variant is a choice of ``attn_type``/``lka_*``/``mlp_mixer``.

    ``small_input=True`` (CIFAR 32x32) makes the first patch embed a 3x3 stride-1 conv instead of
    7x7 stride 4, so the four stages run at 32/16/8/4 rather than 8/4/2/1 pixels.
    """

    def __init__(
        self,
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (3, 4, 6, 3),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        attn_type: str = "lka",
        lka_kernel_size: int = 5,
        lka_dilated_kernel_size: int = 7,
        lka_dilation: int = 3,
        lka_act: str | None = None,
        lka_norm: bool = False,
        mb_kernel_sizes: Sequence[int] = (5, 7, 9),
        replk_kernel_size: int = 31,
        replk_small_kernel: int | None = 5,
        mlp_mixer: str = "dw",
        res2net_base_width: int = 16,
        res2net_scale: int = 4,
    ) -> None:
        super().__init__()
        if attn_type not in ATTN_TYPES:
            raise PipelineError(f"VAN attn_type must be one of {', '.join(ATTN_TYPES)}; got '{attn_type}'")
        if mlp_mixer not in MLP_MIXERS:
            raise PipelineError(f"VAN mlp_mixer must be one of {', '.join(MLP_MIXERS)}; got '{mlp_mixer}'")
        try:
            act_layer = get_act_layer(lka_act)
        except KeyError:
            raise PipelineError(f"VAN lka_act: unknown activation '{lka_act}' (e.g. relu, gelu, celu, elu)") from None
        lka_kw = dict(
            dilated_kernel_size=lka_dilated_kernel_size,
            dilation=lka_dilation,
            act_layer=act_layer,
            norm_layer=nn.BatchNorm2d if lka_norm else None,
            norm_after_pw=lka_norm,
        )

        res2net_kw = dict(base_width=res2net_base_width, scale=res2net_scale)

        def gating(dim: int) -> nn.Module:
            if attn_type == "mb":
                return MultiScaleLKA(dim, mb_kernel_sizes, **lka_kw)
            if attn_type == "replk":
                return RepLKBlock(dim, replk_kernel_size, replk_small_kernel)
            return LargeKernelAttention(dim, kernel_size=lka_kernel_size, **lka_kw)

        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages: list[nn.Module] = []
        prev, k = in_chans, 0
        for i, (dim, depth, ratio) in enumerate(zip(embed_dims, depths, mlp_ratios, strict=True)):
            if i == 0:
                embed = OverlapPatchEmbed(prev, dim, 3, 1) if small_input else OverlapPatchEmbed(prev, dim, 7, 4)
            else:
                embed = OverlapPatchEmbed(prev, dim, 3, 2)
            blocks = [
                VanBlock(dim, ratio, gating(dim), mlp_mixer, drop_rate, dpr[k + j], res2net_kw=res2net_kw)
                for j in range(depth)
            ]
            stages.append(nn.Sequential(embed, *blocks, LayerNorm2d(dim, eps=1e-6)))
            prev, k = dim, k + depth
        self.stages = nn.Sequential(*stages)
        self.num_features = embed_dims[-1]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes)
        self.apply(_init_weights)

    def reparameterize(self) -> nn.Module:
        """Fuse every RepLK large-kernel conv (VAN-RepLK) for inference; other variants unchanged."""
        return reparameterize_modules(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(m: nn.Module) -> None:
    """VAN's init: truncated-normal linear layers, fan-out normal convs, zero biases."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def create_van(arch: str, variant: str = "base", num_classes: int = 1000, small_input: bool = False, **kw) -> VAN:
    """VAN-``arch`` (b0/b1) with seed 000's ``variant`` arguments; ``kw`` overrides either."""
    if variant not in VAN_VARIANTS:
        raise PipelineError(f"unknown VAN variant '{variant}' (valid: {', '.join(VAN_VARIANTS)})")
    return VAN(**{**VAN_ARCHS[arch], **VAN_VARIANTS[variant], **kw}, num_classes=num_classes, small_input=small_input)


# (registry name, arch, variant): VAN-B0/B1 and the rows of seed 000's table 4.
_REGISTERED = [(f"van_{a}", a, "base") for a in VAN_ARCHS] + [
    (f"van_{v}_{a}", a, v)
    for a, variants in (
        ("b0", ("lk", "mb", "act", "bn", "replk", "res2net", "res2net_replk")),
        ("b1", ("lk", "mb", "act", "bn", "replk")),
    )
    for v in variants
]


def _register(name: str, arch: str, default_variant: str) -> None:
    def builder(
        num_classes: int = 1000,
        pretrained: bool = False,
        small_input: bool = False,
        variant: str = default_variant,
        **kw,
    ) -> nn.Module:
        return create_van(arch, variant, num_classes=num_classes, small_input=small_input, **kw)

    register_builder(
        name,
        builder,
        f"VAN-{arch.upper()} ({default_variant} variant of seed 000).",
        family="van",
        min_size=32,
        min_size_small=8,
        paper="Guo et al. 2022, Visual Attention Network" + ("" if default_variant == "base" else "; seed 000 variant"),
    )


for _name, _arch, _variant in _REGISTERED:
    _register(_name, _arch, _variant)
