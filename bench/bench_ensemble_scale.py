"""Disk and memory of ensembling at competition scale: 100k test images, 1000 classes, 20 runs;
and GLD v2's full label map as top-k files (117,577 test images x 81,313 classes x 20 runs).

    .venv/bin/python bench/bench_ensemble_scale.py [--images 100000] [--classes 1000]
        [--models 4] [--folds 5] [--methods mean,geometric] [--tmp DIR]
    .venv/bin/python bench/bench_ensemble_scale.py --images 117577 --classes 81313   # top-20 files

Above 1000 classes the files are top-k (:mod:`pipeline.scores`, k = 20), generated directly in that
form (a dense 117k x 81k matrix would be 19 GB per run): each row's 20 candidate classes with
peaked scores, the true class first for most landmark rows.

Generates ``models x folds`` prediction files (:func:`pipeline.runs.predfile.save_predictions`,
float16 probabilities: the format ``pipeline predict`` writes) in a temporary run tree, then
runs the ensemble stage's streaming path in a fresh child process per method (so its peak RSS
is its own): per model the fold average (one file in memory at a time), the per-model scores,
the model ensemble (float32 accumulator), the top-1 answers and the ``id,landmarks`` CSV.
Reports the disk of the prediction files, peak RSS and seconds per method, against the targets
<= 4 GB disk and <= 2 GB RAM. The files are usually still in the page cache when they are read
back (the machine has the RAM), so the seconds are compute, not disk. Temporary files are
removed at the end, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from common import schema  # noqa: E402

GB = 1e9
TARGET_DISK_GB, TARGET_RAM_GB = 4.0, 2.0
FINGERPRINT = "bench"


def generate(root: Path, images: int, classes: int, models: int, folds: int, seed: int = 0) -> int:
    """The run tree and data folder; returns the bytes of the prediction files."""
    from pipeline.runs.predfile import save_predictions
    from pipeline.scores import choose_k

    data = root / "data" / "bench"
    data.mkdir(parents=True)
    lm = pd.DataFrame({"label": range(classes), "landmark_id": np.arange(classes) * 7 + 3, "name": "x", "count": 1})
    lm.to_csv(data / schema.LABEL_MAP, index=False)
    (data / schema.PREP_REPORT).write_text(json.dumps({"fingerprint": FINGERPRINT}))
    meta = {"prep_fingerprint": FINGERPRINT, "label_map_sha": schema.label_map_sha(lm), "num_classes": classes}
    rng = np.random.default_rng(seed)
    ids = np.array([f"{i:016x}" for i in range(images)])
    labels = rng.integers(0, classes, images)
    labels[rng.random(images) < 0.5] = schema.NON_LANDMARK  # the internal test split: half non-landmarks
    total = 0
    for m in range(models):
        for f in range(folds):
            if choose_k(classes) is not None:
                probs = _topk_rows(rng, labels, classes, choose_k(classes), m)
            else:
                probs = _dense_rows(rng, labels, classes, m)
            d = schema.run_dir(root / "runs", "bench", f"model{m}", f)
            d.mkdir(parents=True)
            path = d / schema.RUN_TEST
            save_predictions(path, ids, probs, labels, {**meta, "model": f"model{m}", "fold": f}, dtype="float16")
            (d / schema.RUN_DONE).write_text("ok\n")
            total += path.stat().st_size
            del probs
            print(f"  wrote {path.relative_to(root)} ({path.stat().st_size / 1e6:.0f} MB)", flush=True)
    return total


def _topk_rows(rng, labels: np.ndarray, classes: int, k: int, m: int):
    """Top-k rows made directly: k distinct classes per row (a random start, a random odd stride),
    the label among them (first, most of the time) for landmark rows; peaked, sorted scores."""
    from pipeline.scores import TopK

    n = len(labels)
    start = rng.integers(0, classes, n)
    stride = rng.integers(1, max(2, classes // k), n)
    idx = (start[:, None] + stride[:, None] * np.arange(k)) % classes
    hit = (labels >= 0) & (rng.random(n) < 0.6 + 0.05 * m)
    idx[hit] = np.where(idx[hit] == labels[hit, None], idx[hit, :1], idx[hit])  # label appears once, first
    idx[hit, 0] = labels[hit]
    val = np.sort(rng.dirichlet(np.full(k, 0.3), n).astype(np.float32), axis=1)[:, ::-1] * 0.9
    return TopK(idx.astype(np.int32), np.ascontiguousarray(val), classes)


def _dense_rows(rng, labels: np.ndarray, classes: int, m: int) -> np.ndarray:
    images = len(labels)
    probs = np.empty((images, classes), dtype=np.float16)
    for s in range(0, images, 8192):  # peaked softmax rows, made block-wise
        z = rng.standard_normal((min(8192, images - s), classes), dtype=np.float32) * 2
        y = labels[s : s + 8192]
        hit = y >= 0
        z[np.flatnonzero(hit), y[hit]] += 4 + m
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        probs[s : s + len(z)] = z
    return probs


def _rss_gb(key: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in GB. Unlike ``ru_maxrss``, which an
    exec'd child inherits from its parent's size at fork time, these are the process's own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024 / GB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # not Linux: KB (an upper bound)


def worker(root: Path, method: str) -> dict:
    """The measured part, in its own process: stream, score, answer, write the CSV."""
    from common.io import write_csv
    from pipeline.ensemble.blend import stream_ensemble
    from pipeline.ensemble.frame import submission_frame
    from pipeline.ensemble.inputs import Checker, pred_paths
    from pipeline.metrics import score_all, top1
    from pipeline.runs.scan import scan

    base = _rss_gb("VmRSS")
    t0 = time.perf_counter()
    data = root / "data" / "bench"
    label_map = schema.read_label_map(data)
    runs = scan(root / "runs", "bench").finished
    weights = {m: 1 / len(runs) for m in runs}
    scores = {}
    ens = stream_ensemble(
        pred_paths(runs, "test"),
        "test",
        [weights],
        method,
        Checker(data, label_map),
        on_model=lambda name, avg: scores.update({name: score_all(avg.probs, avg.labels)}),
    )[0]
    overall = score_all(ens.probs, ens.labels)
    pred, conf = top1(ens.probs)
    write_csv(root / "bench.csv", submission_frame(ens.ids, pred, conf, label_map))
    seconds = time.perf_counter() - t0
    peak = _rss_gb("VmHWM")
    return {
        "method": method,
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(peak, 3),
        "import_rss_gb": round(base, 3),
        "gap": round(overall["gap"], 4),
        "top1": round(overall["top1"], 4),
        "model_gap": {k: round(v["gap"], 4) for k, v in scores.items()},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--models", type=int, default=4)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--methods", default="mean,geometric")
    p.add_argument("--tmp", default=None, help="where the temporary run tree goes (default: the system temp)")
    p.add_argument("--worker", nargs=2, metavar=("ROOT", "METHOD"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker[0]), args.worker[1])))
        return 0
    root = Path(tempfile.mkdtemp(prefix="bench_ensemble_", dir=args.tmp))
    try:
        runs = args.models * args.folds
        print(f"generating {runs} runs of {args.images} x {args.classes} float16 predictions under {root}", flush=True)
        t0 = time.perf_counter()
        disk = generate(root, args.images, args.classes, args.models, args.folds)
        gen_s = time.perf_counter() - t0
        results = []
        for method in args.methods.split(","):
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
            out = subprocess.run(
                [sys.executable, __file__, "--worker", str(root), method],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            if out.returncode:
                print(out.stderr, file=sys.stderr)
                return 1
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    from pipeline.scores import choose_k

    k = choose_k(args.classes)
    accumulators_gb = 2 * args.images * (args.classes if k is None else k * runs) * 8 / GB
    form = "dense float16" if k is None else f"top-{k} (int32 class, float16 score)"
    print(f"\n{runs} runs ({args.models} models x {args.folds} folds), {args.images} images x {args.classes} classes,")
    print(f"files {form}")
    print(f"disk of the prediction files: {disk / GB:.2f} GB ({disk / 2**30:.2f} GiB); target <= {TARGET_DISK_GB} GB")
    print(f"holding every run in memory as float32 would need {runs * args.images * args.classes * 4 / GB:.1f} GB;")
    print(f"streaming holds one file + two float32 accumulators (~{accumulators_gb + disk / runs / GB:.2f} GB)\n")
    print(f"| method | seconds | peak RSS (GB) | RSS after imports (GB) | GAP | RAM <= {TARGET_RAM_GB} GB |")
    print("|---|---:|---:|---:|---:|---|")
    for r in results:
        ok = "ok" if r["peak_rss_gb"] <= TARGET_RAM_GB else "OVER"
        print(f"| {r['method']} | {r['seconds']} | {r['peak_rss_gb']} | {r['import_rss_gb']} | {r['gap']} | {ok} |")
    result = {
        "images": args.images,
        "classes": args.classes,
        "runs": runs,
        "topk": k,
        "disk_gb": round(disk / GB, 3),
        "disk_ok": disk / GB <= TARGET_DISK_GB,
        "generate_seconds": round(gen_s, 1),
        "methods": results,
        "ram_ok": all(r["peak_rss_gb"] <= TARGET_RAM_GB for r in results),
    }
    print("RESULT", json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
