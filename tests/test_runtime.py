"""Precision choice on hosts this machine is not: GPUs with native, emulated or no bf16."""

import torch

from pipeline import runtime


def _gpu(monkeypatch, native: bool, emulated: bool):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return native or (including_emulation and emulated)

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)


def test_auto_is_bf16_on_a_gpu_with_native_bf16(monkeypatch):
    _gpu(monkeypatch, native=True, emulated=True)
    assert runtime.resolve_mixed_precision("auto") == "bf16"


def test_auto_is_fp16_where_bf16_is_only_emulated(monkeypatch):
    """A T4/P100 reports bf16 'supported' through emulation, which runs far slower than fp16."""
    _gpu(monkeypatch, native=False, emulated=True)
    assert runtime.resolve_mixed_precision("auto") == "fp16"
    assert runtime.resolve_mixed_precision("bf16") == "bf16"  # an explicit choice is kept


def test_cpu_flag_ignores_the_gpu(monkeypatch):
    _gpu(monkeypatch, native=True, emulated=True)
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    assert runtime.resolve_mixed_precision("auto", cpu=True) == "no"
