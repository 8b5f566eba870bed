"""Attention ResNet-50s, the Res2Net-50 variants of seed 000, seed 003's Sample ResNet, and
``freeze_backbone``: structure checks (the generic forward/gradient test covers every model)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from pipeline.models import create_model, list_models, model_info
from pipeline.models.attn_resnet import ATTN_RESNETS, attn_resnet
from pipeline.models.layers import AttentionConfigError, SelectiveKernelConv, SqueezeExcite, TripletAttention
from pipeline.models.res2net import RES2NET_VARIANTS, res2net
from pipeline.models.utils import classifier_of, freeze_backbone


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [b for i in range(1, 5) for b in getattr(model, f"layer{i}")]


def test_every_table_row_is_registered_with_its_seed_name() -> None:
    for name, v in RES2NET_VARIANTS.items():
        assert f"seed000:{v.seed_name}" in model_info(name).tags
    assert set(ATTN_RESNETS) <= set(list_models("resnet50_*"))
    assert {"res2net50_s1", "res2net50_t2", "res2net50_st", "res2net50_celu_deepstem_avgdown_st"} <= set(
        list_models("res2net50_*")
    )


def test_attention_sits_in_every_bottleneck_and_gc_only_in_c3_c5() -> None:
    m = create_model("resnet50_triplet_zl2", num_classes=10)
    assert all(isinstance(b.se, TripletAttention) and b.se.cw.squeeze.mode == "l2_max" for b in _blocks(m))
    gc = create_model("resnet50_gc", num_classes=10)
    assert all(b.se is None for b in gc.layer1)
    assert all(b.se is not None for i in (2, 3, 4) for b in getattr(gc, f"layer{i}"))


def test_sk_replaces_the_3x3_and_is_rejected_where_there_is_none() -> None:
    m = create_model("resnet50_sk", num_classes=10)
    assert all(isinstance(b.conv2, SelectiveKernelConv) and b.se is None for b in _blocks(m))
    assert m.layer2[0].conv2.paths[0].conv.stride == (2, 2)
    with pytest.raises(AttentionConfigError, match="replaces a block's 3x3 convolution"):
        attn_resnet(num_classes=10, attn="sk")  # post-block slot: no 3x3 there
    with pytest.raises(AttentionConfigError, match="replaces a block's 3x3 convolution"):
        res2net(num_classes=10, inner_attn="sk")  # Res2Net sub-branch attention slot
    with pytest.raises(AttentionConfigError, match="not a 3x3-conv replacement"):
        attn_resnet(num_classes=10, conv3x3="cbam")


def test_res2net_activation_variants() -> None:
    for name, cls in [
        ("res2net50_celu", nn.CELU),
        ("res2net50_elu", nn.ELU),
        ("res2net50_lrelu", nn.LeakyReLU),
    ]:
        m = create_model(name, num_classes=10)
        assert all(type(b.relu) is cls for b in _blocks(m)), name
        assert type(m.act1) is nn.ReLU  # the stem keeps ReLU
    g = create_model("res2net50_gelu", num_classes=10)
    assert all("GELU" in type(b.relu).__name__ for b in _blocks(g))
    assert all(type(b.relu) is nn.ReLU for b in _blocks(create_model("res2net50_base", num_classes=10)))
    with pytest.raises(ValueError, match="unknown block_act"):
        res2net(num_classes=10, block_act="swishy")


@pytest.mark.parametrize(
    "name,inner,post",
    [
        ("res2net50_base", None, None),
        ("res2net50_s1", SqueezeExcite, None),
        ("res2net50_t1", TripletAttention, None),
        ("res2net50_s2", None, SqueezeExcite),
        ("res2net50_t2", None, TripletAttention),
        ("res2net50_st", SqueezeExcite, TripletAttention),
        ("res2net50_ts", TripletAttention, SqueezeExcite),
    ],
)
def test_res2net_attention_placement(name: str, inner, post) -> None:
    m = create_model(name, num_classes=10)
    for b in _blocks(m):
        assert (b.inner_attn is None) if inner is None else isinstance(b.inner_attn, inner)
        assert (b.se is None) if post is None else isinstance(b.se, post)
    if inner is SqueezeExcite:  # inside the sub-branches: width channels (26w at c2)
        assert m.layer1[0].inner_attn.fc1.in_channels == 26
    if post is not None:  # after the last 1x1: the block's output channels
        assert m.layer1[0].se(torch.zeros(1, 256, 4, 4)).shape == (1, 256, 4, 4)


def test_res2net_deep_stem_and_avg_down() -> None:
    base = create_model("res2net50_base", num_classes=10)
    c = create_model("res2net50_deepstem", num_classes=10)
    d = create_model("res2net50_avgdown", num_classes=10)
    assert isinstance(base.conv1, nn.Conv2d) and base.conv1.kernel_size == (7, 7)
    convs = [m for m in c.conv1 if isinstance(m, nn.Conv2d)]
    assert [(k.kernel_size, k.stride, k.out_channels) for k in convs] == [
        ((3, 3), (2, 2), 64),
        ((3, 3), (1, 1), 64),
        ((3, 3), (1, 1), 64),
    ]
    assert isinstance(d.layer2[0].downsample[0], nn.AvgPool2d) and d.layer2[0].downsample[1].stride == (1, 1)
    assert base.layer2[0].downsample[0].stride == (2, 2)  # plain: strided 1x1 shortcut
    assert base.layer2[0].convs[0].stride == d.layer2[0].convs[0].stride == (2, 2)  # stride on the 3x3
    best = create_model("res2net50_celu_deepstem_avgdown_st", num_classes=10)
    assert isinstance(best.conv1, nn.Sequential) and isinstance(best.layer3[0].downsample[0], nn.AvgPool2d)
    assert type(best.layer4[2].relu) is nn.CELU
    assert isinstance(best.layer4[2].inner_attn, SqueezeExcite) and isinstance(
        best.layer4[2].se, TripletAttention
    )


def test_small_input_variants_run_at_32px() -> None:
    for name in ("res2net50_celu_deepstem_avgdown_st", "resnet50_triplet_ca", "sample_resnet_cbam"):
        m = create_model(name, num_classes=10, small_input=True).eval()
        with torch.no_grad():
            assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_sample_resnet_structure() -> None:
    m = create_model("sample_resnet_cbam", num_classes=10)
    assert type(m.attn).__name__ == "Cbam" and type(m.block1.se).__name__ == "Cbam"
    assert m.num_features == 128 and m.fc.out_features == 10
    plain = create_model("sample_resnet_cbam", num_classes=10, attn=None)
    assert isinstance(plain.attn, nn.Identity) and plain.block1.se is None


def _trainable(m: nn.Module) -> set[str]:
    return {n for n, p in m.named_parameters() if p.requires_grad}


def test_freeze_backbone_leaves_only_the_head_trainable() -> None:
    m = create_model("resnet50_triplet", num_classes=10, freeze_backbone=True)
    assert _trainable(m) == {"fc.weight", "fc.bias"}
    s = create_model("sample_resnet_cbam", num_classes=10)
    assert freeze_backbone(s) is s and _trainable(s) == {"fc.weight", "fc.bias"}
    s(torch.randn(2, 3, 16, 16)).sum().backward()
    assert s.fc.weight.grad is not None and s.conv1.weight.grad is None
    seq = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    assert classifier_of(seq) is seq[2]
    with pytest.raises(ValueError, match="no classifier head"):
        freeze_backbone(nn.Sequential(nn.Conv2d(3, 4, 3)))
