"""Where and in which precision a process runs: the decisions every stage shares.

``auto`` settings are resolved here once (bf16 only where it is native, channels_last where it
pays), and :func:`new_accelerator` gives the one ``Accelerator`` of a stage.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator


def cpu_has_fast_bf16() -> bool:
    """True when oneDNN has native bf16 kernels (AVX512-BF16 / AMX).

    Measured on AVX2-only EPYC machines (BENCHMARKS.md): bf16 autocast makes ResNet-18 training
    4-20x *slower* and channels_last ~20% slower, so neither is a default there; on CPUs with
    native bf16 both are reported to give 1.5-2.8x.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _on_gpu(cpu: bool) -> bool:
    return torch.cuda.is_available() and not cpu


def gpu_has_native_bf16() -> bool:
    """True on GPUs with bf16 tensor cores (Ampere and later). ``is_bf16_supported()`` alone also
    says yes where bf16 is only emulated (T4, P100, V100): there fp16 with a GradScaler is the
    fast choice, so emulation does not count."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch without the keyword: compute capability 8.0 is Ampere
        return torch.cuda.get_device_capability()[0] >= 8


def resolve_mixed_precision(requested: str, cpu: bool = False) -> str:
    """``auto`` -> bf16 on bf16-capable GPUs (else fp16), bf16 on CPUs with native bf16, else no."""
    if requested != "auto":
        return requested
    if _on_gpu(cpu):
        return "bf16" if gpu_has_native_bf16() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "no"


def resolve_channels_last(requested: str, cpu: bool = False) -> bool:
    """``auto`` -> channels_last on GPUs and on CPUs with native bf16; contiguous otherwise."""
    if requested != "auto":
        return requested == "true"
    return _on_gpu(cpu) or cpu_has_fast_bf16()


def new_accelerator(mixed_precision: str = "auto", cpu: bool = False, **kw) -> Accelerator:
    """An ``Accelerator`` with the resolved precision.

    Accelerate keeps one global state per process and refuses a second Accelerator with another
    precision. A process that trains and then predicts with another precision (a notebook, the
    tests) gets a fresh precision state; the distributed set-up (``PartialState``) is kept.
    """
    from accelerate.state import AcceleratorState

    precision = resolve_mixed_precision(mixed_precision, cpu)
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") not in (None, precision):
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=precision, cpu=cpu, **kw)
