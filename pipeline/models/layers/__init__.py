"""Layer plug-ins: attention modules chosen by name (:func:`create_attn`) and the large-kernel
convolutions of VAN/RepLKNet (``lka``, ``replk``)."""

from __future__ import annotations

from pipeline.models.layers.attention import (
    ATTENTIONS,
    AttentionConfigError,
    AttnLayer,
    Cbam,
    CoordinateAttention,
    EfficientChannelAttention,
    GlobalContextBlock,
    SelectiveKernelConv,
    SqueezeExcite,
    attn_layer,
    attn_options,
    create_attn,
    list_attn,
)
from pipeline.models.layers.triplet import AttentionGate, TripletAttention, ZPool

__all__ = [
    "ATTENTIONS",
    "AttentionConfigError",
    "AttentionGate",
    "AttnLayer",
    "Cbam",
    "CoordinateAttention",
    "EfficientChannelAttention",
    "GlobalContextBlock",
    "SelectiveKernelConv",
    "SqueezeExcite",
    "TripletAttention",
    "ZPool",
    "attn_layer",
    "attn_options",
    "create_attn",
    "list_attn",
]
