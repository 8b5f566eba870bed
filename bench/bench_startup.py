"""Start-up of a training process: imports, a registered model and its optimizer (issue 22).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_startup.py [--model simple_cnn] [--repeat 5]

Each repeat is a fresh interpreter that imports what ``python -m pipeline train`` imports before
its first batch (the CLI, the train stage and its modules), builds ``--model`` through the
registry and creates Adam (whose constructor imports ``torch._dynamo``, ~1.2 s, in any PyTorch
script). Printed: seconds per repeat, their median, and whether timm / torchvision were imported
(a ``simple_cnn`` run needs neither since the model families load lazily, by name).
Run it from another checkout (``cd <worktree> && PYTHONPATH=. python <this file>``) for a before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import sys, time
t0 = time.perf_counter()
import torch
from pipeline.__main__ import main  # noqa: F401
import pipeline.train.build, pipeline.train.finish, pipeline.train.loop, pipeline.train.stage  # noqa: F401
from pipeline.models import create_model
torch.optim.Adam(create_model(sys.argv[1], num_classes=10).parameters())
print(time.perf_counter() - t0, "timm" in sys.modules, "torchvision" in sys.modules)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="simple_cnn")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    root = Path.cwd()
    env = {**os.environ, "PYTHONPATH": str(root)}
    runs = []
    for _ in range(args.repeat):
        cmd = [sys.executable, "-c", CHILD, args.model]
        out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"error: the start-up child failed:\n{out.stderr[-2000:]}")
        seconds, timm, tv = out.stdout.split()
        runs.append(float(seconds))
    each = ", ".join(f"{s:.2f}" for s in runs)
    print(f"{root}: {args.model}: {each} s (median {statistics.median(runs):.2f}); "
          f"timm imported: {timm}, torchvision imported: {tv}")  # fmt: skip
    print("RESULT " + json.dumps({"root": str(root), "model": args.model, "seconds": runs, "timm": timm == "True",
                                  "torchvision": tv == "True"}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
