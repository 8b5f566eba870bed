"""The offline default: a procedurally generated landmark data set in the Google-Landmarks v2 layout.

No machine here reaches the internet and the project ships no third-party images, so the default
data set is generated, deterministically from a seed:

* each class is a distinct "landmark": a fixed structure of 3-7 primitives (towers, domes,
  spires, arches, decks, stripes, window grids) with its own palette;
* each photo of it varies viewpoint (horizontal squeeze + shear, small rotation), scale, position
  and crop, sky/ground/time of day, lighting and colour cast, background clutter (trees, people,
  other buildings) and foreground occluders, plus blur and JPEG noise;
* class sizes follow a long tail (``n_k = max * k**-tail``, a few big classes, many small ones,
  class order shuffled), so the top-K selection matters as it does on GLD.

Output: ``<root>/train.csv`` (``id,url,landmark_id``) and ``<root>/train/<a>/<b>/<c>/<id>.jpg``,
``a/b/c`` the first three characters of the 16-hex id, exactly as GLD v2.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from common.io import atomic_write, write_csv, write_json

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when rendering changes: old generated sets are then regenerated
SPEC_FILE = "synthetic_spec.json"
PRIMITIVES = ("tower", "dome", "spire", "arch", "deck", "block", "pyramid", "ring")


@dataclass(frozen=True)
class SynthSpec:
    num_classes: int = 40
    max_per_class: int = 300
    min_per_class: int = 4
    tail: float = 1.1
    image_size: int = 128
    seed: int = 0


def class_sizes(spec: SynthSpec) -> list[int]:
    """Long-tailed class sizes, largest first (the order is shuffled when ids are assigned)."""
    return [max(spec.min_per_class, round(spec.max_per_class * (k + 1) ** -spec.tail)) for k in range(spec.num_classes)]


def image_path(root: Path, image_id: str) -> Path:
    """GLD v2 location of an image: ``train/<a>/<b>/<c>/<id>.jpg``."""
    return root / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def _hex_id(seed: int, landmark: int, index: int) -> str:
    return hashlib.sha1(f"synth-{seed}-{landmark}-{index}".encode()).hexdigest()[:16]


def _landmark_design(seed: int, cls: int) -> dict:
    """The fixed structure of one class: primitives with positions, sizes and colours."""
    rng = np.random.default_rng([seed, cls, 7])
    hue = rng.uniform(0, 1)
    palette = [_hsv(hue + rng.uniform(-0.12, 0.12), rng.uniform(0.2, 0.8), rng.uniform(0.35, 0.95)) for _ in range(4)]
    parts = []
    for _ in range(int(rng.integers(3, 8))):
        kind = PRIMITIVES[int(rng.integers(len(PRIMITIVES)))]
        w, h = rng.uniform(0.12, 0.6), rng.uniform(0.12, 0.75)
        x = rng.uniform(0.05, 0.95 - w)
        parts.append(
            dict(
                kind=kind,
                x=x,
                w=w,
                h=h,
                color=int(rng.integers(4)),
                windows=bool(rng.random() < 0.5),
                rows=int(rng.integers(2, 7)),
                cols=int(rng.integers(2, 6)),
            )
        )
    return dict(palette=palette, parts=parts, stripes=bool(rng.random() < 0.3), stripe_n=int(rng.integers(3, 8)))


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    h = h % 1.0
    i = int(h * 6)
    f = h * 6 - i
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i % 6]
    return int(r * 255), int(g * 255), int(b * 255)


def _draw_landmark(design: dict, size: int) -> Image.Image:
    """Render the landmark on a transparent square canvas (ground line at the bottom)."""
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    pal = design["palette"]
    for p in design["parts"]:
        col = pal[p["color"]] + (255,)
        x0, x1 = p["x"] * size, (p["x"] + p["w"]) * size
        y1 = size - 1
        y0 = size - p["h"] * size
        k = p["kind"]
        if k in ("tower", "block"):
            d.rectangle([x0, y0, x1, y1], fill=col)
        elif k == "dome":
            d.rectangle([x0, (y0 + y1) / 2, x1, y1], fill=col)
            d.ellipse([x0, y0, x1, y0 + (y1 - y0)], fill=col)
        elif k in ("spire", "pyramid"):
            top = y0 - (0.25 * size if k == "spire" else 0)
            d.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, max(0, top))], fill=col)
        elif k == "arch":
            d.rectangle([x0, y0, x1, y1], fill=col)
            aw = (x1 - x0) * 0.45
            cx = (x0 + x1) / 2
            d.rectangle([cx - aw / 2, (y0 + y1) / 2, cx + aw / 2, y1], fill=(0, 0, 0, 0))
            d.ellipse([cx - aw / 2, (y0 + y1) / 2 - aw / 2, cx + aw / 2, (y0 + y1) / 2 + aw / 2], fill=(0, 0, 0, 0))
        elif k == "deck":
            yd = y0 + (y1 - y0) * 0.3
            d.rectangle([x0, yd, x1, yd + max(2, 0.05 * size)], fill=col)
            for i in range(4):
                px = x0 + (x1 - x0) * (i + 0.5) / 4
                d.rectangle([px - 0.01 * size, yd, px + 0.01 * size, y1], fill=col)
        elif k == "ring":
            r = min(x1 - x0, y1 - y0) / 2
            cx, cy = (x0 + x1) / 2, y1 - r
            d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=col, width=max(2, int(r * 0.25)))
        if p["windows"] and k in ("tower", "block", "arch", "dome"):
            wc = tuple(int(c * 0.35) for c in col[:3]) + (255,)
            for r_ in range(p["rows"]):
                for c_ in range(p["cols"]):
                    wx = x0 + (x1 - x0) * (c_ + 0.3) / p["cols"]
                    wy = (y0 + (y1 - y0) * 0.5) + (y1 - y0) * 0.45 * (r_ + 0.2) / p["rows"]
                    d.rectangle([wx, wy, wx + (x1 - x0) * 0.4 / p["cols"], wy + (y1 - y0) * 0.2 / p["rows"]], fill=wc)
    if design["stripes"]:
        alpha = np.asarray(img)[..., 3] > 0
        arr = np.asarray(img).copy()
        band = max(1, size // (2 * design["stripe_n"]))
        rows = (np.arange(size) // band) % 2 == 1
        mask = alpha & rows[:, None]
        arr[mask, :3] = (arr[mask, :3] * 0.55).astype(np.uint8)
        img = Image.fromarray(arr, "RGBA")
    return img


def _background(rng: np.random.Generator, w: int, h: int, horizon: int) -> Image.Image:
    sky_top = np.array(_hsv(rng.uniform(0.5, 0.7), rng.uniform(0.1, 0.6), rng.uniform(0.5, 1.0)), float)
    if rng.random() < 0.2:  # sunset / overcast
        sky_top = np.array(_hsv(rng.uniform(0.0, 0.12), rng.uniform(0.3, 0.7), rng.uniform(0.5, 0.9)), float)
    sky_bot = np.clip(sky_top + rng.uniform(20, 80), 0, 255)
    ground = np.array(_hsv(rng.choice([0.1, 0.25, 0.33, 0.0]), rng.uniform(0.0, 0.5), rng.uniform(0.25, 0.7)), float)
    t = np.linspace(0, 1, max(horizon, 1))[:, None]
    sky = sky_top * (1 - t) + sky_bot * t
    arr = np.empty((h, w, 3), np.float32)
    arr[:horizon] = sky[:, None, :]
    arr[horizon:] = ground
    arr[horizon:] *= np.linspace(0.8, 1.1, h - horizon)[:, None, None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _clutter(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, horizon: int, n: int, big: bool) -> None:
    for _ in range(n):
        kind = rng.integers(3)
        cx = rng.uniform(0, w)
        scale = rng.uniform(0.15, 0.45 if big else 0.2) * h
        base = horizon + rng.uniform(0.0, 1.0) * (h - horizon) if big else horizon + rng.uniform(-2, 4)
        if kind == 0:  # tree
            d.rectangle([cx - scale * 0.06, base - scale * 0.5, cx + scale * 0.06, base], fill=(90, 60, 30))
            g = _hsv(rng.uniform(0.22, 0.38), rng.uniform(0.4, 0.8), rng.uniform(0.2, 0.6))
            d.ellipse([cx - scale * 0.3, base - scale, cx + scale * 0.3, base - scale * 0.4], fill=g)
        elif kind == 1:  # person / pole
            c = _hsv(rng.uniform(0, 1), rng.uniform(0, 0.8), rng.uniform(0.1, 0.6))
            d.rectangle([cx - scale * 0.07, base - scale * 0.55, cx + scale * 0.07, base], fill=c)
            d.ellipse([cx - scale * 0.07, base - scale * 0.7, cx + scale * 0.07, base - scale * 0.55], fill=c)
        else:  # other building / bus
            c = _hsv(rng.uniform(0, 1), rng.uniform(0, 0.3), rng.uniform(0.3, 0.8))
            d.rectangle([cx - scale * 0.5, base - scale * 0.6, cx + scale * 0.5, base], fill=c)


def render_photo(design: dict, seed: int, cls: int, index: int, size: int) -> Image.Image:
    """One 'photo' of landmark ``cls``: random viewpoint, scale, lighting, clutter, occlusion."""
    rng = np.random.default_rng([seed, cls, index, 11])
    w = int(size * rng.uniform(0.8, 1.35))
    h = size
    horizon = int(h * rng.uniform(0.55, 0.85))
    img = _background(rng, w, h, horizon)
    d = ImageDraw.Draw(img)
    _clutter(d, rng, w, h, horizon, int(rng.integers(0, 5)), big=False)
    lm = _draw_landmark(design, 2 * size)
    # viewpoint: horizontal squeeze (seen from the side) + shear + small rotation, then scale
    squeeze = rng.uniform(0.6, 1.0)
    shear = rng.uniform(-0.25, 0.25)
    lm = lm.transform(
        lm.size,
        Image.Transform.AFFINE,
        (1 / squeeze, shear, -shear * lm.size[1] / 2, 0, 1, 0),
        resample=Image.Resampling.BILINEAR,
    )
    lm = lm.rotate(rng.uniform(-6, 6), resample=Image.Resampling.BILINEAR)
    target_h = int(h * rng.uniform(0.45, 0.95))
    lm = lm.resize((max(1, int(target_h * squeeze * 1.0)), target_h), Image.Resampling.BILINEAR)
    x = int(rng.uniform(-0.25, 0.75) * w) if rng.random() < 0.3 else int((w - lm.size[0]) / 2 + rng.normal(0, 0.12) * w)
    y = horizon - target_h + int(rng.uniform(0, 0.12) * h)
    img.paste(lm, (x, y), lm)
    _clutter(d, rng, w, h, horizon, int(rng.integers(0, 3)), big=True)  # foreground occluders
    # lighting, colour cast, blur
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.55, 1.35))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.6, 1.3))
    cast = rng.uniform(0.85, 1.15, 3)
    arr = np.asarray(img, np.float32) * cast + rng.normal(0, rng.uniform(1, 8), (h, w, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    # crop: a photographer's framing (keeps most of the frame)
    cw, ch = int(w * rng.uniform(0.8, 1.0)), int(h * rng.uniform(0.8, 1.0))
    cx, cy = int(rng.uniform(0, w - cw + 1)), int(rng.uniform(0, h - ch + 1))
    return img.crop((cx, cy, cx + cw, cy + ch))


def _render_job(args: tuple) -> int:
    root, seed, cls, design, items, size = args
    written = 0
    for index, image_id in items:
        path = image_path(Path(root), image_id)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        img = render_photo(design, seed, cls, index, size)
        q = int(np.random.default_rng([seed, cls, index, 13]).integers(80, 96))
        with atomic_write(path, "wb") as f:
            img.save(f, "JPEG", quality=q)
        written += 1
    return written


def generate(root: str | os.PathLike, spec: SynthSpec, workers: int = 2) -> pd.DataFrame:
    """Write the data set under ``root`` (skipping images already there); return train.csv rows."""
    root = Path(root)
    if (root / SPEC_FILE).is_file() and not is_complete(root, spec):
        log.info("%s was generated from another spec or generator version: regenerating", root)
        clear(root)
    sizes = class_sizes(spec)
    rng = np.random.default_rng([spec.seed, 3])
    order = rng.permutation(spec.num_classes)  # big classes are not the first ids
    landmark_ids = np.sort(rng.choice(np.arange(1000, 100000), spec.num_classes, replace=False))
    rows, jobs = [], []
    for rank, cls in enumerate(order):
        n = sizes[rank]
        lid = int(landmark_ids[cls])
        items = [(i, _hex_id(spec.seed, lid, i)) for i in range(n)]
        rows += [(image_id, f"synthetic://landmark/{lid}/{i}", lid) for i, image_id in items]
        design = _landmark_design(spec.seed, int(cls))
        for s in range(0, n, 64):
            jobs.append((str(root), spec.seed, int(cls), design, items[s : s + 64], spec.image_size))
    with ProcessPoolExecutor(max(1, workers)) as pool:
        written = sum(pool.map(_render_job, jobs))
    df = pd.DataFrame(rows, columns=["id", "url", "landmark_id"])
    df = df.sample(frac=1.0, random_state=spec.seed).reset_index(drop=True)  # GLD's csv is not grouped
    write_csv(root / "train.csv", df)
    write_json(root / SPEC_FILE, _spec_record(spec))  # written last: marks a complete set
    log.info(
        "synthetic data set: %d images in %d classes at %s (%d newly rendered)",
        len(df),
        spec.num_classes,
        root,
        written,
    )
    return df


def _spec_record(spec: SynthSpec) -> dict:
    return {**asdict(spec), "generator_version": GENERATOR_VERSION}


def is_complete(root: str | os.PathLike, spec: SynthSpec) -> bool:
    """True when ``root`` holds a finished set made by this generator version from ``spec``.

    A set from another spec or generator version is regenerated (its images are rewritten).
    """
    marker = Path(root) / SPEC_FILE
    if not marker.is_file() or not (Path(root) / "train.csv").is_file():
        return False
    try:
        return json.loads(marker.read_text()) == _spec_record(spec)
    except (OSError, json.JSONDecodeError):
        return False


def clear(root: str | os.PathLike) -> None:
    """Remove a stale generated set (only the files this module writes)."""
    root = Path(root)
    for name in (SPEC_FILE, "train.csv"):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / "train", ignore_errors=True)


__all__ = ["SynthSpec", "class_sizes", "clear", "generate", "image_path", "is_complete", "render_photo"]
