"""Attention plug-ins chosen by name through one factory (after timm's ``create_attn``).

``create_attn(name, channels, **options)`` builds a shape-preserving attention module placed after
a layer (``None``/``""`` = off, returns ``None``); an unknown name or option is an error that
lists the valid ones. Every module is also usable alone. Names, with their papers:

* ``se``: squeeze-and-excitation, Hu et al. 2018 (timm ``SEModule``, reduction C/16 rounded, no
  divisor-of-8 rounding: the paper's C/r);
* ``cbam``: Woo et al. 2018, CBAM (timm ``CbamModule``): channel gate from a shared MLP over
  global average and max pooling, then a 7x7 conv (+BN, as in the reference code) over the
  channel-wise average and max;
* ``eca``: Wang et al. 2020, ECA-Net (timm ``EcaModule``, 1-D conv over pooled channels, kernel
  size adaptive to C with gamma=2, b=1 unless ``kernel_size`` is given);
* ``gc``: Cao et al. 2019, GCNet global context block (timm ``GlobalContext``): softmax attention
  pooling, 1x1 -> LayerNorm -> ReLU -> 1x1 transform (ratio 1/16), fused by addition;
* ``coord``: Hou et al. 2021, coordinate attention (timm ``CoordAttn`` with the paper's
  ``mip = max(8, C // 32)``, biased 1x1 convs and h-swish);
* ``triplet``, ``triplet_ca``, ``triplet_lkn``: Misra et al. 2021 and seed 000's variants
  (:mod:`pipeline.models.layers.triplet`);
* ``sk``: Li et al. 2019, selective kernel convolution. It is not an attention placed after a
  layer but a replacement of a block's 3x3 convolution (it takes in/out channels and a stride),
  so it is built only with ``slot="conv3x3"``; asking for it anywhere else is a build-time error.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn
from timm.layers.cbam import CbamModule
from timm.layers.eca import EcaModule
from timm.layers.global_context import GlobalContext
from timm.layers.selective_kernel import SelectiveKernel
from timm.layers.squeeze_excite import SEModule

from common.errors import ConfigError
from pipeline.models.layers.coord import CoordinateAttention
from pipeline.models.layers.triplet import TripletAttention


class AttentionConfigError(ConfigError, ValueError):
    """Unknown attention name/option, or an attention asked for in a slot it cannot fill."""


# --- paper-default wrappers around timm's modules -------------------------------------------------


class SqueezeExcite(SEModule):
    """SE block (Hu et al. 2018): global average pool -> FC (C/r) -> ReLU -> FC -> sigmoid gate."""

    def __init__(self, channels: int, rd_ratio: float = 1 / 16) -> None:
        super().__init__(channels, rd_ratio=rd_ratio, rd_divisor=1)


class Cbam(CbamModule):
    """CBAM (Woo et al. 2018): channel attention (shared MLP on avg+max) then 7x7 spatial attention."""

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, kernel_size: int = 7) -> None:
        super().__init__(channels, rd_ratio=rd_ratio, spatial_kernel_size=kernel_size)


class EfficientChannelAttention(EcaModule):
    """ECA (Wang et al. 2020): 1-D conv over the pooled channel descriptor, no dimension reduction."""

    def __init__(self, channels: int, kernel_size: int | None = None) -> None:
        # timm derives the adaptive size from `channels`; an explicit size must bypass that
        super().__init__(None if kernel_size else channels, kernel_size=kernel_size or 3)


class GlobalContextBlock(GlobalContext):
    """GC block (Cao et al. 2019): attention pooling -> bottleneck transform with LN -> fusion.

    ``fusion`` is ``add`` (the paper's choice), ``scale`` (SE-like multiplication) or ``both``.
    The last transform conv starts at zero as in the reference code (the block starts as identity).
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, fusion: str = "add") -> None:
        if fusion not in ("add", "scale", "both"):
            raise AttentionConfigError(f"gc: unknown fusion '{fusion}' (valid: add, scale, both)")
        super().__init__(
            channels,
            fuse_add=fusion in ("add", "both"),
            fuse_scale=fusion in ("scale", "both"),
            rd_ratio=rd_ratio,
            init_last_zero=True,
        )


