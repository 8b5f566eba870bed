"""``python -m pipeline {train,ensemble} [--config FILE] [key=value ...]``.

Multi-process: ``accelerate launch --multi_gpu --num_processes N -m pipeline train ...``
(on CPU add ``ACCELERATE_USE_CPU=true``).
"""

from __future__ import annotations

import argparse
import os
import sys

from common.cli import run_main
from common.config import load_stage_config


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("train", "ensemble"):
        s = sub.add_parser(name)
        s.add_argument("--config", help="experiment YAML (configs/*.yaml)")
        s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=3 models=resnet18,simple_cnn")
    args = p.parse_args(argv)
    if args.cmd == "train":
        from pipeline.config import TrainConfig
        from pipeline.train import run_train

        cfg = load_stage_config(TrainConfig, "train", args.config, args.overrides)
        for s in run_train(cfg):
            print(
                f"{s['model']} fold {s['fold']}: top1 {s.get('val_top1', float('nan')):.4f} "
                f"top5 {s.get('val_top5', float('nan')):.4f} gap {s.get('val_gap', float('nan')):.4f}"
            )
    else:
        from pipeline.config import EnsembleConfig
        from pipeline.ensemble import run_ensemble

        out = run_ensemble(load_stage_config(EnsembleConfig, "ensemble", args.config, args.overrides))
        print(f"submission: {out['submission']}\nleaderboard: {out['leaderboard']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
