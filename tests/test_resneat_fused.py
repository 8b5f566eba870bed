"""ResNeAt's fused attention unit against the report's formula (issue 22, part 4).

The fused ``AttentionUnit.scale`` evaluates ``sigmoid(softmax(Q K^T / sqrt(s)) V)`` in another
order (Gram path ``Wq (X X^T) Wk^T`` or direct ``Q K^T``, logits in cache-sized blocks, custom
backward); these tests hold it to :func:`_reference_scale`, the formula op by op.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import pipeline.models.resneat as resneat
from pipeline.models import create_model
from pipeline.models.resneat import AttentionUnit, _reference_scale

PATHS = {"gram": True, "direct": False}


def _unit(w: int = 64, ch: int = 128, dtype: torch.dtype = torch.float64) -> AttentionUnit:
    torch.manual_seed(0)
    au = AttentionUnit(w, ch, groups=32).to(dtype)
    for conv in (au.key, au.query, au.value):  # larger than the init, so the softmax is far from uniform
        torch.nn.init.normal_(conv.weight, std=0.5)
    return au


def _grads(fn, au: AttentionUnit, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
    out = fn(au, x)
    params = [x, au.key.weight, au.query.weight, au.value.weight]
    return (out, *torch.autograd.grad(out, params, g))


def _fused(au: AttentionUnit, x: torch.Tensor) -> torch.Tensor:
    return au.scale(x)


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("chunk", [1 << 19, 700, 1])  # one block; several rows per block; one group/row per block
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_fused_scale_and_gradients_equal_the_formula(monkeypatch, path, chunk, dtype, layout) -> None:
    monkeypatch.setattr(resneat, "_gram_is_cheaper", lambda *a: PATHS[path])
    monkeypatch.setattr(resneat, "_CHUNK_ELEMENTS", chunk)
    au = _unit(dtype=dtype)
    x = torch.randn(3, 64, 5, 4, dtype=dtype).relu().contiguous(memory_format=layout)
    x.requires_grad_()
    g = torch.randn(3, 128, 1, 1, dtype=dtype)
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 1e-6}
    for got, want in zip(_grads(_fused, au, x, g), _grads(_reference_scale, au, x, g)):
        torch.testing.assert_close(got, want, **tol)


def test_the_units_own_forward_uses_the_fused_scale(monkeypatch) -> None:
    """``AttentionUnit.forward`` = fused scale * BN(O), equal to the formula on a 1x1 map too."""
    au = _unit(dtype=torch.float32).eval()
    for hw in [(1, 1), (6, 6)]:
        x = torch.randn(2, 64, *hw).relu()
        expected = _reference_scale(au, x) * au.norm(au.out(x))
        torch.testing.assert_close(au(x), expected, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(128, 256, 3136), (512, 1024, 196), (1024, 2048, 49), (1024, 2048, 9)])
def test_the_path_chosen_is_the_one_that_counts_fewer_macs(monkeypatch, shape) -> None:
    w, ch, s = shape
    counted = {}
    for path, gram in PATHS.items():
        monkeypatch.setattr(resneat, "_gram_is_cheaper", lambda *a, gram=gram: gram)
        with torch.device("meta"):
            au = AttentionUnit(w, ch)
            counter = FlopCounterMode(display=False)
            with counter:
                au.scale(torch.zeros(1, w, s, 1))
        counted[path] = counter.get_total_flops()
    monkeypatch.undo()
    chosen = "gram" if resneat._gram_is_cheaper(w, ch, 32, s) else "direct"
    assert counted[chosen] == min(counted.values()), counted


def test_bf16_error_is_no_worse_than_the_formula_in_bf16() -> None:
    """Under bf16 autocast (the training precision) both orders round; the fused one must not round worse."""
    au = _unit(128, 256, torch.float32)
    x = torch.randn(4, 128, 14, 14).relu().contiguous(memory_format=torch.channels_last)
    exact = _reference_scale(au.double(), x.double())
    au.float()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        err_fused = (au.scale(x).double() - exact).abs().max().item()
        err_formula = (_reference_scale(au, x).double() - exact).abs().max().item()
    assert err_fused <= 2 * err_formula + 1e-3, (err_fused, err_formula)


def test_resneat50_outputs_and_gradients_equal_the_formula(monkeypatch) -> None:
    """The whole net (both paths run: Gram in the early stages, direct in the last), fp32."""
    torch.manual_seed(0)
    model = create_model("resneat50", num_classes=5, small_input=True)
    x = torch.randn(2, 3, 32, 32)
    runs = []
    for scale in (AttentionUnit.scale, _reference_scale):
        monkeypatch.setattr(AttentionUnit, "scale", scale)
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        runs.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (out_f, grads_f), (out_r, grads_r) = runs
    torch.testing.assert_close(out_f, out_r, rtol=1e-4, atol=1e-5)
    for gf, gr in zip(grads_f, grads_r):
        torch.testing.assert_close(gf, gr, rtol=1e-3, atol=1e-5)


def test_state_dict_keys_are_the_ones_old_checkpoints_have() -> None:
    au = AttentionUnit(64, 128)
    assert sorted(au.state_dict()) == sorted(
        [f"{conv}.weight" for conv in ("key", "query", "value", "out")]
        + [f"norm.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    )
