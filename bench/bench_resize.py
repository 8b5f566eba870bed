"""Resize throughput on large JPEGs: JPEG draft mode (DCT scaling) vs a naive PIL open + resize.

    .venv/bin/python bench/bench_resize.py [--images 48] [--width 1600] [--height 1200] [--size 256]

Generates ``--images`` large JPEGs (quality 90) of two kinds in a temporary folder (see
:func:`make_jpegs`), then resizes each to
``--size`` (seed 001's 256x256 "square" mode) on one thread: naive = full decode + one plain
bilinear resize;
draft = :func:`data_prep.images.draft_open` + the project's resize; a middle row separates the
two gains (full decode + the project's resize, which box-reduces before the bilinear pass). Then the whole cache step
(:func:`data_prep.images.build_cache`: draft decode, resize, JPEG encode, atomic write) with 2
threads. Reports images/s and the draft/naive speed-up (target >= 3x).
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
from PIL import Image, ImageDraw, ImageFilter  # noqa: E402

from data_prep.images import build_cache, draft_open, naive_open, resize_image  # noqa: E402

PARIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "paris6k_sample"


def make_jpegs(folder: Path, n: int, w: int, h: int, kind: str = "noisy", seed: int = 0) -> list[str]:
    """``noisy``: colour fields, shapes, edges and sensor noise (high entropy, the hard case for
    draft mode, whose gain is bounded by the Huffman decoding it cannot skip); ``photos``: the real
    Paris6k photos (384 px) upscaled to ``w`` x ``h`` (smooth, lower entropy, like a good camera)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    photos = sorted(PARIS.glob("*/*.jpg")) if kind == "photos" else []
    if kind == "photos" and not photos:
        return []
    paths = []
    for i in range(n):
        if photos:
            with Image.open(photos[(i * 7) % len(photos)]) as im:
                img = im.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
        else:
            low = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            img = Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC)
            d = ImageDraw.Draw(img)
            for _ in range(30):
                x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
                r = int(rng.integers(10, w // 6))
                d.rectangle((x, y, x + r, y + 2 * r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
            img = img.filter(ImageFilter.GaussianBlur(1))
            arr = np.asarray(img).astype(np.int16) + rng.normal(0, 6, (h, w, 3)).astype(np.int16)
            img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        if i % 2:  # half portrait, as in real photo collections
            img = img.transpose(Image.Transpose.ROTATE_90)
        p = folder / f"{i:04d}.jpg"
        img.save(p, "JPEG", quality=90)
        paths.append(str(p))
    return paths


def naive(path: str, size: int) -> Image.Image:
    """What a first version does: full decode, then one plain bilinear resize."""
    with Image.open(path) as im:
        return im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)


def full_decode(path: str, size: int) -> Image.Image:
    """Full decode + the project's resize (``reducing_gap``: box-reduce first, then bilinear)."""
    return resize_image(naive_open(path), size, "square")


def draft(path: str, size: int) -> Image.Image:
    """The project's path: draft-mode decode at 1/2, 1/4 or 1/8 scale + the same resize."""
    return resize_image(draft_open(path, size), size, "square")


def rate(fn, paths: list[str], size: int, repeat: int) -> float:
    n, t0 = 0, time.perf_counter()
    for _ in range(repeat):
        for p in paths:
            assert fn(p, size).size == (size, size)
            n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--width", type=int, default=1600)
    p.add_argument("--height", type=int, default=1200)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_resize_"))
    out: dict = {"workers": args.workers}
    try:
        for kind in ("noisy", "photos"):
            paths = make_jpegs(tmp / kind, args.images, args.width, args.height, kind)
            if not paths:
                print(f"{kind}: skipped (no Paris6k sample at {PARIS})")
                continue
            bpp = sum(Path(x).stat().st_size for x in paths) * 8 / len(paths) / (args.width * args.height)
            print(f"{kind}: {len(paths)} JPEGs {args.width}x{args.height} (half portrait), {bpp:.2f} bit/pixel")
            rate(naive, paths[:4], args.size, 1)  # warm the page cache and imports
            r = {f.__name__: rate(f, paths, args.size, args.repeat) for f in (naive, full_decode, draft)}
            t0 = time.perf_counter()
            done, failed = build_cache(
                [(f"b{i}", s) for i, s in enumerate(paths)],
                tmp / f"out_{kind}",
                lambda s: draft_open(s, args.size),
                args.size,
                workers=args.workers,
                progress=False,
            )
            r["build_cache"] = len(done) / (time.perf_counter() - t0)
            assert not failed
            r["speedup_vs_naive"] = r["draft"] / r["naive"]
            r["speedup_vs_full_decode"] = r["draft"] / r["full_decode"]
            out[kind] = r
            print(f"  naive: PIL open + convert + one bilinear resize:   {r['naive']:7.1f} img/s (1 thread)")
            print(f"  full decode + project resize (reducing_gap):      {r['full_decode']:7.1f} img/s (1 thread)")
            print(f"  draft decode + project resize:                    {r['draft']:7.1f} img/s (1 thread)")
            print(
                f"  speed-up draft vs naive {r['speedup_vs_naive']:.1f}x (target >= 3x), "
                f"vs full decode {r['speedup_vs_full_decode']:.1f}x"
            )
            print(
                f"  build_cache (draft, resize, JPEG encode, write), {args.workers} threads: "
                f"{r['build_cache']:7.1f} img/s"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("RESULT", json.dumps(out))


if __name__ == "__main__":
    main()
