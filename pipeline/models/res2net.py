"""Res2Net-50 26w x 4s (Gao et al. 2019, "Res2Net: A New Multi-scale Backbone Architecture") and
seed 000's variants, as configurations of one generic Res2Net bottleneck.

The base network is timm's (``res2net50_26w_4s``: ImageNet stem, stride on the 3x3 convs as in the
reference code). :class:`Res2NetBottleneck` adds to timm's ``Bottle2neck``:

* ``block_act``: the activation of the Res2Net module (seed letters c/e/g/l = CELU, ELU, GELU,
  LeakyReLU); the stem keeps its ReLU, as in the seed's code;
* ``inner_attn``: an attention inside the multi-scale sub-branches (seed "S1"/"T1": SE/triplet),
  one module per block applied to the output of every 3x3 sub-branch conv before it feeds the next
  split (the seed's parameter counts, +5k for T1 = 16 blocks x 300, imply one module per block);
* the post-block attention after the last 1x1 + BN (seed "S2"/"T2") is timm's ``attn_layer``.

Network-level options: ``deep_stem`` (seed "C", ResNet-C of He et al. 2019 "Bag of Tricks": three
3x3 convs instead of the 7x7, 64 channels each as in the seed's code) and ``avg_down`` (seed "D",
ResNet-D: a 2x2 average pool before a stride-1 1x1 conv on the shortcut; the stride already sits on
the 3x3 convs in Res2Net). Seed names map to registry names in :data:`RES2NET_VARIANTS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from timm.layers import get_act_layer
from timm.models.res2net import Bottle2neck

from pipeline.models.layers import attn_layer, create_attn
from pipeline.models.registry import register_builder
from pipeline.models.standard import small_input_stem, timm_model
from pipeline.models.utils import freeze_backbone as _freeze_backbone

ACTS = ("relu", "celu", "elu", "gelu", "leaky_relu")


class Res2NetBottleneck(Bottle2neck):
    """timm's Res2Net bottleneck with a configurable module activation and sub-branch attention."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        block_act: str | None = None,
        inner_attn: str | None = None,
        inner_attn_kw: dict[str, Any] | None = None,
        act_layer: type[nn.Module] = nn.ReLU,
        **kw: Any,
    ) -> None:
        if block_act is not None and block_act not in ACTS:
            raise ValueError(f"Res2Net: unknown block_act '{block_act}' (valid: {', '.join(ACTS)})")
        act = get_act_layer(block_act) if block_act else act_layer
        super().__init__(inplanes, planes, stride, downsample, act_layer=act, **kw)
        self.inner_attn = create_attn(inner_attn, self.width, **(inner_attn_kw or {}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        out = self.relu(self.bn1(self.conv1(x)))
        spx = torch.split(out, self.width, 1)
        spo = []
        sp = spx[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            sp = spx[i] if i == 0 or self.is_first else sp + spx[i]
            sp = self.relu(bn(conv(sp)))
            if self.inner_attn is not None:
                sp = self.inner_attn(sp)
            spo.append(sp)
        if self.scale > 1:
            spo.append(self.pool(spx[-1]) if self.pool is not None else spx[-1])
        out = self.bn3(self.conv3(self.drop_block(torch.cat(spo, 1))))
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        if self.downsample is not None:
            shortcut = self.downsample(x)
        return self.relu(out + shortcut)


def deep_stem(model: nn.Module, width: int = 64) -> nn.Module:
    """Replace a timm ResNet's 7x7/2 stem conv by three 3x3 convs (first with stride 2).

    The seed's ResNet-C stem keeps ``width`` channels throughout (timm's ``stem_type='deep'`` uses
    32-32-64); the last conv outputs the existing stem width, read from ``bn1``.
    """
    in_chs, out_chs = model.conv1.in_channels, model.bn1.num_features
    model.conv1 = nn.Sequential(
        nn.Conv2d(in_chs, width, 3, 2, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, out_chs, 3, 1, 1, bias=False),
    )
    for m in model.conv1.modules():
        if isinstance(m, nn.Conv2d):  # timm's ResNet init
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


def res2net(
    *,
    num_classes: int = 1000,
    pretrained: bool = False,
    small_input: bool = False,
    base_width: int = 26,
    scale: int = 4,
    block_act: str | None = None,
    inner_attn: str | None = None,
    inner_attn_kw: dict[str, Any] | None = None,
    attn: str | None = None,
    attn_kw: dict[str, Any] | None = None,
    deep_stem_width: int | None = None,
    avg_down: bool = False,
    freeze_backbone: bool = False,
    **kw: Any,
) -> nn.Module:
    """Res2Net-50 (``base_width`` w x ``scale`` s) with the options of the module docstring.

    ``deep_stem_width=None`` keeps the 7x7 stem; an int gives seed 000's "C" stem of that width.
    """
    block_args = dict(
        scale=scale,
        block_act=block_act,
        inner_attn=inner_attn,
        inner_attn_kw=inner_attn_kw,
        attn_layer=attn_layer(attn, **(attn_kw or {})),
    )
    if inner_attn:  # fail at build time with the factory's message (e.g. 'sk' has no slot here)
        create_attn(inner_attn, max(1, math.floor(64 * base_width / 64)), **(inner_attn_kw or {}))
    model = timm_model(
        "res2net50_26w_4s",
        num_classes,
        pretrained,
        block=Res2NetBottleneck,
        base_width=base_width,
        avg_down=avg_down,
        block_args=block_args,
        **kw,
    )
    if deep_stem_width:
        model = deep_stem(model, deep_stem_width)
    if small_input:
        model = small_input_stem(model)
    return _freeze_backbone(model) if freeze_backbone else model


@dataclass(frozen=True)
class Res2NetVariant:
    seed_name: str  # the name in seed 000's tables 8-11
    block_act: str | None = None
    inner_attn: str | None = None
    attn: str | None = None
    deep_stem: bool = False
    avg_down: bool = False


_ACT = {"c": "celu", "e": "elu", "g": "gelu", "l": "leaky_relu"}
_ATT = {"S": "se", "T": "triplet"}

RES2NET_VARIANTS: dict[str, Res2NetVariant] = {
    "res2net50_base": Res2NetVariant("Res2Net"),
    **{f"res2net50_{'lrelu' if a == 'leaky_relu' else a}": Res2NetVariant(f"Res2Net_{k}", a) for k, a in _ACT.items()},
    **{f"res2net50_{k.lower()}1": Res2NetVariant(f"Res2Net_{k}1", inner_attn=a) for k, a in _ATT.items()},
    **{f"res2net50_{k.lower()}2": Res2NetVariant(f"Res2Net_{k}2", attn=a) for k, a in _ATT.items()},
    **{
        f"res2net50_{i.lower()}{p.lower()}": Res2NetVariant(f"Res2Net_{i}{p}", inner_attn=_ATT[i], attn=_ATT[p])
        for i in _ATT
        for p in _ATT
    },
    "res2net50_deepstem": Res2NetVariant("Res2Net_C", deep_stem=True),
    "res2net50_avgdown": Res2NetVariant("Res2Net_D", avg_down=True),
    "res2net50_deepstem_avgdown": Res2NetVariant("Res2Net_CD", deep_stem=True, avg_down=True),
    "res2net50_celu_deepstem_avgdown": Res2NetVariant("Res2Net_cCD", "celu", deep_stem=True, avg_down=True),
    "res2net50_celu_deepstem_avgdown_t2": Res2NetVariant(
        "Res2Net_cCD_T2", "celu", attn="triplet", deep_stem=True, avg_down=True
    ),
    "res2net50_celu_deepstem_avgdown_st": Res2NetVariant(
        "Res2Net_cCD_ST", "celu", inner_attn="se", attn="triplet", deep_stem=True, avg_down=True
    ),
}

_PAPER = "Gao et al. 2019, Res2Net; seed 000 "


def _register(name: str, v: Res2NetVariant) -> None:
    def builder(num_classes: int = 1000, pretrained: bool = False, small_input: bool = False, **kw: Any) -> nn.Module:
        args = dict(block_act=v.block_act, inner_attn=v.inner_attn, attn=v.attn, avg_down=v.avg_down)
        args["deep_stem_width"] = 64 if v.deep_stem else None
        return res2net(num_classes=num_classes, pretrained=pretrained, small_input=small_input, **{**args, **kw})

    register_builder(
        name,
        builder,
        f"{_PAPER}{v.seed_name}.",
        family="res2net",
        min_size=32,
        min_size_small=8,
        paper=_PAPER + v.seed_name,
        tags=(f"seed000:{v.seed_name}",),
    )


for _name, _v in RES2NET_VARIANTS.items():
    _register(_name, _v)
