"""VAN (+ seed 000 variants) and RepLKNet: structure of each variant, LKA shapes, and that
re-parameterised (fused) large kernels give the same outputs as the training-time branches."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from common.errors import PipelineError
from pipeline.models import create_model, list_models, min_input_size
from pipeline.models.layers.lka import LargeKernelAttention, LargeKernelConv, MultiScaleLKA
from pipeline.models.layers.replk import ReparamLargeKernelConv, RepLKBlock
from pipeline.models.van import VAN_VARIANTS, Res2NetBottleneck, VanAttention, VanMlp

# reduced widths: the same kernels/depth pattern as the registered models, ~100x cheaper
TINY_VAN = dict(embed_dims=(8, 16, 16, 32), depths=(1, 1, 2, 1))
TINY_REPLKNET = dict(channels=(8, 16, 16, 32), layers=(1, 1, 2, 1))


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine terms, so an incorrect BN fold changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.5)
            m.weight.data.copy_(torch.randn(c, generator=g) * 0.5 + 1)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.5)


def fuse_and_compare(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Randomise BN, run in eval mode, ``reparameterize()``, and check the output is unchanged."""
    randomize_bn(module)
    module.eval()
    with torch.no_grad():
        before = module(x)
        module.reparameterize()
        after = module(x)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    return after


def attentions(model: nn.Module) -> list[VanAttention]:
    return [m for m in model.modules() if isinstance(m, VanAttention)]


# ---------------------------------------------------------------- LKA layers


@pytest.mark.parametrize(
    "kw",
    [
        {},
        dict(kernel_size=7, dilated_kernel_size=11, dilation=5),
        dict(act_layer=nn.ReLU),
        dict(norm_layer=nn.BatchNorm2d, norm_after_pw=True),
    ],
)
def test_lka_preserves_shape(kw: dict) -> None:
    x = torch.randn(2, 6, 9, 11)
    assert LargeKernelAttention(6, **kw)(x).shape == x.shape


def test_lka_receptive_fields() -> None:
    assert LargeKernelConv(4).receptive_field == 23  # VAN default: 5 + 6 * 3 (paper: "21x21")
    assert LargeKernelConv(4, kernel_size=7, dilated_kernel_size=11, dilation=5).receptive_field == 57


def test_large_kernel_conv_out_dim_still_works() -> None:  # TripletLKN relies on this signature
    assert LargeKernelConv(4, 1, kernel_size=5, dilated_kernel_size=7, dilation=3)(torch.randn(1, 4, 8, 8)).shape == (
        1,
        1,
        8,
        8,
    )


def test_multiscale_lka_triples_channels() -> None:
    m = MultiScaleLKA(6, (5, 7, 9))
    assert m.out_channels == 18
    assert m(torch.randn(2, 6, 10, 10)).shape == (2, 18, 10, 10)


# ---------------------------------------------------------------- VAN variants


def test_van_variant_registry_names() -> None:
    names = set(list_models("van*"))
    assert {"van_b0", "van_b1", "van_lk_b0", "van_mb_b0", "van_act_b0", "van_bn_b0", "van_replk_b0"} <= names
    assert {"van_res2net_b0", "van_res2net_replk_b0", "van_lk_b1", "van_replk_b1"} <= names


def test_van_param_counts_match_paper() -> None:
    # VAN paper: B0 4.1M, B1 13.9M (1000 classes)
    assert abs(n_params(create_model("van_b0")) - 4.11e6) < 0.02e6
    assert abs(n_params(create_model("van_b1")) - 13.86e6) < 0.02e6


def test_van_base_structure() -> None:
    m = create_model("van_b0", num_classes=10)
    lkas = [a.spatial_gating_unit for a in attentions(m)]
    assert len(lkas) == 3 + 3 + 5 + 2 and all(type(g) is LargeKernelAttention for g in lkas)
    g = lkas[0]
    assert g.conv0.kernel_size == (5, 5) and g.conv_spatial.kernel_size == (7, 7) and g.conv_spatial.dilation == (3, 3)
    assert isinstance(g.act0, nn.Identity) and isinstance(g.norm0, nn.Identity)
    assert m.num_features == 256


def test_van_lk_kernels() -> None:
    for a in attentions(create_model("van_lk_b0", num_classes=10)):
        g = a.spatial_gating_unit
        assert g.conv0.kernel_size == (7, 7) and g.conv0.groups == g.conv0.in_channels
        assert g.conv_spatial.kernel_size == (11, 11) and g.conv_spatial.dilation == (5, 5)
        assert g.conv_spatial.padding == (25, 25)


def test_van_mb_three_kernels_and_projection() -> None:
    for a in attentions(create_model("van_mb_b0", num_classes=10)):
        g = a.spatial_gating_unit
        assert isinstance(g, MultiScaleLKA)
        assert [b.conv0.kernel_size[0] for b in g.branches] == [5, 7, 9]
        dim = a.proj_1.out_channels
        assert a.proj_2.in_channels == 3 * dim and a.proj_2.out_channels == dim


@pytest.mark.parametrize("act", ["relu", "gelu", "celu", "elu"])
def test_van_act(act: str) -> None:
    m = create_model("van_act_b0", num_classes=10, lka_act=act, **TINY_VAN)
    for a in attentions(m):
        g = a.spatial_gating_unit
        # torch or timm class (timm resolves "gelu" to its own GELU)
        assert type(g.act0).__name__.lower() == type(g.act1).__name__.lower() == act
    assert isinstance(attentions(create_model("van_act_b0", num_classes=10))[0].spatial_gating_unit.act0, nn.ReLU)


