"""The competition test set in prep: id list and labels at GLD v2 test scale, and the default's prep.

    .venv/bin/python bench/bench_competition.py [--ids 117577] [--files 3000] [--skip-default]

1. A GLR 2020 ``sample_submission.csv`` and a ``recognition_solution_v2.1.csv`` with ``--ids`` rows
   (GLD v2's test set has 117,577): time :func:`read_competition_images`, :func:`read_solution`,
   :func:`label_rows` against a 1000-class label map, and the fingerprint's per-file stat
   (:func:`files_signature`) over ``--files`` real files (scaled to ``--ids``).
2. The offline default (configs/default.yaml's prep keys) from nothing: generating landmark
   photos, non-landmark scenes and the competition folder, then caching everything.
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

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from data_prep.competition import files_signature, label_rows, read_competition_images, read_solution  # noqa: E402

DEFAULT_PREP = dict(  # configs/default.yaml's prep section
    dataset="synthetic",
    source="synthetic",
    synth_classes=60,
    synth_max_per_class=500,
    synth_tail=0.8,
    synth_image_size=128,
    top_k=20,
    sample_ratio=0.8,
    image_size=72,
    seed=0,
    workers=2,
)


def bench_id_lists(tmp: Path, n: int, n_files: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    ids = [f"{x:016x}" for x in rng.integers(0, 2**63, n, dtype=np.int64)]
    pd.DataFrame({"id": ids, "landmarks": ""}).to_csv(tmp / "sample_submission.csv", index=False)
    lids = rng.integers(0, 200_000, n)
    has = rng.random(n) < 0.02  # GLD v2: ~2% of test images show a landmark
    landmarks = np.where(has, lids.astype(str), "")
    usage = np.where(rng.random(n) < 0.3, "Public", "Private")
    pd.DataFrame({"id": ids, "landmarks": landmarks, "Usage": usage}).to_csv(tmp / "solution.csv", index=False)
    label_of = {int(lid): k for k, lid in enumerate(rng.choice(lids[has], 1000, replace=False))}
    times: dict[str, float] = {}
    t = time.perf_counter()
    comp = read_competition_images(tmp)
    times["read sample_submission"], t = time.perf_counter() - t, time.perf_counter()
    sol = read_solution(tmp / "solution.csv")
    times["read solution"], t = time.perf_counter() - t, time.perf_counter()
    label_rows(comp["id"], sol, label_of)
    times["label rows"] = time.perf_counter() - t
    for src in comp["src"][:n_files]:
        os.makedirs(os.path.dirname(src), exist_ok=True)
        Path(src).write_bytes(b"x")
    t = time.perf_counter()
    files_signature(comp["src"][:n_files])
    times["stat files (scaled)"] = (time.perf_counter() - t) * n / n_files
    return times


def bench_default(tmp: Path) -> dict:
    from data_prep.config import PrepConfig
    from data_prep.prep import run_prep

    cfg = PrepConfig(data_root=str(tmp / "data"), **DEFAULT_PREP)
    t = time.perf_counter()
    report = run_prep(cfg, progress=False)
    first = time.perf_counter() - t
    t = time.perf_counter()
    run_prep(cfg, progress=False)
    return {"seconds": first, "rerun_seconds": time.perf_counter() - t, "report": report}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ids", type=int, default=117_577)
    p.add_argument("--files", type=int, default=3000)
    p.add_argument("--skip-default", action="store_true", help="only the id-list part")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_competition_"))
    try:
        (tmp / "ids").mkdir()
        times = bench_id_lists(tmp / "ids", args.ids, min(args.files, args.ids))
        default = None if args.skip_default else bench_default(tmp / "default")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"competition id list, {args.ids} ids:")
    for k, v in times.items():
        print(f"  {k:24s} {v:6.2f} s")
    result: dict = {"ids": args.ids, "steps": times}
    if default:
        r = default["report"]
        rendered = r["rows_in"] + r["nonlandmark"]["images"] + r["competition"]["ids"]
        print(f"default prep from nothing ({rendered} images generated, {r['cache']['encoded']} cached):")
        print(f"  {'first run':24s} {default['seconds']:6.2f} s")
        print(f"  {'rerun (no-op)':24s} {default['rerun_seconds']:6.2f} s")
        print(f"  splits {r['splits']}, non-landmark test/pool {r['nonlandmark']['test']}/{r['nonlandmark']['pool']}")
        print(f"  competition labels {r['competition']['labels']}")
        result["default"] = {
            "seconds": round(default["seconds"], 2),
            "rerun_seconds": round(default["rerun_seconds"], 2),
            "generated": rendered,
            "splits": r["splits"],
            "nonlandmark": {k: r["nonlandmark"][k] for k in ("test", "pool", "test_share")},
            "competition_labels": r["competition"]["labels"],
        }
    print("RESULT", json.dumps(result))


if __name__ == "__main__":
    main()
