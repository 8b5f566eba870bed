"""Where and in which precision a process runs: the decisions every stage shares.

``auto`` settings are resolved here once (bf16 only where it is native, channels_last where it
pays), and :func:`new_accelerator` gives the one ``Accelerator`` of a stage.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

log = logging.getLogger(__name__)


def _cgroup_quota(text: str, root: Path) -> float | None:
    """The tightest CPU quota (in CPUs) over this process's cgroup and its ancestors, v2 or v1.

    ``text`` is ``/proc/self/cgroup``; inside a container's cgroup namespace the path is ``/`` and
    the limit sits on the mount root itself, which the walk up reaches too."""
    quotas = []
    for line in text.splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        v2 = controllers == ""
        if not (v2 or "cpu" in controllers.split(",")):
            continue
        bases = [root] if v2 else [root / controllers, root / "cpu", root / "cpu,cpuacct"]
        for base in bases:
            here = base / path.strip().lstrip("/")
            for folder in [here, *here.parents]:
                if not folder.is_relative_to(base):
                    break
                quotas.append(_quota_in(folder, v2))
    found = [q for q in quotas if q]
    return min(found) if found else None


def _quota_in(folder: Path, v2: bool) -> float | None:
    """``cpu.max`` (v2: "quota period" or "max period") or ``cpu.cfs_quota_us`` / ``cfs_period_us`` (v1: -1 = none)."""
    try:
        if v2:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
        else:
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()
            period = (folder / "cpu.cfs_period_us").read_text().strip()
        return int(quota) / int(period) if quota not in ("max", "-1") and int(period) > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus(proc_cgroup: str = "/proc/self/cgroup", cgroup_root: str = "/sys/fs/cgroup") -> int:
    """The CPUs this process may really use: its affinity mask (taskset, Slurm, numactl), capped by
    a cgroup CPU quota (Docker ``--cpus``, Kubernetes limits), which ``os.cpu_count()`` and torch's
    default ignore: 16 threads on a 2-CPU quota spend their time throttled."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        n = os.cpu_count() or 1
    try:
        text = Path(proc_cgroup).read_text()
    except OSError:
        text = ""
    quota = _cgroup_quota(text, Path(cgroup_root)) if text else None
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def configure_threads(cpus: int | None = None) -> int:
    """Size torch's and OpenCV's thread pools to :func:`available_cpus` (or ``cpus``); returns it.

    torch's default (the host's physical cores) is only lowered, never raised, and an explicit
    ``OMP_NUM_THREADS`` / ``OPENCV_FOR_THREADS_NUM`` is the user's choice and kept. OpenCV is not
    imported for this (it costs start-up): its environment variable is read when it loads.
    """
    n = cpus or available_cpus()
    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > n:
        torch.set_num_threads(n)
    if "OPENCV_FOR_THREADS_NUM" not in os.environ:
        os.environ["OPENCV_FOR_THREADS_NUM"] = str(n)
        if "cv2" in sys.modules:
            sys.modules["cv2"].setNumThreads(n)
    log.debug("%d CPUs available: torch %d threads", n, torch.get_num_threads())
    return n


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
