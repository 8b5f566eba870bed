"""Prep of 100k GLD rows without images: CSV parse + top-K + ratio + stratified split + label map.

    .venv/bin/python bench/bench_prep_rows.py [--rows 100000] [--classes 20000] [--top-k 1000]

Writes a GLD v2 ``train.csv`` (``id,url,landmark_id``, 16-hex ids, long-tailed class sizes like
GLD) to a temporary folder, then times each step of the prep stage's row handling with the
project's functions (images are not checked: ``read_gld_v2(check_images=False)``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from data_prep import select  # noqa: E402
from data_prep.readers import read_gld_v2  # noqa: E402


def write_csv(root: Path, rows: int, classes: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, classes + 1) ** 0.9  # long tail
    lids = rng.permutation(classes * 7)[:classes]  # sparse landmark ids, as on GLD
    labels = lids[rng.choice(classes, rows, p=weights / weights.sum())]
    ids = [f"{x:016x}" for x in rng.integers(0, 2**63, rows, dtype=np.int64)]
    df = pd.DataFrame({"id": ids, "url": [f"https://example.org/{i}.jpg" for i in ids], "landmark_id": labels})
    df.to_csv(root / "train.csv", index=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--classes", type=int, default=20_000)
    p.add_argument("--top-k", type=int, default=1000)
    p.add_argument("--ratio", type=float, default=0.1)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_prep_rows_"))
    try:
        write_csv(tmp, args.rows, args.classes)
        times: dict[str, float] = {}
        t0 = t = time.perf_counter()
        table = read_gld_v2(tmp, check_images=False)
        times["read csv"], t = time.perf_counter() - t, time.perf_counter()
        rows = select.top_k_classes(table.rows, args.top_k)
        times["top-k"], t = time.perf_counter() - t, time.perf_counter()
        rows = select.subsample(rows, args.ratio, seed=0)
        times["ratio"], t = time.perf_counter() - t, time.perf_counter()
        split = select.stratified_split(rows, 0.125, 0.125, seed=0)
        times["split"], t = time.perf_counter() - t, time.perf_counter()
        select.label_map(rows)
        times["label map"] = time.perf_counter() - t
        total = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    counts = split.value_counts().to_dict()
    print(f"{args.rows} rows, {args.classes} classes -> top {args.top_k} x {args.ratio}: {len(rows)} rows {counts}")
    for k, v in times.items():
        print(f"  {k:10s} {v:6.2f} s")
    print(f"  {'total':10s} {total:6.2f} s")
    print("RESULT", json.dumps({"rows": args.rows, "kept": len(rows), "seconds": total, "steps": times}))


if __name__ == "__main__":
    main()
