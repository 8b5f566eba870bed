"""``timm:<name>`` models (pipeline/models/timm_models.py) and local weights files for every model
(pipeline/models/weights.py). Real forwards run at the smallest sizes; the rest on the meta device."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn

from common.errors import PipelineError
from pipeline.models import check_input_size, create_model, list_models, min_input_size, model_info
from pipeline.models.weights import load_weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "name, size, small_size",
    [("timm:efficientnet_b0", 32, 16), ("timm:convnext_atto", 32, 8), ("timm:resnet10t", 32, 8)],
)
def test_timm_models_build_and_train_at_tiny_sizes(name: str, size: int, small_size: int) -> None:
    assert (min_input_size(name), min_input_size(name, small_input=True)) == (size, small_size)
    for small, side in ((False, size), (True, small_size)):
        torch.manual_seed(0)
        model = create_model(name, num_classes=3, small_input=small)
        out = model.train()(torch.randn(2, 3, side, side))
        assert out.shape == (2, 3) and torch.isfinite(out).all()
        out.pow(2).mean().backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        assert model.model_name == name and model.min_size == side
        with pytest.raises(ValueError, match=f"needs inputs of at least {side}x{side}"):
            model.eval()(torch.randn(1, 3, side - 1, side - 1))


def test_timm_model_with_a_head() -> None:
    torch.manual_seed(0)
    head = dict(pool="gem", neck="linear", embedding_size=8, head="subcenter_arcface")
    model = create_model("timm:efficientnet_b0", num_classes=4, small_input=True, **head)
    out = model.train()(torch.randn(2, 3, 16, 16), torch.tensor([1, 3]))
    assert out.shape == (2, 4) and model.needs_target and model.embed(torch.randn(2, 3, 16, 16)).shape == (2, 8)


def test_timm_names_in_the_registry_helpers() -> None:
    info = model_info("timm:efficientnet_b0")
    assert info.family == "timm" and info.pretrained and "EfficientNet" in info.paper
    check_input_size("timm:efficientnet_b0", 32)
    with pytest.raises(PipelineError, match=r"model 'timm:efficientnet_b0' needs inputs of at least 32x32, got 31"):
        check_input_size("timm:efficientnet_b0", 31)
    assert not any(n.startswith("timm:") for n in list_models())
    assert model_info("timm:inception_v3").min_size == 96  # valid convs: the smallest multiple of 32 that runs
    assert model_info("timm:vit_tiny_patch16_224").min_size == 224  # a fixed input size


def test_unknown_timm_name_lists_close_matches() -> None:
    with pytest.raises(PipelineError, match=r"unknown timm model 'efficientnet_b9' \(did you mean: efficientnet_b8"):
        create_model("timm:efficientnet_b9", num_classes=3)
    with pytest.raises(
        PipelineError, match=r"unknown timm pretrained tag 'resnet50.a9_in1k' \(did you mean: .*a1_in1k"
    ):
        model_info("timm:resnet50.a9_in1k")
    with pytest.raises(PipelineError, match="empty timm model name"):
        model_info("timm:")


def test_small_input_where_the_stem_cannot_be_swapped() -> None:
    with pytest.raises(PipelineError, match=r"'timm:vit_tiny_patch16_224' has no small-input .* ResNet"):
        create_model("timm:vit_tiny_patch16_224", num_classes=3, small_input=True)


def test_pretrained_offline_is_one_line(monkeypatch, tmp_path) -> None:
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))  # an empty cache: nothing to fall back on
    with pytest.raises(PipelineError, match="could not load pretrained weights for 'convnext_atto'") as err:
        create_model("timm:convnext_atto", num_classes=3, pretrained=True)
    assert "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())  # nothing was downloaded


def test_pretrained_true_without_library_weights() -> None:
    with pytest.raises(PipelineError, match="'resneat50' has no pretrained weights"):
        create_model("resneat50", num_classes=3, pretrained=True)


# ----------------------------------------------------------------------------- local weights files


def _source(name: str, num_classes: int = 10) -> nn.Module:
    torch.manual_seed(1)
    return create_model(name, num_classes=num_classes)


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "ddp"])
def test_local_weights_load_and_skip_the_other_classifier(tmp_path, caplog, wrap: str) -> None:
    src = _source("resnet18").state_dict()
    obj = {
        "plain": src,
        "model": {"model": src, "epoch": 3},
        "state_dict": {"state_dict": src},
        "ddp": {f"module.{k}": v for k, v in src.items()},
    }[wrap]
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    torch.manual_seed(2)
    with caplog.at_level(logging.INFO, logger="pipeline.models.weights"):
        model = create_model("resnet18", num_classes=3, pretrained=str(path))
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in src.items() if not k.startswith("fc."))
    assert own["fc.weight"].shape == (3, 512)
    assert "skipped (shape differs): fc.weight (10, 512) in the file, (3, 512) here" in caplog.text


def test_local_weights_for_timm_and_registered_models_and_under_a_head(tmp_path) -> None:
    from safetensors.torch import save_file

    src = _source("timm:convnext_atto").state_dict()
    save_file(src, str(tmp_path / "convnext.safetensors"))
    model = create_model("timm:convnext_atto", num_classes=3, pretrained=tmp_path / "convnext.safetensors")
    assert torch.equal(model.state_dict()["stem.0.weight"], src["stem.0.weight"])
    # a model without library weights, under a head: the backbone gets the file's tensors
    torch.save(_source("resneat50").state_dict(), tmp_path / "resneat.pt")
    headed = create_model("resneat50", num_classes=3, pretrained=tmp_path / "resneat.pt", head="arcface", neck="linear")
    ref = torch.load(tmp_path / "resneat.pt", weights_only=True)
    assert torch.equal(headed.state_dict()["backbone.conv1.weight"], ref["conv1.weight"])


def test_headed_checkpoint_backbone_loads_into_a_plain_model(tmp_path) -> None:
    headed = create_model("resnet18", num_classes=3, head="arcface")
    torch.save({"model": headed.state_dict()}, tmp_path / "best.pt")
    report = load_weights(create_model("resnet18", num_classes=3), tmp_path / "best.pt")
    assert "layer4.1.bn2.weight" in report.loaded and report.missing == ["fc.weight", "fc.bias"]


def test_bad_weights_files_are_one_clear_error(tmp_path) -> None:
    with pytest.raises(PipelineError, match="weights file '.*nope.pt' not found"):
        create_model("resnet18", num_classes=3, pretrained=tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(PipelineError, match="junk.pt' cannot be read") as err:
        create_model("resnet18", num_classes=3, pretrained=tmp_path / "junk.pt")
    assert "\n" not in str(err.value)
    torch.save(create_model("simple_cnn", num_classes=3).state_dict(), tmp_path / "other.pt")
    with pytest.raises(
        PipelineError, match=r"other.pt' matches none of the \d+ tensors of model 'resnet18' outside its classifier"
    ):
        create_model("resnet18", num_classes=3, pretrained=tmp_path / "other.pt")
    torch.save({"epoch": 3}, tmp_path / "empty.pt")
    with pytest.raises(PipelineError, match="holds no tensors"):
        create_model("resnet18", num_classes=3, pretrained=tmp_path / "empty.pt")
