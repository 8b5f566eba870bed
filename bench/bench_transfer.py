"""What the transfer recipe's switches cost per training step (configs/recipes/transfer.yaml).

Why: the frozen-backbone warm-up (``freeze_epochs``) skips the backbone's backward pass and
optimizer update, frozen BatchNorm (``bn_mode=frozen``) uses running statistics, and progressive
resizing trains its early stage on smaller images; this measures how much each saves on this
machine. The recipe's network (timm:efficientnet_lite0 -> GeM -> linear neck -> sub-center
ArcFace with dynamic margins, random weights: speed does not depend on them), AdamW with the
head at 10x, the project's ``train_one_epoch`` on random uint8 batches (no data loading), after
one warm-up step; the median step of each case.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_transfer.py [--steps 8] [--batch 32] [--precision no]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from pipeline.config import TrainConfig
from pipeline.models.utils import head_modules
from pipeline.optim.freeze import BackboneFreeze, freeze_batchnorm
from pipeline.optim.loss import build_loss
from pipeline.optim.optimizer import build_optimizer
from pipeline.optim.schedule import build_schedule
from pipeline.runs.model import build_model
from pipeline.runtime import new_accelerator
from pipeline.train.engine import StepParts, train_one_epoch

NET = "timm:efficientnet_lite0"
RECIPE = dict(optimizer="adamw", lr=5e-4, weight_decay=0.05, head_lr_mult=10, schedule="none", pool="gem",
              neck="linear", embedding_size=512, head="subcenter_arcface", dynamic_margin=True)  # fmt: skip
CASES = [  # (label, image side, frozen backbone, bn_mode)
    ("all layers train, BN train", 64, False, "train"),
    ("all layers train, BN frozen", 64, False, "frozen"),
    ("frozen backbone (freeze_epochs)", 64, True, "train"),
    ("early stage at 48 px", 48, False, "train"),
]


def seconds_per_step(size: int, frozen: bool, bn_mode: str, batch: int, steps: int, classes: int,
                     precision: str) -> float:  # fmt: skip
    cfg = TrainConfig(img_size=size, bn_mode=bn_mode, **RECIPE)
    acc = new_accelerator(precision, cpu=True)
    torch.manual_seed(0)
    model = build_model(cfg, NET, classes, class_counts=[10 + i for i in range(classes)])
    head = head_modules(model)
    if bn_mode == "frozen":
        freeze_batchnorm(model, head)
    opt = build_optimizer(model, cfg, head=head)
    BackboneFreeze(model, head, epochs=1).set_epoch(0 if frozen else 1)
    model, opt = acc.prepare(model, opt)
    parts = StepParts(opt, build_loss(cfg), build_schedule(opt, cfg, steps), needs_target=True)
    g = torch.Generator().manual_seed(0)
    batches = [
        {"image": torch.randint(0, 255, (batch, 3, size, size), generator=g, dtype=torch.uint8),
         "target": torch.randint(0, classes, (batch,), generator=g), "id": torch.arange(batch)}
        for _ in range(steps + 1)
    ]  # fmt: skip
    train_one_epoch(model, batches[:1], parts, acc)  # warm-up
    times = []
    for b in batches[1:]:  # the median step: other jobs on the shared cores make single steps slow
        t0 = time.perf_counter()
        train_one_epoch(model, [b], parts, acc)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8, help="timed optimizer steps per case")
    ap.add_argument("--batch", type=int, default=32, help="images per step (default.yaml's batch_size)")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--precision", default="auto", help="mixed_precision: auto (bf16 on this CPU) | no (fp32)")
    args = ap.parse_args()
    precision = new_accelerator(args.precision, cpu=True).mixed_precision
    print(f"# cpu: {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}, "
          f"mixed_precision={args.precision} -> {precision}, batch {args.batch}, median of {args.steps} steps, "
          f"load {os.getloadavg()[0]:.2f}")  # fmt: skip
    rows = []
    for label, size, frozen, bn_mode in CASES:
        s = seconds_per_step(size, frozen, bn_mode, args.batch, args.steps, args.classes, args.precision)
        rows.append({"case": label, "img_size": size, "s_per_step": round(s, 4), "img_per_s": round(args.batch / s, 1)})
    base = rows[0]["s_per_step"]
    print("| case | img_size | s/step | images/s | vs all layers |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['img_size']} | {r['s_per_step']:.3f} | {r['img_per_s']:.0f} | "
              f"{base / r['s_per_step']:.2f}x |")  # fmt: skip
    print("RESULT", json.dumps({"precision": precision, "batch": args.batch, "threads": torch.get_num_threads(),
                                "load": round(os.getloadavg()[0], 2), "rows": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
