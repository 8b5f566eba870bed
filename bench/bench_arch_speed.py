"""Training speed of the seed's nets per MAC: is ResNeAt's attention as efficient as a convolution?

Why: ResNeAt-50's channel attention (``softmax(Q K^T / sqrt(s)) V`` between channels) ran as eager
ops whose cost was not in its MACs (allocation and passes over (B, ch, ch) tensors); this measures
images/s and images/s per GMAC against ResNeXt-50, SE-ResNet-50, Inception-Res-PA and ResNet-50
with attention plug-ins. One step = forward + backward + Adam step on random inputs, bf16 autocast
+ channels_last (what ``mixed_precision=auto`` / ``channels_last=auto`` pick on this CPU), after
warm-up steps. MACs are the project's counter (``pipeline.models.profile``: FLOPs / 2 of the ops
that run, so a cheaper evaluation order counts fewer MACs). ``resneat50 (eager formula)`` is
ResNeAt-50 with the report's formula run op by op (:func:`pipeline.models.resneat._reference_scale`),
the before of the fused attention; its MACs are those of the formula.

The machine is shared: every model is measured once per round and rounds repeat (A B A B), so a
burst of load shows up as a disagreement between rounds rather than as a bias against one model.
Both rates are printed: wall-clock img/s, and img/s per CPU-second of this process
(``time.process_time``), which leaves out the time the process waited for a core while other
jobs ran; with one thread the CPU-time rate is the steadier number and the one the ratios use.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_arch_speed.py [--quick] [--rounds 2] [--steps 3]

``--interleave N`` measures the other way, for two or three rows: every model is built once, then
their training steps alternate (A B A B ..., N timed steps each after the warm-up) in one process,
and the table gives each model's median seconds per step (CPU time with one thread, wall-clock
with more) and the median over the step pairs of
the per-GMAC ratio to ResNeXt-50 (which must be one of the rows). Drift of the machine (other tenants, the
allocator's state) then hits both models within seconds of each other instead of a round apart.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common.errors import PipelineError  # noqa: E402
from pipeline.models import create_model, list_models  # noqa: E402
from pipeline.models import resneat as resneat_mod  # noqa: E402
from pipeline.models.profile import measure  # noqa: E402
from pipeline.runtime import cpu_has_fast_bf16  # noqa: E402

EAGER = "resneat50 (eager formula)"
BASELINE = "resnext50_32x4d"
MODELS = [
    "resneat50",
    EAGER,
    "resnext50_32x4d",
    "seresnet50",
    "inception_res_pa",
    "resnet50",
    "resnet50_se",
    "resnet50_eca",
    "resnet50_cbam",
    "resnet50_gc",
    "resnet50_coord",
    "resnet50_triplet",
]


def _variant(label: str) -> tuple[str, Callable[[], AbstractContextManager]]:
    """(registry name, context) of a table row: the eager row swaps in the reference formula."""
    if label == EAGER:
        return "resneat50", lambda: mock.patch.object(resneat_mod.AttentionUnit, "scale", resneat_mod._reference_scale)
    if label not in list_models():
        raise PipelineError(f"bench_arch_speed: unknown model '{label}' (see python -m pipeline.models list --names)")
    return label, nullcontext


def _trainer(name: str, size: int, batch: int) -> Callable[[], None]:
    """One training step (forward + backward + Adam, bf16 autocast + channels_last) of a fresh model."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=1000).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def step_rate(label: str, size: int, batch: int, warmup: int, steps: int) -> tuple[float, float]:
    """(wall-clock, CPU-time) images/s of forward + backward + Adam, bf16 autocast + channels_last."""
    name, context = _variant(label)
    with context():
        step = _trainer(name, size, batch)
        t0 = c0 = 0.0
        for i in range(warmup + steps):
            if i == warmup:
                t0, c0 = time.perf_counter(), time.process_time()
            step()
        return batch * steps / (time.perf_counter() - t0), batch * steps / (time.process_time() - c0)


def interleaved(
    models: list[str], size: int, batch: int, warmup: int, steps: int, clock: Callable[[], float]
) -> dict[str, list[float]]:
    """Seconds (``clock``) of each timed step of each model, the models' steps alternating in one process."""
    if EAGER in models:
        raise PipelineError("bench_arch_speed: --interleave cannot mix the eager formula with the fused net")
    trainers = {m: _trainer(_variant(m)[0], size, batch) for m in models}
    seconds: dict[str, list[float]] = {m: [] for m in models}
    for i in range(warmup + steps):
        for m, step in trainers.items():
            c0 = clock()
            step()
            if i >= warmup:
                seconds[m].append(clock() - c0)
    return seconds


def interleaved_table(seconds: dict[str, list[float]], gmacs: dict[str, float], batch: int, unit: str) -> str:
    """Median s/step per model; per-GMAC ratio to ResNeXt-50 from the medians and over step pairs."""
    if BASELINE not in seconds:
        raise PipelineError(f"bench_arch_speed: --interleave needs {BASELINE} among --models")
    base = seconds[BASELINE]
    lines = [f"| model | GMACs | {unit} s/step (median) | range | img/s per GMAC | vs ResNeXt-50 (medians) "
             "| vs ResNeXt-50, median over step pairs (range) |", "|---|---:|---:|---|---:|---:|---|"]  # fmt: skip
    for m, sec in seconds.items():
        med = statistics.median(sec)
        pairs = [(b * gmacs[BASELINE]) / (a * gmacs[m]) for a, b in zip(sec, base)]
        rel = statistics.median(base) * gmacs[BASELINE] / (med * gmacs[m])
        lines.append(f"| {m} | {gmacs[m]:.3f} | {med:.3f} | {min(sec):.3f}-{max(sec):.3f} | "
                     f"{batch / med / gmacs[m]:.3f} | {rel:.3f} | {statistics.median(pairs):.3f} "
                     f"({min(pairs):.3f}-{max(pairs):.3f}) |")  # fmt: skip
    return "\n".join(lines)


