"""Training throughput (images/s) per precision and memory format, on this machine.

Why: the engine's ``mixed_precision=auto`` / ``channels_last=auto`` choose per hardware; this
is the measurement behind that choice. One optimizer step = forward + backward + Adam step on
random inputs (no data loading), after warm-up steps.

    .venv/bin/python bench/bench_train.py [--quick] [--steps 12]   (30 s with native bf16; minutes on AVX2-only CPUs)
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.nn.functional as F

from pipeline.models import create_model
from pipeline.runtime import cpu_has_fast_bf16

CASES = [  # (model, image size, batch, small_input); small batches: bf16 is very slow without native support
    ("simple_cnn", 64, 32, False),
    ("resnet18", 64, 16, False),
    ("resnet18", 32, 16, True),
    ("resnet50", 224, 2, False),
]


def step_rate(name: str, size: int, batch: int, small: bool, bf16: bool, channels_last: bool, steps: int) -> float:
    torch.manual_seed(0)
    model = create_model(name, num_classes=100, small_input=small)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 100, (batch,))
    t0 = 0.0
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()  # first step is warm-up
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2 timed steps per cell (a smoke run)")
    ap.add_argument("--steps", type=int, default=12, help="timed steps per cell after the warm-up")
    args = ap.parse_args()
    steps = 2 if args.quick else args.steps
    print(
        f"# cpu: {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}, "
        f"native bf16: {cpu_has_fast_bf16()}, torch {torch.__version__}, {steps} steps per cell, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    print("| model | input | batch | fp32 | fp32 + channels_last | bf16 autocast | bf16 + channels_last |")
    print("|---|---|---|---|---|---|---|")
    for name, size, batch, small in CASES:
        rates = [
            step_rate(name, size, batch, small, bf16, cl, steps)
            for bf16, cl in ((False, False), (False, True), (True, False), (True, True))
        ]
        stem = " (3x3 stem)" if small else ""
        print(f"| {name}{stem} | {size} | {batch} | " + " | ".join(f"{r:.1f}" for r in rates) + " |", flush=True)


if __name__ == "__main__":
    main()
