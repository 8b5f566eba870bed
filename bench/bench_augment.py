"""Cost of each augmentation policy per image, per item and batched, on one core.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python bench/bench_augment.py [--n 200] [--batch 64]

For output sides 64 and 224 (from cached images of 72 and 256 px: a real Paris6k photo when
../shared/data is present, else a generated one), the microseconds per image of:

* the per-item form of every policy in ``pipeline.data.augment.POLICIES`` (uint8 CHW tensor in and
  out, reseeded per image as in training), and of ``strong``'s albumentations ops one by one;
* the batched form (``default``, ``rrc``) rendering whole batches out of a packed uint8 array,
  with and without the batch colour jitter.

One thread (``torch.set_num_threads(1)``, ``cv2.setNumThreads(1)``). Pixels are uint8; the colour
jitter computes in float32. The machine's load average is recorded with every number (a shared
machine inflates them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.config import TrainConfig  # noqa: E402
from pipeline.data.augment import POLICIES
from pipeline.data.batch_augment import BatchAugment
from pipeline.data.transforms import strong_compose

PARIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "paris6k_sample"
PRECISION = "uint8 pixels, float32 jitter"


def source_image(size: int) -> np.ndarray:
    """One ``size`` x ``size`` RGB uint8 image (HWC): a real photo when available."""
    from PIL import Image

    files = sorted(PARIS.glob("*/*.jpg")) if PARIS.is_dir() else []
    if files:
        with Image.open(files[0]) as im:
            im = im.convert("RGB")
            side = min(im.size)
            im = im.crop((0, 0, side, side)).resize((size, size), Image.Resampling.BICUBIC)
            return np.asarray(im).copy()
    rng = np.random.default_rng(0)
    low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)).astype(np.float64)
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def timed(fn, n: int) -> float:
    """Microseconds per call of ``fn(k)`` over ``n`` calls, after one warm-up call."""
    fn(0)
    t0 = time.perf_counter()
    for k in range(n):
        fn(k)
    return (time.perf_counter() - t0) / n * 1e6


def row(name: str, out: int, us: float) -> dict:
    return {"what": name, "out": out, "us_per_image": round(us, 1), "load1": round(os.getloadavg()[0], 2)}


def per_item(out: int, src: int, n: int) -> list[dict]:
    hwc = source_image(src)
    chw = torch.from_numpy(hwc).permute(2, 0, 1).contiguous()
    rows = []
    for name, policy in POLICIES.items():
        cfg = TrainConfig(img_size=out, augment=name, color_jitter=0.2)
        tf = policy.item(cfg)

        def run(k: int, tf=tf) -> None:
            tf.reseed(k)
            tf(chw)

        rows.append(row(f"per item: {name}", out, timed(run, n)))
    # strong's ops one at a time (numpy HWC; the first op sees the cached image, the rest the crop)
    compose = strong_compose(out, (0.35, 1.0), 0.5, 0.2)
    small = compose.transforms[0](image=hwc)["image"]
    for t in compose.transforms:
        t.p = 1.0  # time the op itself, not its probability of running
        img = hwc if t is compose.transforms[0] else small
        us = timed(lambda k, t=t, i=img: t(image=i), n)
        rows.append(row(f"  strong op: {type(t).__name__} (always on)", out, us))
    return rows


def batched(out: int, src: int, batch: int, n: int) -> list[dict]:
    hwc = source_image(src)
    array = np.ascontiguousarray(np.broadcast_to(hwc, (batch, *hwc.shape)))  # a packed array of one batch
    rows_idx = np.arange(batch)
    res = []
    for mode, scale in (("crop", None), ("rrc", (0.35, 1.0))):
        for jitter in (0.0, 0.2):
            aug = BatchAugment(out, mode, 0, 0.5, jitter, **({"scale": scale} if scale else {}))
            buf = torch.empty(batch, 3, out, out, dtype=torch.uint8)
            g = torch.Generator()

            def run(k: int, aug=aug, buf=buf, g=g) -> None:
                g.manual_seed(k)
                aug.render(array, rows_idx, aug.plan(batch, src, src, g), buf)

            us = timed(run, max(3, n // batch)) / batch
            name = {"crop": "default", "rrc": "rrc"}[mode]
            res.append(row(f"batched: {name} crop+flip{' +jitter' if jitter else ''}", out, us))
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="images per per-item timing")
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    results = []
    for out, src in ((64, 72), (224, 256)):
        results += per_item(out, src, args.n)
        results += batched(out, src, args.batch, args.n * 4)
    print(f"augmentation cost per image, one thread ({PRECISION}); load average in the last column")
    print("| what | out px | us/image | img/s | load |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['what']} | {r['out']} | {r['us_per_image']:.0f} | {1e6 / r['us_per_image']:.0f} | {r['load1']} |")
    print("RESULT", json.dumps({"precision": PRECISION, "threads": 1, "rows": results}))


if __name__ == "__main__":
    main()
