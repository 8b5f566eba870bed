"""Model zoo I: standard backbones, small-input stems, Inception-Res-PA and ResNeAt (issue #4).

Parameter counts and shape checks build on the ``meta`` device (no weights, no arithmetic), so
they cost milliseconds even for VGG-16; only the new models run real forwards, on tiny inputs.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn as nn
from timm.models.resnet import Bottleneck

from common.errors import PipelineError
from pipeline.models import create_model, model_info
from pipeline.models.inception_res_pa import InceptionBlock, InceptionResPA, PreActConv
from pipeline.models.profile import count_macs, count_params, measure
from pipeline.models.resneat import AttentionUnit, ResNeAtBottleneck
from pipeline.models.standard import STANDARD_MODELS

NEW_MODELS = ["inception_res_pa", "inception_res_pa_small", "resneat50"]
ZOO = [*STANDARD_MODELS, *NEW_MODELS]


pytestmark = pytest.mark.usefixtures("one_thread")


def meta_model(name: str, num_classes: int = 1000, **kw) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, num_classes=num_classes, **kw)


def meta_forward(model: nn.Module, size: int) -> torch.Size:
    with torch.no_grad():
        return model.eval()(torch.zeros(2, 3, size, size, device="meta")).shape


def conv_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d))


# ----------------------------------------------------------------------------- standard backbones


@pytest.mark.parametrize(
    "name, expected",
    [
        ("resnet50", 25_557_032),
        ("resnext50_32x4d", 25_028_904),
        ("densenet121", 7_978_856),
        ("seresnet50", 28_088_024),
        ("inception_resnet_v2", 55_843_464),
    ],
)
def test_param_counts_match_the_papers(name: str, expected: int) -> None:
    assert count_params(meta_model(name)) == expected


@pytest.mark.parametrize("name", list(STANDARD_MODELS))
def test_param_counts_equal_the_library(name: str) -> None:
    spec = STANDARD_MODELS[name]
    with torch.device("meta"):
        if spec.library == "timm":
            ref = timm.create_model(spec.arch, num_classes=1000, **spec.kwargs)
        else:
            import torchvision

            ref = torchvision.models.get_model(spec.arch, weights=None, num_classes=1000, **spec.kwargs)
    assert count_params(meta_model(name)) == count_params(ref)


def test_resnet50_macs() -> None:
    params, macs = measure(lambda: create_model("resnet50", 1000), 224)
    assert params == 25_557_032
    assert round(macs / 1e9, 2) == 4.09


def test_count_macs_on_cpu_equals_meta() -> None:
    assert count_macs(create_model("simple_cnn", 10), 32) == measure(lambda: create_model("simple_cnn", 10), 32)[1]


@pytest.mark.parametrize(
    "name, width",
    [
        ("resnet50", 2048),
        ("densenet121", 1024),
        ("googlenet", 1024),
        ("alexnet", 256),
        ("vgg16_bn", 512),
        ("inception_resnet_v2", 1536),
        ("resneat50", 2048),
        ("inception_res_pa", 1536),
    ],
)
def test_num_features_is_the_last_feature_width(name: str, width: int) -> None:
    assert meta_model(name).num_features == width


@pytest.mark.parametrize("name", ZOO)
def test_runs_at_32_64_224_where_allowed(name: str) -> None:
    """Shape check (meta device) at 32/64/224 with both stems; below min size the guard refuses."""
    info = model_info(name)
    for small, need in ((False, info.min_size), (True, info.min_size_small)):
        if need is None:
            with pytest.raises(PipelineError, match="no small-input"):
                create_model(name, num_classes=3, small_input=True)
            continue
        model = meta_model(name, 3, small_input=small)
        for size in (32, 64, 224, need):
            if size < need:
                with pytest.raises(ValueError, match="needs inputs of at least"):
                    meta_forward(model, size)
            else:
                assert meta_forward(model, size) == (2, 3), (name, small, size)


def test_inception_nets_need_75() -> None:
    for name in ("inception_v3", "inception_v4", "inception_resnet_v2", "inception_res_pa"):
        assert model_info(name).min_size == 75
    model = meta_model("inception_resnet_v2", 3)
    model._forward_pre_hooks.clear()  # without the guard, 74 px breaks deep inside (valid convs)
    with pytest.raises(RuntimeError):
        meta_forward(model, 74)


def test_small_input_stem_resnet() -> None:
    model = meta_model("seresnext50_32x4d", small_input=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)


def test_densenet_bc_cifar_is_seed_002() -> None:
    model = meta_model("densenet_bc_cifar", 10)
    layers = [m for m in model.modules() if type(m).__name__ == "DenseLayer"]
    assert len(layers) == 6 + 12 + 24 + 16
    assert all(m.drop_rate == 0.2 for m in layers)
    assert all(m.conv2.out_channels == 32 for m in layers)  # growth rate
    # compression 0.5: 64 + 6*32 = 256 -> 128 after the first transition
    assert model.features.transition1.conv.in_channels == 256
    assert model.features.transition1.conv.out_channels == 128
    assert model.features.conv0.kernel_size == (7, 7)  # the seed's code keeps the ImageNet stem
    small = meta_model("densenet_bc_cifar", 10, small_input=True)
    assert small.features.conv0.kernel_size == (3, 3) and isinstance(small.features.pool0, nn.Identity)
    assert all(m.drop_rate == 0 for m in meta_model("densenet121").modules() if type(m).__name__ == "DenseLayer")


def test_pretrained_timm_failure_is_one_line(monkeypatch) -> None:
    import timm.models._builder as builder

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nsecond line of noise")

    monkeypatch.setattr(builder, "load_pretrained", offline)
    with pytest.raises(PipelineError, match="could not load pretrained weights for 'resnet34'") as err:
        create_model("resnet34", num_classes=3, pretrained=True)
    assert "\n" not in str(err.value)


def test_pretrained_torchvision_failure_is_one_line(monkeypatch) -> None:
    import torchvision.models._api as api

    def offline(*a, **k):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    for name in ("googlenet", "alexnet"):
        with pytest.raises(PipelineError, match=f"could not load pretrained weights for '{name}'") as err:
            create_model(name, num_classes=3, pretrained=True)
        assert "\n" not in str(err.value)


def test_pretrained_torchvision_head_is_replaced(monkeypatch) -> None:
    import torchvision.models._api as api

    monkeypatch.setattr(api, "load_state_dict_from_url", lambda *a, **k: create_model("alexnet", 1000).state_dict())
    model = create_model("alexnet", num_classes=7, pretrained=True)
    assert model.classifier[-1].out_features == 7


def test_new_models_have_no_pretrained_weights() -> None:
    for name in NEW_MODELS:
        with pytest.raises(PipelineError, match="no pretrained weights"):
            create_model(name, num_classes=3, pretrained=True)


# ----------------------------------------------------------------------------- ResNeAt


def test_resneat_block_param_arithmetic_of_the_report() -> None:
    """Seed 001, 3.2.4: conv weights of the 256-d block (width 128, C=32)."""
    resneat = ResNeAtBottleneck(256, 64, cardinality=32, base_width=4)
    resnext = Bottleneck(256, 64, cardinality=32, base_width=4)
    resnet = Bottleneck(256, 64, cardinality=1, base_width=128)  # width 128, as in the report
    assert conv_weights(resneat) == 256 * 128 + 128 * 3 * 3 * 4 + 128 * 256 * 4 // 32 == 41_472
    assert conv_weights(resnext) == 256 * 128 + 128 * 3 * 3 * 128 // 32 + 128 * 256 == 70_144
    assert conv_weights(resnet) == 256 * 128 + 128 * 3 * 3 * 128 + 128 * 256 == 212_992
    # the AU is four grouped 1x1 convs 128 -> 256 with 32 groups
    for conv in (resneat.au.key, resneat.au.query, resneat.au.value, resneat.au.out):
        assert conv.kernel_size == (1, 1) and conv.groups == 32 and conv.weight.numel() == 1024


def test_resneat50_params_vs_resnext50() -> None:
    resneat, resnext = count_params(meta_model("resneat50")), count_params(meta_model("resnext50_32x4d"))
    assert resneat == 16_226_600 and resnext == 25_028_904
    assert 0.64 < resneat / resnext < 0.65  # the report says ~59%; see the model docstring


def test_attention_unit_matches_the_formula() -> None:
    torch.manual_seed(0)
    au = AttentionUnit(64, 128, groups=32).eval()
    x = torch.randn(2, 64, 5, 7)
    s = 5 * 7
    k, q = au.key(x).reshape(2, 128, s), au.query(x).reshape(2, 128, s)
    v = au.value(x).reshape(2, 128, s).mean(-1, keepdim=True)
    scale = torch.sigmoid(torch.softmax(q @ k.transpose(1, 2) / math.sqrt(s), dim=-1) @ v)
    assert k.shape == q.shape == (2, 128, s) and scale.shape == (2, 128, 1)
    expected = scale.unsqueeze(-1) * au.norm(au.out(x))
    torch.testing.assert_close(au(x), expected)
    assert ((au.scale(x) > 0) & (au.scale(x) < 1)).all()


def test_resneat_block_residual_and_stage_transition() -> None:
    torch.manual_seed(0)
    block = ResNeAtBottleneck(256, 64).eval()
    x = torch.randn(2, 256, 6, 6)
    with torch.no_grad():
        out = block(x)
        expected = torch.relu(block.au(block.act2(block.bn2(block.conv2(block.act1(block.bn1(block.conv1(x))))))) + x)
    torch.testing.assert_close(out, expected)
    model = meta_model("resneat50")
    first = model.layer2[0]  # stride-2 transition 256 -> 512: ResNeXt's projection shortcut
    assert first.conv2.stride == (2, 2) and first.downsample is not None
    assert first.downsample[0].stride == (2, 2) and first.downsample[0].out_channels == 512
    assert sum(isinstance(m, ResNeAtBottleneck) for m in model.modules()) == 3 + 4 + 6 + 3


def test_resneat_small_input_real_forward() -> None:
    torch.manual_seed(0)
    model = create_model("resneat50", num_classes=10, small_input=True).eval()
    assert model.conv1.stride == (1, 1) and isinstance(model.maxpool, nn.Identity)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 10) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- Inception-Res-PA


def _residual_units(model: nn.Module) -> list[InceptionBlock]:
    return [m for m in model.modules() if isinstance(m, InceptionBlock) and m.residual_scale is not None]


@pytest.mark.parametrize("name, depths", [("inception_res_pa", (5, 10, 5)), ("inception_res_pa_small", (1, 2, 1))])
def test_inception_res_pa_layout(name: str, depths: tuple[int, int, int]) -> None:
    units = _residual_units(meta_model(name))
    widths = [u.out_chs for u in units]
    assert widths == [320] * depths[0] + [1088] * depths[1] + [2080] * depths[2]
    assert {u.residual_scale for u in units} == {0.17, 0.10, 0.20}
    for unit in units:  # every branch conv and the up-projection are BN-ReLU-conv
        convs = [m for m in unit.modules() if isinstance(m, PreActConv)]
        assert convs and all(isinstance(c[0], nn.BatchNorm2d) and isinstance(c[1], nn.ReLU) for c in convs)
        assert isinstance(unit.up, PreActConv) and unit.up[2].bias is not None


def test_inception_res_pa_identity_shortcut_no_relu_after_add() -> None:
    torch.manual_seed(0)
    unit = _residual_units(InceptionResPA(num_classes=3, depths=(1, 1, 1), small_input=True))[0].eval()
    x = torch.randn(2, 320, 4, 4)  # negative entries survive: no ReLU after the sum
    with torch.no_grad():
        nn.init.zeros_(unit.up[2].weight)
        nn.init.zeros_(unit.up[2].bias)
        torch.testing.assert_close(unit(x), x)  # clean identity path
        nn.init.normal_(unit.up[2].weight)
        branch = unit.up(torch.cat([b(x) for b in unit.branches], 1))
        torch.testing.assert_close(unit(x), x + unit.residual_scale * branch)


def test_inception_res_pa_small_real_forward() -> None:
    torch.manual_seed(0)
    model = create_model("inception_res_pa_small", num_classes=10, small_input=True).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    model = create_model("inception_res_pa_small", num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 75, 75)).shape == (1, 10)


def test_inception_res_pa_depths_kwarg() -> None:
    assert len(_residual_units(meta_model("inception_res_pa", depths=(10, 20, 10)))) == 40
