"""Cost of checking the image cache: the trainer's pre-epoch check and ``data_prep verify``.

    .venv/bin/python bench/bench_verify.py [--images 2000] [--size 256] [--workers 1 2]

Builds a file cache of ``--images`` cached JPEGs of ``--size`` px (the real Paris6k photos
resized like prep does when ../shared/data is present, else smooth generated images), then
times, per image: ``stat`` only, the shallow :func:`data_prep.images.check_cached_file`
(header, format, size, end marker: what the trainer's :func:`data_prep.verify.check_cache`
runs by default), the deep check (every pixel decoded: ``data_prep verify``), and
:func:`check_cache` over a manifest with 1 and 2 threads. Reports microseconds per image and
the projected seconds for 80k images (the GLD subset of seed 001); target: shallow 80k < 10 s.
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
from PIL import Image  # noqa: E402

from data_prep.images import CACHE_DIR, CACHE_META, cache_relpath, check_cached_file, resize_image  # noqa: E402
from data_prep.verify import check_cache  # noqa: E402

PARIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "paris6k_sample"
GLD = 80_000


def make_cache(folder: Path, n: int, size: int) -> tuple[list[Path], str]:
    """``n`` cached JPEGs (quality 92) under ``folder/images`` and a ``train.csv`` manifest over them."""
    photos = sorted(PARIS.glob("*/*.jpg"))
    rng = np.random.default_rng(0)
    rows, paths = [], []
    for i in range(n):
        if photos:
            with Image.open(photos[i % len(photos)]) as im:
                img = resize_image(im.convert("RGB").rotate(i % 7), size)
        else:
            low = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            img = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
        image_id = f"{i:016x}"
        rel = cache_relpath(image_id)
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(folder / rel, "JPEG", quality=92)
        rows.append((image_id, rel, 0, 1))
        paths.append(folder / rel)
    pd.DataFrame(rows, columns=["id", "image", "label", "landmark_id"]).to_csv(folder / "train.csv", index=False)
    meta = {"size": size, "mode": "square", "format": "jpeg", "quality": 92, "source": "files"}
    (folder / CACHE_DIR / CACHE_META).write_text(json.dumps(meta))
    return paths, "Paris6k photos" if photos else "generated smooth images"


def per_image(fn, paths: list[Path]) -> float:
    """Microseconds per image of ``fn(path)`` (best of two passes: the second runs from the page cache)."""
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        for p in paths:
            fn(p)
        best = min(best, time.perf_counter() - t0)
    return best / len(paths) * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_verify_"))
    try:
        paths, kind = make_cache(tmp, args.images, args.size)
        s = args.size
        results = {
            "stat": per_image(lambda q: q.stat(), paths),
            "shallow": per_image(lambda q: check_cached_file(q, "jpeg", s), paths),
            "deep": per_image(lambda q: check_cached_file(q, "jpeg", s, deep=True), paths),
        }
        for w in args.workers:
            for deep in (False, True):
                t0 = time.perf_counter()
                problems = check_cache(tmp, ["train"], deep=deep, workers=w)
                assert not problems, problems[:3]
                results[f"check_cache {'deep' if deep else 'shallow'} {w}t"] = (
                    (time.perf_counter() - t0) / len(paths) * 1e6
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.images} cached {args.size} px JPEGs ({kind}), warm page cache")
    print(f"{'check':<28}{'us/image':>10}{'80k images (s)':>16}")
    for name, us in results.items():
        print(f"{name:<28}{us:>10.1f}{us * GLD / 1e6:>16.1f}")
    out = {k.replace(" ", "_"): round(v, 1) for k, v in results.items()}
    out.update(images=args.images, size=args.size, kind=kind, shallow_80k_s=round(results["shallow"] * GLD / 1e6, 1))
    print("RESULT " + json.dumps(out))
    return 0 if results["shallow"] * GLD / 1e6 < 10 else 1


if __name__ == "__main__":
    sys.exit(main())
