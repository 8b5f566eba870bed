"""What test-time augmentation costs and gives: prediction speed and scores per TTA setting.

Why: ``predict tta_flip=true tta_scales=...`` multiplies the forward passes (flip x2, three
scales x3, both x6, and 1.25 x the pixels costs ~1.6x); this measures the time against the
change of top-1/GAP on finished runs, so the choice is a number and not a habit. Nothing is
written: the runs are predicted in memory (the same loop as the predict stage).

    .venv/bin/python bench/bench_tta.py --data-root data --dataset synthetic --runs-root runs \
        --experiment default [--manifest test] [--precision auto|no|bf16]

Needs finished runs (``make all``). Prints a table and a ``RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from common import schema
from pipeline.config_stages import PredictConfig
from pipeline.infer.core import Job, check_runs, iter_predictions, make_accelerator
from pipeline.infer.tta import TTA
from pipeline.metrics import score_all
from pipeline.runs.prep import read_prep_identity
from pipeline.runs.scan import finished_runs
from pipeline.runtime import cpu_has_fast_bf16

SETTINGS = {  # name -> (flip, scales)
    "plain": (False, (1.0,)),
    "flip": (True, (1.0,)),
    "scales 0.75/1/1.25": (False, (0.75, 1.0, 1.25)),
    "flip + scales": (True, (0.75, 1.0, 1.25)),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--runs-root", default="runs")
    ap.add_argument("--experiment", default="default")
    ap.add_argument("--manifest", default="test")
    ap.add_argument("--precision", default="auto", help="auto | no | bf16")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    cfg = PredictConfig(
        dataset=args.dataset,
        data_root=args.data_root,
        runs_root=args.runs_root,
        experiment=args.experiment,
        mixed_precision=args.precision,
        batch_size=args.batch_size,
        progress=False,
    )
    data_dir = Path(args.data_root) / args.dataset
    if not (Path(args.runs_root) / args.experiment).is_dir():  # make bench on a fresh checkout
        print(f"skipped: no trained runs in {Path(args.runs_root) / args.experiment} (run 'make all' first)")
        print("RESULT " + json.dumps({"skipped": "no runs"}))
        return
    label_map = schema.read_label_map(data_dir)
    rows = schema.read_manifest(data_dir, args.manifest)
    runs = finished_runs(args.runs_root, args.experiment)
    acc = make_accelerator(cfg)
    current = read_prep_identity(data_dir)
    print(
        f"# {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}, native bf16 "
        f"{cpu_has_fast_bf16()}, precision {acc.mixed_precision}, load {os.getloadavg()[0]:.1f}, "
        f"{len(runs)} runs x {len(rows)} {args.manifest} rows"
    )
    print("| TTA | views | seconds | images/s | top1 | gap | top1 (ensemble) | gap (ensemble) |")
    print("|---|---|---|---|---|---|---|---|")
    result = {}
    for name, (flip, scales) in SETTINGS.items():
        tta = TTA(flip, scales)
        try:
            infos = check_runs(runs, data_dir, label_map, data_dir / schema.LABEL_MAP, current, tta)
        except Exception as e:  # noqa: BLE001 - e.g. a scale below a model's minimum input
            print(f"| {name} | {tta.n_views} | skipped: {e} |")
            continue
        jobs = {i.run_dir: [Job(args.manifest, data_dir, rows)] for i in infos}
        t0 = time.perf_counter()
        probs = [out["probs"] for _, _, out in iter_predictions(infos, jobs, cfg, acc, tta)]
        seconds = time.perf_counter() - t0
        labels = rows["label"].to_numpy()
        per_run = [score_all(p, labels) for p in probs]
        ens = score_all(np.mean(probs, axis=0), labels)
        row = {
            "views": tta.n_views,
            "seconds": round(seconds, 2),
            "images_per_s": round(len(rows) * len(infos) / seconds, 1),
            "top1": round(float(np.mean([s["top1"] for s in per_run])), 4),
            "gap": round(float(np.mean([s["gap"] for s in per_run])), 4),
            "ens_top1": round(ens["top1"], 4),
            "ens_gap": round(ens["gap"], 4),
        }
        result[name] = row
        print(
            f"| {name} | {row['views']} | {row['seconds']} | {row['images_per_s']} | {row['top1']} | {row['gap']} "
            f"| {row['ens_top1']} | {row['ens_gap']} |",
            flush=True,
        )
    print("RESULT " + json.dumps({"precision": acc.mixed_precision, "load": os.getloadavg()[0], "tta": result}))


if __name__ == "__main__":
    main()
