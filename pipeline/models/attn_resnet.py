"""ResNet-50 (He et al. 2016) with a plug-in attention in every bottleneck: seed 000's baselines.

Papers: SE (Hu et al. 2018), CBAM (Woo et al. 2018), ECA (Wang et al. 2020), GCNet (Cao et al.
2019), SKNet (Li et al. 2019), coordinate attention (Hou et al. 2021), triplet attention (Misra
et al. 2021) and seed 000's TripletCA / TripletLKN / Z-pool / activation / gate variants.

The network is timm's ResNet-50 (``Bottleneck``, stride on the 3x3, ImageNet stem); the attention
comes from :func:`pipeline.models.layers.create_attn` and sits where timm puts it: after the last
BN of the bottleneck, before the residual addition. GC blocks go in stages c3-c5 only, as in the
GCNet paper and the seed. SK is a replacement of the 3x3 conv (``conv3x3="sk"``), not a
post-block attention. Every registered name is one row of :data:`ATTN_RESNETS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn
from timm.models.resnet import Bottleneck

from pipeline.models.layers import attn_layer, create_attn
from pipeline.models.registry import register_builder
from pipeline.models.standard import small_input_stem, timm_model
from pipeline.models.utils import freeze_backbone as _freeze_backbone


class AttnBottleneck(Bottleneck):
    """timm's ResNet bottleneck whose 3x3 conv (+BN, act) can be a ``conv3x3`` plug-in (e.g. SK).

    The post-block attention is timm's own ``attn_layer`` argument.
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        conv3x3: str | None = None,
        conv3x3_kw: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(inplanes, planes, stride, downsample, **kw)
        if conv3x3:
            c = self.conv2
            if c.groups != 1 or c.dilation[0] != 1:
                raise ValueError(f"conv3x3='{conv3x3}' supports plain (ungrouped, undilated) 3x3 convs only")
            self.conv2 = create_attn(
                conv3x3,
                c.in_channels,
                slot="conv3x3",
                out_channels=c.out_channels,
                stride=c.stride[0],
                **(conv3x3_kw or {}),
            )
            self.bn2 = nn.Identity()  # the plug-in has its own norm and activation per path
            self.act2 = nn.Identity()


def attn_resnet(
    arch: str = "resnet50",
    *,
    num_classes: int = 1000,
    pretrained: bool = False,
    small_input: bool = False,
    attn: str | None = None,
    attn_kw: dict[str, Any] | None = None,
    attn_stages: tuple[int, ...] = (1, 2, 3, 4),
    conv3x3: str | None = None,
    conv3x3_kw: dict[str, Any] | None = None,
    freeze_backbone: bool = False,
    **kw: Any,
) -> nn.Module:
    """timm ResNet ``arch`` with attention ``attn`` after every bottleneck of ``attn_stages``
    (1 = c2 ... 4 = c5) and optionally a ``conv3x3`` replacement of every 3x3 conv."""
    bad = sorted(set(attn_stages) - {1, 2, 3, 4})
    if bad:
        raise ValueError(f"attn_stages must be within 1..4 (c2..c5), got {bad}")
    if not attn and attn_stages != (1, 2, 3, 4):
        raise ValueError("attn_stages given but no attention is selected")
    block_args: dict[str, Any] = dict(attn_layer=attn_layer(attn, **(attn_kw or {})))
    if conv3x3:
        block_args.update(conv3x3=conv3x3, conv3x3_kw=conv3x3_kw)
    elif conv3x3_kw:
        raise ValueError("conv3x3_kw given but no conv3x3 replacement is selected")
    model = timm_model(arch, num_classes, pretrained, block=AttnBottleneck, block_args=block_args, **kw)
    for i in range(1, 5):
        if i not in attn_stages:
            for block in getattr(model, f"layer{i}"):
                block.se = None  # timm's name for the post-block attention slot
    if small_input:
        model = small_input_stem(model)
    return _freeze_backbone(model) if freeze_backbone else model


@dataclass(frozen=True)
class AttnResNetSpec:
    paper: str
    attn: str | None = None
    attn_kw: dict[str, Any] = field(default_factory=dict)
    attn_stages: tuple[int, ...] = (1, 2, 3, 4)
    conv3x3: str | None = None
    seed_name: str = ""  # the model's name in seed 000's tables


_TA = "Misra et al. 2021, Rotate to Attend: Convolutional Triplet Attention"
_S0 = "; seed 000 "


def _triplet(seed_name: str, **attn_kw: Any) -> AttnResNetSpec:
    return AttnResNetSpec(_TA + _S0 + seed_name, "triplet", attn_kw, seed_name=seed_name)


ATTN_RESNETS: dict[str, AttnResNetSpec] = {
    "resnet50_se": AttnResNetSpec("Hu et al. 2018, Squeeze-and-Excitation Networks", "se"),
    "resnet50_cbam": AttnResNetSpec("Woo et al. 2018, CBAM; seed 003 CBAM ResNet", "cbam"),
    "resnet50_eca": AttnResNetSpec("Wang et al. 2020, ECA-Net", "eca"),
    "resnet50_gc": AttnResNetSpec("Cao et al. 2019, GCNet (GC blocks in c3-c5)", "gc", attn_stages=(2, 3, 4)),
    "resnet50_sk": AttnResNetSpec("Li et al. 2019, Selective Kernel Networks", conv3x3="sk"),
    "resnet50_coord": AttnResNetSpec("Hou et al. 2021, Coordinate Attention", "coord", seed_name="CA"),
    "resnet50_triplet": _triplet("Triplet (z-pool avg,max)"),
    "resnet50_triplet_ca": AttnResNetSpec(_TA + _S0 + "TripletCA", "triplet_ca", seed_name="TripletCA"),
    "resnet50_triplet_lkn": AttnResNetSpec(_TA + _S0 + "TripletLKN", "triplet_lkn", seed_name="TripletLKN"),
    "resnet50_triplet_zmedian": _triplet("z-pool avg,max,median", zpool="avg_max_median"),
    "resnet50_triplet_zl1": _triplet("z-pool l1,max", zpool="l1_max"),
    "resnet50_triplet_zl2": _triplet("z-pool l2,max", zpool="l2_max"),
    **{
        f"resnet50_triplet_act_{a}": _triplet(f"7x7Conv-{a}", act=a) for a in ("sigmoid", "relu", "gelu", "celu", "elu")
    },
    **{f"resnet50_triplet_gate_{g}": _triplet(f"BatchNorm-{g}", gate=g) for g in ("tanh", "softmax")},
}


def _register(name: str, spec: AttnResNetSpec) -> None:
    def builder(num_classes: int = 1000, pretrained: bool = False, small_input: bool = False, **kw: Any) -> nn.Module:
        attn_kw = {**spec.attn_kw, **kw.pop("attn_kw", {})}
        return attn_resnet(
            "resnet50",
            num_classes=num_classes,
            pretrained=pretrained,
            small_input=small_input,
            attn=spec.attn,
            attn_kw=attn_kw,
            attn_stages=spec.attn_stages,
            conv3x3=spec.conv3x3,
            **kw,
        )

    tags = (f"seed000:{spec.seed_name}",) if spec.seed_name else ()
    register_builder(
        name,
        builder,
        f"ResNet-50 + {spec.attn or spec.conv3x3}: {spec.paper}.",
        family="attn_resnet",
        min_size=32,
        min_size_small=8,
        paper=spec.paper,
        tags=tags,
    )


for _name, _spec in ATTN_RESNETS.items():
    _register(_name, _spec)
