"""Scale rehearsal: all of GLD v2 (clean) through the prep's selection and the fold file.

    .venv/bin/python bench/bench_scale_prep.py     # --images 1580470 --classes 81313 --top-k all --k 5

Writes a GLD v2-shaped ``train_clean.csv`` (``landmark_id,images``; 81,313 classes, 1,580,470
16-hex ids, sparse landmark ids in 0..203,093) to a temporary folder -- ids only, no images --
then, in a fresh child process (so its peak RSS is the stage's own), runs the project's own
functions: ``read_gld_v2(label_source="clean", check_images=False)``, ``select_rows``
(``top_k=all``, ``sample_ratio=1``), ``stratified_split(0.125, 0.125)``, ``label_map``, the
report's class-size bins, ``make_folds(k=5)`` with its empty-fold check, and the fold CSV
written atomically. Class sizes are long-tailed like GLD v2 clean: 2 + lognormal(2.14, 1.2),
capped at 6,272 (v2's largest clean class), scaled to the exact total.
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

GLD_V2_IDS = 203_094  # landmark ids of GLD v2 train.csv: the clean set uses a sparse subset


def class_sizes(images: int, classes: int, seed: int = 0) -> np.ndarray:
    """Long-tailed class sizes (>= 2 each) summing to exactly ``images``."""
    rng = np.random.default_rng(seed)
    raw = np.minimum(2 + rng.lognormal(2.14, 1.2, classes), 6272)
    sizes = np.maximum(2, np.floor(2 + (raw - 2) * (images - 2 * classes) / (raw - 2).sum())).astype(np.int64)
    short = images - int(sizes.sum())  # rounding left-over: one more image for the largest classes
    sizes[np.argsort(-raw, kind="stable")[: abs(short)]] += np.sign(short)
    return sizes


def write_clean_csv(root: Path, images: int, classes: int, seed: int = 0) -> None:
    """``train_clean.csv`` with ``classes`` rows of space-separated 16-hex ids."""
    rng = np.random.default_rng(seed)
    sizes = class_sizes(images, classes, seed)
    lids = np.sort(rng.choice(GLD_V2_IDS, classes, replace=False))
    raw = np.unique(rng.integers(0, 2**63, int(images * 1.01), dtype=np.int64))[:images]
    ids = np.array([f"{x:016x}" for x in rng.permutation(raw)], dtype=object)
    groups = np.split(ids, np.cumsum(sizes)[:-1])
    pd.DataFrame({"landmark_id": lids, "images": [" ".join(g) for g in groups]}).to_csv(
        root / "train_clean.csv", index=False
    )


def run_stage(root: Path, top_k: str, min_images: int, k: int) -> dict:
    """The measured part (child process): select + split + label map + folds, timed per step."""
    from common.io import write_csv
    from data_prep import select
    from data_prep.config import PrepConfig, parse_top_k
    from data_prep.folds import check_folds, make_folds
    from data_prep.inputs import select_rows
    from data_prep.readers import read_gld_v2
    from data_prep.report import class_sizes as report_bins

    cfg = PrepConfig(source="gld_v2", label_source="clean", top_k=parse_top_k(top_k), min_images=min_images,
                     sample_ratio=1.0)  # fmt: skip
    times: dict[str, float] = {}
    t0 = t = time.perf_counter()

    def step(name: str) -> None:
        nonlocal t
        times[name], t = time.perf_counter() - t, time.perf_counter()

    table = read_gld_v2(root, "clean", check_images=False)
    step("read train_clean.csv")
    _, rows = select_rows(cfg, table.rows)
    step(f"select (top_k={cfg.top_k}, min_images={min_images})")
    rows = rows.copy()
    rows["split"] = select.stratified_split(rows, cfg.val_frac, cfg.test_frac, cfg.seed)
    step("train/val/test split")
    lm = select.label_map(rows)
    rows["label"] = rows["landmark_id"].map(pd.Series(lm["label"].to_numpy(), index=lm["landmark_id"]))
    step("label map + labels")
    train = rows.loc[rows["split"] == "train", ["id", "label", "landmark_id"]]
    bins = report_bins(table.rows["landmark_id"], rows["landmark_id"], train["landmark_id"])
    step("class-size bins")
    folds = make_folds(train, k, 42)
    check_folds(folds, train, k, root / "train.csv")
    step(f"folds (k={k})")
    write_csv(root / f"folds_k{k}_s42.csv", folds)
    step("write fold csv")
    small = train["label"].value_counts()
    return {
        "rows": len(table.rows),
        "classes": int(len(lm)),
        "splits": rows["split"].value_counts().to_dict(),
        "train_classes_below_k": int((small < k).sum()),
        "fold_sizes": np.bincount(folds["fold"], minlength=k).tolist(),
        "bins_source": bins["source"],
        "steps": times,
        "seconds": time.perf_counter() - t0,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1_580_470)
    p.add_argument("--classes", type=int, default=81_313)
    p.add_argument("--top-k", default="all")
    p.add_argument("--min-images", type=int, default=0)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--child", help=argparse.SUPPRESS)  # the measured process: folder with train_clean.csv
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_stage(Path(args.child), args.top_k, args.min_images, args.k)))
        return
    load = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_prep_"))
    try:
        t = time.perf_counter()
        write_clean_csv(tmp, args.images, args.classes)
        made = time.perf_counter() - t
        cmd = [sys.executable, __file__, "--child", str(tmp), "--top-k", args.top_k,
               "--min-images", str(args.min_images), "--k", str(args.k)]  # fmt: skip
        t = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"train_clean.csv: {r['rows']:,} images, {args.classes:,} classes (generated in {made:.1f} s); "
          f"load average {load[0]:.2f} on {os.cpu_count()} CPUs")  # fmt: skip
    print(f"kept {r['classes']:,} classes, splits {r['splits']}, {r['train_classes_below_k']:,} classes with "
          f"< {args.k} train images, fold sizes {r['fold_sizes']}")  # fmt: skip
    print(f"class sizes (source): {r['bins_source']}")
    print("| step | seconds |\n|---|---|")
    for name, sec in r["steps"].items():
        print(f"| {name} | {sec:.2f} |")
    print(f"| **total (steps)** | **{r['seconds']:.2f}** |\n| child process wall (imports included) | {wall:.2f} |")
    print(f"peak RSS of the child process: {r['peak_rss_gb']:.2f} GB")
    print("RESULT", json.dumps({**r, "process_wall": wall, "load_avg_1m": load[0], "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