def test_van_bn_after_each_conv() -> None:
    for a in attentions(create_model("van_bn_b0", num_classes=10)):
        g = a.spatial_gating_unit
        assert all(isinstance(n, nn.BatchNorm2d) for n in (g.norm0, g.norm1, g.norm2))


def test_van_res2net_mlp() -> None:
    m = create_model("van_res2net_b0", num_classes=10, **TINY_VAN)
    mlps = [x for x in m.modules() if isinstance(x, VanMlp)]
    assert mlps
    for mlp in mlps:
        hidden = mlp.fc1.out_channels
        assert isinstance(mlp.dwconv, Res2NetBottleneck)
        assert len(mlp.dwconv.convs) == 3  # scale 4: three 3x3 convs, one pass-through split
        assert mlp.fc2.in_channels == 4 * hidden


def test_van_res2net_bottleneck_shape() -> None:
    assert Res2NetBottleneck(16)(torch.randn(2, 16, 5, 5)).shape == (2, 64, 5, 5)


def test_van_replk_block_and_fusion() -> None:
    m = create_model("van_res2net_replk_b0", num_classes=10, **TINY_VAN).eval()
    for a in attentions(m):
        g = a.spatial_gating_unit
        assert isinstance(g, RepLKBlock)
        assert g.large_kernel.large_conv.conv.kernel_size == (31, 31)
        assert g.large_kernel.small_conv.conv.kernel_size == (5, 5)
    fuse_and_compare(m, torch.randn(2, 3, 64, 64))
    assert all(a.spatial_gating_unit.large_kernel.fused for a in attentions(m))


def test_van_bad_variant_lists_valid_ones() -> None:
    with pytest.raises(PipelineError) as e:
        create_model("van_b0", variant="large")
    msg = str(e.value)
    assert "large" in msg and all(v in msg for v in VAN_VARIANTS)
    with pytest.raises(PipelineError, match="attn_type"):
        create_model("van_b0", attn_type="sk")
    with pytest.raises(PipelineError, match="lka_act"):
        create_model("van_act_b0", lka_act="swishy")


def test_van_variant_kwarg_equals_named_model() -> None:
    a = create_model("van_b0", num_classes=10, variant="lk", **TINY_VAN)
    b = create_model("van_lk_b0", num_classes=10, **TINY_VAN)
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]


def test_van_small_input_stem() -> None:
    m = create_model("van_b0", num_classes=10, small_input=True, **TINY_VAN).eval()
    conv = m.stages[0][0][0]
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1)
    assert m.forward_features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)


@pytest.mark.parametrize("name", ["van_lk_b0", "van_replk_b0", "van_mb_b0"])
@pytest.mark.parametrize("small", [False, True])
def test_van_min_size_forward(name: str, small: bool) -> None:
    size = min_input_size(name, small)
    m = create_model(name, num_classes=10, small_input=small, **TINY_VAN)
    assert m(torch.randn(2, 3, size, size)).shape == (2, 10)


# ---------------------------------------------------------------- RepLKNet and re-parameterisation


def test_reparam_conv_fusion_equality() -> None:
    torch.manual_seed(0)
    conv = ReparamLargeKernelConv(6, kernel_size=13, small_kernel=5)
    randomize_bn(conv)
    conv.eval()
    x = torch.randn(2, 6, 17, 15)
    with torch.no_grad():
        before = conv(x)
        conv.reparameterize()
        after = conv(x)
        conv.reparameterize()  # idempotent
        again = conv(x)
    assert conv.fused and not hasattr(conv, "large_conv") and not hasattr(conv, "small_conv")
    assert conv.reparam_conv.kernel_size == (13, 13) and conv.reparam_conv.bias is not None
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again, after)


def test_reparam_conv_without_small_branch() -> None:
    fuse_and_compare(ReparamLargeKernelConv(4, kernel_size=7, small_kernel=None), torch.randn(1, 4, 9, 9))


def test_replknet_31b_params_match_paper() -> None:
    m = create_model("replknet_31b")  # paper: 79M params, 15.3G FLOPs (MACs) at 224
    assert abs(n_params(m) - 79.86e6) < 0.05e6
    kernels = [b.large_kernel.large_conv.conv.kernel_size[0] for b in m.modules() if isinstance(b, RepLKBlock)]
    assert kernels == [31] * 2 + [29] * 2 + [27] * 18 + [13] * 2


def test_replknet_fused_equals_unfused() -> None:
    torch.manual_seed(0)
    m = create_model("replknet_31b", num_classes=10, **TINY_REPLKNET)
    fuse_and_compare(m, torch.randn(2, 3, 64, 64))
    convs = [c for c in m.modules() if isinstance(c, ReparamLargeKernelConv)]
    assert len(convs) == 5 and all(c.fused for c in convs)


def test_replk_block_reparameterize() -> None:
    fuse_and_compare(RepLKBlock(8, kernel_size=9, small_kernel=3), torch.randn(1, 8, 12, 12))


@pytest.mark.parametrize("small", [False, True])
def test_replknet_min_size_forward(small: bool) -> None:
    size = min_input_size("replknet_31t", small)
    m = create_model("replknet_31t", num_classes=10, small_input=small, **TINY_REPLKNET)
    assert m(torch.randn(2, 3, size, size)).shape == (2, 10)
    assert m.num_features == 32


def test_replknet_small_input_stem() -> None:
    m = create_model("replknet_31t", num_classes=10, small_input=True, **TINY_REPLKNET).eval()
    assert all(c.conv.stride == (1, 1) for c in m.stem)
    assert m.forward_features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)