def macs(label: str, size: int) -> int:
    """MACs of one image with the project's counter (for the eager row: of the formula as written)."""
    name, context = _variant(label)
    with context():
        return measure(lambda: create_model(name, num_classes=1000), size)[1]


def table(rows: list[dict]) -> str:
    """Markdown table; the last column is img/s per GMAC relative to ResNeXt-50's (1.0 = as efficient)."""
    base = next((r["per_gmac"] for r in rows if r["model"] == BASELINE), None)
    n_rounds = len(rows[0]["cpu_rounds"])
    head = ["model", "GMACs", "img/s (wall)", *[f"img/s CPU r{i + 1}" for i in range(n_rounds)], "img/s CPU"]
    head += ["img/s CPU per GMAC", "vs ResNeXt-50"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        rel = f"{r['per_gmac'] / base:.2f}" if base else "-"
        cells = [r["model"], f"{r['gmacs']:.3f}", f"{r['wall_img_s']:.2f}", *[f"{v:.2f}" for v in r["cpu_rounds"]]]
        lines.append("| " + " | ".join([*cells, f"{r['img_s']:.2f}", f"{r['per_gmac']:.3f}", rel]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224, help="input side in pixels (default 224)")
    ap.add_argument("--batch", type=int, default=8, help="images per step (default 8)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per measurement (default 2)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per measurement (default 3)")
    ap.add_argument("--rounds", type=int, default=2, help="passes over all models, A B A B (default 2)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated table rows")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 px, batch 2, 1 step, 1 round, 3 models")
    ap.add_argument("--interleave", type=int, default=0, metavar="N",
                    help="N timed steps per model, the models' steps alternating in one process (see above)")
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.quick:
        args.size, args.batch, args.warmup, args.steps, args.rounds = 64, 2, 1, 1, 1
        models = ["resneat50", EAGER, BASELINE]
    try:
        if min(args.size, args.batch, args.steps, args.rounds) <= 0 or args.warmup < 0:
            raise PipelineError("bench_arch_speed: --size, --batch, --steps, --rounds must be positive")
        gmacs = {m: macs(m, args.size) / 1e9 for m in models}
        load = [os.getloadavg()[0]]
        print(
            f"# cpu: {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}, "
            f"native bf16: {cpu_has_fast_bf16()}, torch {torch.__version__}, bf16 autocast + channels_last, "
            f"{args.size} px, batch {args.batch}, {args.warmup} warm-up + {args.steps} timed steps, "
            f"{args.rounds} round(s), load {load[0]:.2f}",
            flush=True,
        )
        if args.interleave > 0:
            # one thread: CPU time (leaves out waits for a core); more: wall-clock (CPU time sums the threads)
            one = torch.get_num_threads() == 1
            clock, unit = (time.process_time, "CPU") if one else (time.perf_counter, "wall")
            seconds = interleaved(models, args.size, args.batch, args.warmup, args.interleave, clock)
            print(interleaved_table(seconds, gmacs, args.batch, unit))
            print(f"# load average (1 min) at the start and the end: {load[0]:.2f}, {os.getloadavg()[0]:.2f}")
            result = {"precision": "bf16", "threads": torch.get_num_threads(), "size": args.size, "batch": args.batch}
            print("RESULT", json.dumps({**result, "gmacs": gmacs, f"{unit.lower()}_seconds": seconds}))
            return 0
        rates: dict[str, list[tuple[float, float]]] = {m: [] for m in models}
        for _ in range(args.rounds):
            for m in models:
                rates[m].append(step_rate(m, args.size, args.batch, args.warmup, args.steps))
                wall, cpu = rates[m][-1]
                print(f"#   {m}: {wall:.2f} img/s wall, {cpu:.2f} per CPU-s, load {os.getloadavg()[0]:.2f}", flush=True)
            load.append(os.getloadavg()[0])
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = []
    for m in models:
        wall, cpu = [r[0] for r in rates[m]], [r[1] for r in rates[m]]
        img_s = statistics.mean(cpu)
        rows.append(
            {
                "model": m,
                "gmacs": gmacs[m],
                "wall_rounds": wall,
                "wall_img_s": statistics.mean(wall),
                "cpu_rounds": cpu,
                "img_s": img_s,
                "per_gmac": img_s / gmacs[m],
            }
        )
    print(table(rows))
    print(f"# load average (1 min) at the start and after each round: {', '.join(f'{v:.2f}' for v in load)}")
    result = {
        "precision": "bf16",
        "rate": "images per CPU-second of the process (img_s, per_gmac); wall-clock in wall_*",
        "channels_last": True,
        "threads": torch.get_num_threads(),
        "size": args.size,
        "batch": args.batch,
        "load": load,
        "rows": rows,
    }
    print("RESULT", json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