class SelectiveKernelConv(SelectiveKernel):
    """Selective kernel convolution (Li et al. 2019, SKNet): replaces a 3x3 conv (with its BN/ReLU).

    Split: a 3x3 and a "5x5" path (a 3x3 with dilation 2, as in the paper), each conv-BN-ReLU;
    fuse: sum, global average pool, FC to ``d = max(C / reduction, min_attn_channels)`` with BN and
    ReLU; select: a per-channel softmax over the paths weights their sum. Each path sees the whole
    input (timm's default splits it between the paths to save parameters; the paper does not).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        stride: int = 1,
        kernel_sizes: tuple[int, ...] = (3, 5),
        reduction: int = 16,
        min_attn_channels: int = 32,
    ) -> None:
        out = out_channels or in_channels
        super().__init__(
            in_channels,
            out,
            kernel_size=list(kernel_sizes),
            stride=stride,
            rd_channels=max(out // reduction, min_attn_channels),
            keep_3x3=True,
            split_input=False,
        )


# --- the factory ----------------------------------------------------------------------------------

SLOTS = ("post", "conv3x3")


@dataclass(frozen=True)
class AttnSpec:
    builder: Callable[..., nn.Module]
    slot: str = "post"  # "post": shape-preserving module after a layer; "conv3x3": replaces a 3x3 conv
    fixed: dict[str, Any] = field(default_factory=dict)  # arguments that define the variant
    unused: tuple[str, ...] = ()  # builder arguments this variant has no use for

    def options(self) -> list[str]:
        params = list(inspect.signature(self.builder).parameters.values())[1:]  # [0] is channels
        skip = set(self.fixed) | set(self.unused)
        return [p.name for p in params if p.name not in skip and p.kind is not p.VAR_KEYWORD]


ATTENTIONS: dict[str, AttnSpec] = {
    "se": AttnSpec(SqueezeExcite),
    "cbam": AttnSpec(Cbam),
    "eca": AttnSpec(EfficientChannelAttention),
    "gc": AttnSpec(GlobalContextBlock),
    "coord": AttnSpec(CoordinateAttention),
    "triplet": AttnSpec(
        TripletAttention, fixed=dict(spatial="gate", conv="7x7", squeeze="zpool"), unused=("coord_reduction",)
    ),
    "triplet_ca": AttnSpec(TripletAttention, fixed=dict(spatial="coord", conv="7x7", squeeze="zpool")),
    "triplet_lkn": AttnSpec(
        TripletAttention,
        fixed=dict(spatial="gate", conv="lkn", squeeze="conv"),
        unused=("kernel_size", "coord_reduction"),
    ),
    "sk": AttnSpec(SelectiveKernelConv, slot="conv3x3"),
}


def list_attn(slot: str | None = None) -> list[str]:
    """Names the factory knows (optionally only those for one slot)."""
    return sorted(n for n, s in ATTENTIONS.items() if slot is None or s.slot == slot)


def attn_options(name: str) -> list[str]:
    """The options ``name`` accepts (keyword arguments besides the channel count)."""
    return _spec(name, None).options()


def _spec(name: str, slot: str | None) -> AttnSpec:
    if name not in ATTENTIONS:
        raise AttentionConfigError(f"unknown attention '{name}' (valid: {', '.join(list_attn())})")
    spec = ATTENTIONS[name]
    if slot is not None and spec.slot != slot:
        if spec.slot == "conv3x3":
            raise AttentionConfigError(
                f"'{name}' replaces a block's 3x3 convolution; "
                f"it cannot be placed as an attention after a layer "
                f"(use it as the 3x3 conv of a block that has one, e.g. conv3x3='{name}' / resnet50_{name})"
            )
        raise AttentionConfigError(
            f"'{name}' is an attention placed after a layer, not a 3x3-conv replacement "
            f"(3x3 replacements: {', '.join(list_attn('conv3x3'))})"
        )
    return spec


def _check_options(name: str, spec: AttnSpec, kw: dict[str, Any]) -> None:
    unknown = sorted(set(kw) - set(spec.options()))
    if unknown:
        valid = ", ".join(spec.options()) or "none"
        raise AttentionConfigError(f"attention '{name}': unknown option(s) {', '.join(unknown)} (valid: {valid})")


def create_attn(name: str | None, channels: int, *, slot: str = "post", **kw: Any) -> nn.Module | None:
    """Build attention ``name`` for ``channels`` input channels; ``None``/``""`` -> ``None`` (off).

    ``slot="conv3x3"`` builds a 3x3-conv replacement (``sk``; ``kw`` then takes ``out_channels``
    and ``stride``). Option *values* are checked by the modules themselves.
    """
    if not name:
        if kw:
            raise AttentionConfigError(f"attention options {sorted(kw)} given but no attention is selected")
        return None
    if slot not in SLOTS:
        raise AttentionConfigError(f"unknown attention slot '{slot}' (valid: {', '.join(SLOTS)})")
    spec = _spec(name, slot)
    _check_options(name, spec, kw)
    try:
        return spec.builder(channels, **spec.fixed, **kw)
    except (ValueError, AssertionError) as e:
        if isinstance(e, AttentionConfigError):
            raise
        raise AttentionConfigError(f"attention '{name}': {e}") from e


class AttnLayer:
    """``layer(channels) -> module``: a pre-validated attention for blocks that take a layer class.

    timm's blocks call ``attn_layer(channels, device=..., dtype=...)``; name and option keys are
    checked here, at build time, so a typo fails before any block is constructed.
    """

    def __init__(self, name: str, slot: str = "post", **kw: Any) -> None:
        _check_options(name, _spec(name, slot), kw)
        self.name, self.slot, self.kw = name, slot, kw

    def __call__(self, channels: int, device: Any = None, dtype: Any = None, **kw: Any) -> nn.Module:
        module = create_attn(self.name, channels, slot=self.slot, **self.kw, **kw)
        return module.to(device=device, dtype=dtype) if device is not None or dtype is not None else module

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.kw.items())
        return f"AttnLayer({self.name!r}{opts})"


def attn_layer(name: str | None, slot: str = "post", **kw: Any) -> AttnLayer | None:
    """An :class:`AttnLayer` for ``name``, or ``None`` when ``name`` is ``None``/``""`` (off)."""
    if not name:
        if kw:
            raise AttentionConfigError(f"attention options {sorted(kw)} given but no attention is selected")
        return None
    return AttnLayer(name, slot, **kw)
