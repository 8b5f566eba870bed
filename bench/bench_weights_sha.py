"""What recording and checking the weights identity of prediction files costs (issue 18).

    .venv/bin/python bench/bench_weights_sha.py [--sizes-mb 45,100,350] [--runs 20] [--files 3]

Every prediction file records the sha256 of the ``best.pt`` it was predicted with; the ensemble
and submit stages compare it with the run's current ``best.pt``
(:func:`pipeline.runs.predfile.weights_sha`, cached by path, mtime and size). This writes
random ``best.pt`` files of checkpoint-like sizes (45 MB ~ resnet18, 100 MB ~ resnet50 with a
1000-class head, 350 MB ~ a large backbone) and times the first hash (the file freshly
written, so usually in the page cache: compute, not disk), the cached second call, and a stage
checking ``files`` prediction files in each of ``runs`` run folders (one hash per run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import schema  # noqa: E402
from pipeline.runs import predfile  # noqa: E402


def _write(path: Path, mb: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(1 << 20))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes-mb", default="45,100,350")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--files", type=int, default=3, help="prediction files checked per run")
    p.add_argument("--stage-mb", type=int, default=45, help="best.pt size of the stage rehearsal")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_weights_sha_"))
    rows = []
    try:
        for mb in [int(s) for s in args.sizes_mb.split(",")]:
            best = tmp / f"r{mb}" / schema.RUN_BEST
            _write(best, mb)
            first = _timed(lambda b=best: predfile.weights_sha(b))
            cached = _timed(lambda b=best: predfile.weights_sha(b))
            rows.append({"best_pt_mb": mb, "first_s": round(first, 3), "cached_us": round(cached * 1e6, 1),
                         "mb_per_s": round(mb / first)})  # fmt: skip
        runs = [tmp / "stage" / f"run{i}" for i in range(args.runs)]
        for d in runs:
            _write(d / schema.RUN_BEST, args.stage_mb)
        predfile._SHA_CACHE.clear()
        meta = {predfile.WEIGHTS_KEY: "0" * 64}
        stage = _timed(lambda: [predfile.stale_weights(d / f"f{k}.npz", meta) for d in runs for k in range(args.files)])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("| best.pt MB | first hash s | cached call us | MB/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['best_pt_mb']} | {r['first_s']} | {r['cached_us']} | {r['mb_per_s']} |")
    print(f"stage: {args.runs} runs x {args.files} files, best.pt {args.stage_mb} MB each: {stage:.2f} s")
    result = {"sizes": rows, "stage_runs": args.runs, "stage_files": args.files, "stage_s": round(stage, 2)}
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
