"""Heads for any backbone (pipeline/models/heads.py): GeM, the linear neck, ArcFace, sub-center
ArcFace, dynamic margins, embeddings, freeze_backbone, and the plain default model unchanged."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.errors import PipelineError
from pipeline.models import create_model, list_models, model_info
from pipeline.models.heads import (
    ArcMarginHead,
    GeM,
    HeadConfig,
    HeadedModel,
    attach_head,
    dynamic_margins,
    embed,
)
from pipeline.models.utils import freeze_backbone

pytestmark = pytest.mark.usefixtures("one_thread")

HEAD = dict(pool="gem", neck="linear", embedding_size=16, head="subcenter_arcface", subcenters=2, dynamic_margin=True)

# one (light) model of each family: the test below fails when a new family is not listed here
FAMILY_MODELS = {
    "alexnet": "alexnet",
    "attn_resnet": "resnet50_triplet",
    "cbam_nets": "sample_resnet_cbam",
    "densenet": "densenet121",
    "inception": "googlenet",
    "inception_res_pa": "inception_res_pa_small",
    "replknet": "replknet_31t",
    "res2net": "res2net50_st",
    "resneat": "resneat50",
    "resnet": "resnet18",
    "resnext": "resnext50_32x4d",
    "senet": "seresnet18",
    "simple": "simple_cnn",
    "van": "van_b0",
    "vgg": "vgg11_bn",
}


def smallest_input(name: str) -> tuple[int, bool]:
    info = model_info(name)
    return (info.min_size_small, True) if info.min_size_small is not None else (info.min_size, False)


def reference_arcface(x, w, target, s, m):
    """ArcFace written from the paper: s * cos(theta_y + m) on the target, s * cos(theta_j) elsewhere."""
    cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).T
    theta = torch.acos(cos.clamp(-1, 1))
    out = cos.clone()
    rows = torch.arange(len(target))
    out[rows, target] = torch.cos(theta[rows, target] + m)
    return s * out


# ----------------------------------------------------------------------------- pooling


def test_gem_p1_is_average_pooling_and_large_p_tends_to_max() -> None:
    x = torch.rand(2, 5, 4, 3) + 0.01
    torch.testing.assert_close(GeM(p=1.0)(x), x.mean(dim=(2, 3)))
    torch.testing.assert_close(GeM(p=3.0)(x), x.pow(3).mean(dim=(2, 3)).pow(1 / 3))
    assert (GeM(p=200.0)(x) - x.amax(dim=(2, 3))).abs().max() < 0.05


def test_gem_p_is_learnable_or_fixed() -> None:
    gem = GeM(3.0)
    gem(torch.rand(2, 3, 4, 4)).sum().backward()
    assert isinstance(gem.p, nn.Parameter) and gem.p.grad is not None and gem.p.grad.abs() > 0
    fixed = GeM(3.0, learnable=False)
    assert not list(fixed.parameters()) and "p" in fixed.state_dict()
    with pytest.raises(PipelineError, match="p must be"):
        GeM(0.0)


# ----------------------------------------------------------------------------- margin heads


def test_arcface_with_zero_margin_is_a_scaled_cosine_classifier() -> None:
    torch.manual_seed(0)
    head = ArcMarginHead(8, 5, s=30.0, m=0.0).train()
    x, target = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    expected = 30.0 * F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).T
    torch.testing.assert_close(head(x, target), expected)


def test_arcface_adds_the_angular_margin_on_the_target_only() -> None:
    torch.manual_seed(0)
    head = ArcMarginHead(8, 5, s=16.0, m=0.4).train()
    x, target = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 4, 2])
    with torch.no_grad():  # target angles below pi - m: the plain cos(theta + m) branch
        head.weight[target] = x + 0.3 * torch.randn(6, 8)
    ref = reference_arcface(x, head.weight.detach(), target, 16.0, 0.4)
    torch.testing.assert_close(head(x, target), ref, atol=1e-4, rtol=1e-4)
    plain = head(x)  # no target: no margin
    torch.testing.assert_close(plain, 16.0 * head.cosine(x))
    rows = torch.arange(6)
    assert (head(x, target)[rows, target] < plain[rows, target]).all()


def test_arcface_threshold_and_easy_margin() -> None:
    """Past theta + m > pi the target logit is cos(theta) - m sin(m) (monotone); easy margin
    leaves obtuse angles alone."""
    m = 0.5
    head = ArcMarginHead(2, 2, s=1.0, m=m).train()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    angles = torch.tensor([0.3, 2.0, math.pi - 0.2, math.pi - 0.01])
    x = torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    out = head(x, torch.zeros(4, dtype=torch.long))[:, 0]
    cos = torch.cos(angles)
    expected = torch.where(angles + m < math.pi, torch.cos(angles + m), cos - m * math.sin(m))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert (out[1:] <= out[:-1]).all()  # decreasing in theta across the switch
    easy = ArcMarginHead(2, 2, s=1.0, m=m).train()
    easy.load_state_dict(head.state_dict())
    easy.easy_margin = True
    out = easy(x, torch.zeros(4, dtype=torch.long))[:, 0]
    torch.testing.assert_close(out[1:], cos[1:])  # theta >= 90 degrees: no margin
    torch.testing.assert_close(out[0], torch.cos(angles[0] + m), atol=1e-5, rtol=1e-5)


def test_subcenters_take_the_nearest_centre_and_k1_equals_arcface() -> None:
    torch.manual_seed(0)
    head = ArcMarginHead(8, 4, s=10.0, m=0.2, subcenters=3).train()
    x, target = torch.randn(5, 8), torch.tensor([0, 1, 2, 3, 1])
    per_centre = F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).T  # (5, 4 * 3)
    nearest = per_centre.view(5, 4, 3).amax(2)
    torch.testing.assert_close(head.cosine(x), nearest)
    # sub-center ArcFace = ArcFace on the nearest sub-centre: pick those centres as ArcFace weights
    best = per_centre.view(5, 4, 3).argmax(2)
    for i in range(5):
        w = head.weight.view(4, 3, 8)[torch.arange(4), best[i]].detach()
        ref = reference_arcface(x[i : i + 1], w, target[i : i + 1], 10.0, 0.2)
        torch.testing.assert_close(head(x, target)[i : i + 1], ref, atol=1e-4, rtol=1e-4)


def test_subcenter_k1_model_equals_arcface_model() -> None:
    kw = dict(num_classes=4, small_input=True, neck="linear", embedding_size=8)
    torch.manual_seed(0)
    arc = create_model("simple_cnn", head="arcface", **kw)
    torch.manual_seed(0)
    sub = create_model("simple_cnn", head="subcenter_arcface", subcenters=1, **kw)
    assert arc.state_dict().keys() == sub.state_dict().keys()
    sub.load_state_dict(arc.state_dict())
    x, target = torch.randn(3, 3, 32, 32), torch.tensor([0, 3, 1])
    torch.testing.assert_close(arc.train()(x, target), sub.train()(x, target))


def test_soft_targets_match_index_targets_and_negative_targets_get_no_margin() -> None:
    torch.manual_seed(0)
    head = ArcMarginHead(8, 5, s=30.0, m=0.3, subcenters=2).train()
    x, target = torch.randn(4, 8), torch.tensor([0, 4, 2, 2])
    torch.testing.assert_close(head(x, F.one_hot(target, 5).float()), head(x, target))
    mixed = 0.5 * F.one_hot(target, 5).float() + 0.5 * F.one_hot(target.flip(0), 5).float()
    out = head(x, mixed)
    assert torch.isfinite(out).all() and (out <= head(x) + 1e-5).all()
    none = head(x, torch.tensor([-1, -1, 2, -1]))
    torch.testing.assert_close(none[[0, 1, 3]], head(x)[[0, 1, 3]])
    torch.testing.assert_close(none[2], head(x, target)[2])


def test_margin_logits_are_float32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=3, small_input=True, **{**HEAD, "class_counts": [5, 3, 1]})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.train()(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- dynamic margins


def test_dynamic_margins_small_classes_get_larger_margins() -> None:
    counts = [1000, 10, 100, 1, 50]
    m = dynamic_margins(counts, m_max=0.4, m_min=0.05)
    order = sorted(range(5), key=lambda i: counts[i])  # smallest class first
    assert all(m[a] > m[b] for a, b in zip(order, order[1:]))
    assert m[3].item() == pytest.approx(0.4) and m[0].item() == pytest.approx(0.05)
    # the n^(-1/4) law between the ends, and independent of a common factor on the counts
    t = torch.tensor(counts, dtype=torch.float64).pow(-0.25)
    torch.testing.assert_close(m.double(), 0.05 + 0.35 * (t - t.min()) / (t.max() - t.min()), atol=1e-6, rtol=0)
    torch.testing.assert_close(dynamic_margins([c * 7 for c in counts], 0.4, 0.05), m)
    assert torch.equal(dynamic_margins([5, 5, 5], 0.3, 0.05), torch.full((3,), 0.3))


def test_dynamic_margins_bad_input() -> None:
    with pytest.raises(PipelineError, match=r"class_counts\[1\] = -2"):
        dynamic_margins([3, -2], 0.3, 0.05)
    with pytest.raises(PipelineError, match="margin_min <= arcface_m"):
        dynamic_margins([3, 2], 0.1, 0.2)


def test_model_uses_the_margin_of_each_targets_class() -> None:
    model = create_model("simple_cnn", num_classes=3, small_input=True, **{**HEAD, "class_counts": [100, 10, 1]})
    head = model.head
    assert head.margins[2] == pytest.approx(0.3) and head.margins[0] == pytest.approx(0.05)
    assert "head.margins" in model.state_dict()  # saved with the checkpoint
    cos = torch.tensor([[0.8, 0.8, 0.8]])
    small, large = head.add_margin(cos[:, 2], head.margins[2]), head.add_margin(cos[:, 0], head.margins[0])
    assert small < large  # the small class pays the larger margin


def test_dynamic_margin_needs_matching_class_counts() -> None:
    with pytest.raises(PipelineError, match="dynamic_margin needs class_counts"):
        create_model("simple_cnn", num_classes=3, **{**HEAD, "dynamic_margin": True})
    with pytest.raises(PipelineError, match="class_counts has 2 entries for 3 classes"):
        create_model("simple_cnn", num_classes=3, **{**HEAD, "class_counts": [1, 2]})


# ----------------------------------------------------------------------------- every family


def test_every_family_is_covered() -> None:
    assert set(FAMILY_MODELS) == {model_info(n).family for n in list_models()}


@pytest.mark.parametrize("name", sorted(FAMILY_MODELS.values()))
def test_head_on_every_family(name: str) -> None:
    torch.manual_seed(0)
    size, small = smallest_input(name)
    model = create_model(name, num_classes=3, small_input=small, **HEAD, class_counts=[30, 5, 1])
    assert isinstance(model, HeadedModel) and model.needs_target
    x, target = torch.randn(2, 3, size, size), torch.tensor([0, 2])
    out = model.train()(x, target)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    F.cross_entropy(out, target).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad[:5]}"
    model.eval()
    with torch.no_grad():
        probs = model(x).softmax(1)
        emb = model.embed(x)
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    assert emb.shape == (2, 16) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))


# ----------------------------------------------------------------------------- defaults unchanged


@pytest.mark.parametrize(
    "name", ["resnet18", "densenet121", "googlenet", "van_b0", "simple_cnn", "inception_res_pa_small"]
)
def test_defaults_build_exactly_todays_model(name: str) -> None:
    torch.manual_seed(0)
    today = model_info(name).builder(num_classes=7, pretrained=False, small_input=False)
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    assert type(model) is type(today) and not model.needs_target
    assert list(model.state_dict()) == list(today.state_dict())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in today.parameters())
    model.load_state_dict(today.state_dict())  # an old checkpoint loads strictly
    x = torch.randn(2, 3, model.min_size, model.min_size)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), today.eval()(x))


def test_plain_embed_is_the_normalised_classifier_input() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(model.embed(x), F.normalize(pre, dim=1))
        assert embed(model, x).shape == (2, 512)
    simple = create_model("simple_cnn", num_classes=5).eval()
    with torch.no_grad():
        assert simple.embed(torch.randn(2, 3, 32, 32)).shape == (2, 84)  # the LeNet MLP's output


def test_headed_state_dict_layout_and_dropped_backbone_head() -> None:
    with torch.device("meta"):
        model = create_model("vgg11_bn", num_classes=4, pool="gem", neck="linear", embedding_size=32, head="arcface")
    keys = list(model.state_dict())
    assert "pool.p" in keys and "neck.fc.weight" in keys and "neck.bn.running_mean" in keys
    assert "head.weight" in keys and "head.margins" in keys
    # timm VGG's pre-logits MLP (fc6/fc7) and classifier are replaced: nothing of them is left
    assert not [k for k in keys if k.startswith(("backbone.pre_logits", "backbone.head"))]
    assert model.num_features == 512 and model.embedding_size == 32
    linear = create_model("resnet18", num_classes=4, pool="gem")
    assert isinstance(linear, HeadedModel) and not linear.needs_target
    assert linear.head.weight.shape == (4, 512) and isinstance(linear.backbone.fc, nn.Identity)


# ----------------------------------------------------------------------------- errors, freezing


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(pool="gme"), r"unknown pool 'gme' \(did you mean: gem"),
        (dict(neck="linaer"), r"unknown neck 'linaer' \(did you mean: linear"),
        (dict(head="arcfce"), r"unknown head 'arcfce' \(did you mean: arcface"),
        (dict(head="arcface", arcface_s=0.0), "arcface_s must be > 0"),
        (dict(head="subcenter_arcface", subcenters=0), "subcenters must be a positive integer"),
        (dict(neck="linear", embedding_size=0), "embedding_size must be a positive integer"),
    ],
)
def test_bad_head_keys_are_one_clear_error(kw: dict, match: str) -> None:
    with pytest.raises(PipelineError, match=match):
        create_model("simple_cnn", num_classes=3, **kw)


def test_a_model_without_a_feature_map_cannot_take_a_head() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(PipelineError, match=r"model 'mlp' \(Sequential\) cannot take .* no forward_features"):
        attach_head(mlp, "mlp", 3, HeadConfig(head="arcface"), 2)


def test_gem_on_token_features_is_one_clear_error() -> None:
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        vit = create_model("timm:vit_tiny_patch16_224", num_classes=3, head="arcface")
        assert vit.layout == "tokens" and vit(torch.zeros(2, 3, 224, 224)).shape == (2, 3)
        with pytest.raises(PipelineError, match="cannot take pool='gem': its features are tokens"):
            create_model("timm:vit_tiny_patch16_224", num_classes=3, pool="gem")


def test_freeze_backbone_keeps_pool_neck_and_head_trainable() -> None:
    model = freeze_backbone(create_model("resnet18", num_classes=3, **HEAD, class_counts=[3, 2, 1]))
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"pool", "neck", "head"}
    assert not any(p.requires_grad for p in model.backbone.parameters())
    plain = freeze_backbone(create_model("resnet18", num_classes=3))
    assert [n for n, p in plain.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]


def test_builder_level_freeze_then_head() -> None:
    """A family's own freeze_backbone=True (seed 003's run) freezes the trunk; the new head trains."""
    model = create_model("resnet50_cbam", num_classes=3, head="arcface", freeze_backbone=True)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head"}


def test_timm_forward_features_are_what_the_head_pools() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=3, neck="none", head="arcface").eval()
    ref = timm.create_model("resnet18", num_classes=0).eval()
    ref.load_state_dict({k.removeprefix("backbone."): v for k, v in model.state_dict().items() if "backbone." in k})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.embed(x), F.normalize(ref(x), dim=1))


def test_deepcopy_keeps_embed_bound_to_the_copy() -> None:
    """EMA (timm ModelEmaV3) deep-copies the model: the copy's embed must read the copy's weights."""
    import copy

    for model in (create_model("simple_cnn", num_classes=3), create_model("simple_cnn", num_classes=3, pool="gem")):
        twin = copy.deepcopy(model).eval()
        with torch.no_grad():
            for p in twin.parameters():
                p.add_(torch.randn_like(p))
            x = torch.randn(2, 3, 32, 32)
            assert not torch.allclose(twin.embed(x), model.eval().embed(x))
            torch.testing.assert_close(twin.embed(x), embed(twin, x))


def test_reparameterize_passes_through_the_head() -> None:
    torch.manual_seed(0)
    model = create_model("van_replk_b0", num_classes=3, small_input=True, head="arcface", neck="linear")
    for m in model.modules():  # non-trivial BN statistics, so the fusion has something to fold
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        before = model.eval()(x)
        convs = [m for m in model.modules() if hasattr(m, "fused")]
        assert convs and not any(c.fused for c in convs)
        model.reparameterize()
        assert all(c.fused for c in convs)
        torch.testing.assert_close(model(x), before, atol=1e-4, rtol=1e-4)
