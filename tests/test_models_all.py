"""Generic tests over every registered model (timm's ``test_models.py`` pattern).

Each model is built with 3 classes and a batch of 2 goes forward at its smallest supported input
(the small-input stem at ``min_size_small`` when the model has one, else ``min_size``): the output
is (2, 3) and finite, and every trainable parameter receives a finite gradient. Forwarding at
exactly the registered minimum also checks that the registered minimum is honest.
"""

from __future__ import annotations

import pytest
import torch

from common.errors import PipelineError
from pipeline.models import create_model, list_models, model_info

# deeper/wider siblings of families already covered by a lighter model: run with the slow set
HEAVY = {
    "densenet169",
    "densenet201",
    "inception_resnet_v2",
    "inception_v4",
    "inception_res_pa",
    "resnet101",
    "resnet152",
    "resnext101_32x4d",
    "resnext101_32x8d",
    "vgg16_bn",
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _params() -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in list_models()]


def smallest_input(name: str) -> tuple[int, bool]:
    """(side, small_input) of the cheapest input the model supports."""
    info = model_info(name)
    if info.min_size_small is not None:
        return info.min_size_small, True
    return info.min_size, False


@pytest.mark.parametrize("name", _params())
def test_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    size, small = smallest_input(name)
    model = create_model(name, num_classes=3, small_input=small)
    assert isinstance(model.num_features, int) and model.num_features > 0
    model.train()
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()
    out.float().pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad[:5]}"


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(PipelineError, match=r"unknown model 'resnet5'.*did you mean.*resnet50"):
        create_model("resnet5", num_classes=3)


@pytest.mark.parametrize("num_classes", [0, -1, 2.5])
def test_bad_num_classes(num_classes) -> None:
    with pytest.raises(PipelineError, match="num_classes must be a positive integer"):
        create_model("resnet18", num_classes=num_classes)


@pytest.mark.parametrize("name", ["resnet18", "inception_v3", "resneat50", "inception_res_pa_small"])
def test_input_below_min_size_is_a_clear_error(name: str) -> None:
    size = model_info(name).min_size
    model = create_model(name, num_classes=3).eval()
    with pytest.raises(ValueError, match=f"needs inputs of at least {size}x{size}"), torch.no_grad():
        model(torch.randn(1, 3, size - 1, size - 1))


def test_small_input_on_a_model_without_it() -> None:
    with pytest.raises(PipelineError, match="no small-input"):
        create_model("vgg11_bn", num_classes=3, small_input=True)


def test_every_builder_is_named_after_its_registry_key_and_duplicates_fail():
    from pipeline.models.factory import model_info
    from pipeline.models.registry import register_builder

    assert all(model_info(n).builder.__name__ == n for n in list_models())
    with pytest.raises(ValueError, match="'resnet50' is registered twice"):
        register_builder("resnet50", lambda **kw: None)
