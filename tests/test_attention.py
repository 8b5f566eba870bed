"""Attention plug-ins: shapes, the factory's errors, and that every option changes the computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from pipeline.models.layers import (
    AttentionConfigError,
    CoordinateAttention,
    SelectiveKernelConv,
    TripletAttention,
    attn_layer,
    attn_options,
    create_attn,
    list_attn,
)
from pipeline.models.layers.lka import LargeKernelConv

C = 64
POST = list_attn("post")

# every option of every attention, with a non-default value (the test below checks the coverage)
OPTIONS: dict[str, dict[str, list]] = {
    "se": {"rd_ratio": [1 / 4]},
    "cbam": {"rd_ratio": [1 / 4], "kernel_size": [3]},
    "eca": {"kernel_size": [5]},
    "gc": {"rd_ratio": [1 / 4], "fusion": ["scale", "both"]},
    "coord": {"reduction": [4], "min_channels": [16]},
    "triplet": {
        "kernel_size": [3],
        "zpool": ["avg_max_median", "l1_max", "l2_max"],
        "act": ["relu", "sigmoid", "gelu", "celu", "elu", "leaky_relu"],
        "gate": ["tanh", "softmax"],
    },
    "triplet_ca": {
        "kernel_size": [3],
        "zpool": ["l2_max"],
        "act": ["elu"],
        "gate": ["tanh"],
        "coord_reduction": [4],
    },
    "triplet_lkn": {"zpool": ["l1_max"], "act": ["celu"], "gate": ["softmax"]},
}


def _randomise(m: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded random weights, so zero-initialised layers (GC's last conv) cannot hide an option."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return m


def _x(shape=(2, C, 6, 10)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", POST)
def test_attention_preserves_shape(name: str) -> None:
    m = create_attn(name, C)
    x = _x()  # non-square: the triplet rotations must be undone correctly
    for mode in (m.train, m.eval):
        mode()
        y = m(x)
        assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("name", POST)
def test_option_table_covers_every_option(name: str) -> None:
    assert set(OPTIONS[name]) == set(attn_options(name))


@pytest.mark.parametrize(
    "name,option,value", [(n, o, v) for n, opts in OPTIONS.items() for o, vs in opts.items() for v in vs]
)
def test_every_option_changes_the_output(name: str, option: str, value) -> None:
    x = _x()
    base = _randomise(create_attn(name, C)).train()
    alt = _randomise(create_attn(name, C, **{option: value})).train()
    assert not torch.allclose(base(x), alt(x), atol=1e-5), f"{name}: option {option}={value!r} has no effect"


def test_triplet_variants_are_configurations_of_one_module() -> None:
    ca, lkn = create_attn("triplet_ca", C), create_attn("triplet_lkn", C)
    assert isinstance(ca, TripletAttention) and isinstance(lkn, TripletAttention)
    assert isinstance(ca.hw, CoordinateAttention)
    assert all(isinstance(b.conv, LargeKernelConv) for b in (lkn.cw, lkn.hc, lkn.hw))
    assert isinstance(lkn.hw.squeeze, nn.Conv2d) and lkn.hw.squeeze.in_channels == C  # learned squeeze of C
    plain = create_attn("triplet", C)
    assert plain.cw.conv.kernel_size == (7, 7) and isinstance(
        plain.cw.act, nn.Identity
    )  # the paper's defaults
    assert create_attn("triplet", C, act="leaky_relu").cw.act.__class__ is nn.LeakyReLU


def test_factory_off_and_errors() -> None:
    assert create_attn(None, C) is None and create_attn("", C) is None and attn_layer(None) is None
    with pytest.raises(AttentionConfigError, match="unknown attention 'see'.*valid: .*se.*triplet"):
        create_attn("see", C)
    with pytest.raises(AttentionConfigError, match=r"unknown option\(s\) reduction \(valid: rd_ratio\)"):
        create_attn("se", C, reduction=8)
    with pytest.raises(AttentionConfigError, match="valid: zpool, act, gate"):
        create_attn("triplet_lkn", C, kernel_size=5)  # the LKN replaces the 7x7 conv
    with pytest.raises(AttentionConfigError, match="no attention is selected"):
        create_attn(None, C, rd_ratio=0.5)
    with pytest.raises(
        AttentionConfigError, match="unknown zpool 'mean'.*avg_max, avg_max_median, l1_max, l2_max"
    ):
        create_attn("triplet", C, zpool="mean")
    with pytest.raises(AttentionConfigError, match="unknown gate 'relu'"):
        create_attn("triplet", C, gate="relu")
    with pytest.raises(AttentionConfigError, match="unknown fusion"):
        create_attn("gc", C, fusion="mul")
    with pytest.raises(AttentionConfigError, match="unknown option"):
        attn_layer("cbam", ratio=4)  # checked before any block is built


def test_sk_is_a_3x3_replacement_only() -> None:
    with pytest.raises(AttentionConfigError, match="replaces a block's 3x3 convolution"):
        create_attn("sk", C)
    with pytest.raises(AttentionConfigError, match="not a 3x3-conv replacement"):
        create_attn("se", C, slot="conv3x3")
    sk = create_attn("sk", C, slot="conv3x3", out_channels=16, stride=2)
    assert isinstance(sk, SelectiveKernelConv)
    assert [p.conv.dilation for p in sk.paths] == [(1, 1), (2, 2)]  # 3x3 and 5x5-as-dilated-3x3
    assert sk.paths[0].conv.in_channels == C  # every path sees the whole input (paper)
    assert sk.attn.fc_reduce.out_channels == 32  # d = max(C / 16, L = 32)
    assert sk(_x()).shape == (2, 16, 3, 5)
