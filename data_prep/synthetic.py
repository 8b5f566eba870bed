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

Like the competition, most test photos show no landmark, so the generator also renders
**non-landmark scenes** with the same sky, ground, clutter, people, trees, lighting and framing:
streets of ordinary houses (one box or gabled house each, never a landmark design), parks, open
views, rooms and close-ups.

Output, ``a/b/c`` the first three characters of the 16-hex id as in GLD v2:

* ``<root>/train.csv`` (``id,url,landmark_id``) and ``<root>/train/<a>/<b>/<c>/<id>.jpg``;
* the non-landmark pool: ``<root>/nonlandmark.csv`` (``id``) and ``<root>/nonlandmark/<a>/<b>/<c>/<id>.jpg``;
* a competition test folder in the GLR 2020 layout: ``<root>/competition/sample_submission.csv``
  (``id,landmarks``), ``competition/test/<a>/<b>/<c>/<id>.jpg`` and its labels,
  ``competition/recognition_solution_v2.1.csv`` (``id,landmarks,Usage``; empty = no landmark):
  fresh photos (not the training ones) of mostly big classes, a few tail classes, and a majority
  of non-landmark scenes.
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

from common.io import atomic_write, cleanup_temp_files, write_csv, write_json
from common.lock import folder_lock
from data_prep.workers import die_with_parent

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # bump when rendering changes: old generated sets are then regenerated
SPEC_FILE = "synthetic_spec.json"
NONLANDMARK_DIR = "nonlandmark"
NONLANDMARK_CSV = "nonlandmark.csv"
COMPETITION_DIR = "competition"
SOLUTION_FILE = "recognition_solution_v2.1.csv"
PRIMITIVES = ("tower", "dome", "spire", "arch", "deck", "block", "pyramid", "ring")


@dataclass(frozen=True)
class SynthSpec:
    num_classes: int = 40
    max_per_class: int = 300
    min_per_class: int = 4
    tail: float = 1.1
    image_size: int = 128
    seed: int = 0
    nonlandmark: int | None = None  # non-landmark pool size; None = auto (nonlandmark_count)
    competition: int | None = None  # competition test images; None = auto (competition_count)
    competition_landmarks: float = 0.38  # share of competition images that show a landmark


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


def _new_canvas(rng: np.random.Generator, size: int) -> tuple[Image.Image, int, int, int]:
    """A photo's frame (landscape or portrait-ish) with sky and ground; returns (image, w, h, horizon)."""
    w = int(size * rng.uniform(0.8, 1.35))
    h = size
    horizon = int(h * rng.uniform(0.55, 0.85))
    return _background(rng, w, h, horizon), w, h, horizon


def _develop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The camera: exposure, contrast, colour cast, sensor noise, some blur, then the framing crop."""
    w, h = img.size
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


def render_photo(design: dict, seed: int, cls: int, index: int, size: int) -> Image.Image:
    """One 'photo' of landmark ``cls``: random viewpoint, scale, lighting, clutter, occlusion."""
    rng = np.random.default_rng([seed, cls, index, 11])
    img, w, h, horizon = _new_canvas(rng, size)
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
    return _develop(img, rng)


# ---- non-landmark scenes: what most competition test photos show ------------------------------

SCENES = ("street", "park", "open", "indoor", "closeup")
SCENE_WEIGHTS = (0.3, 0.2, 0.15, 0.2, 0.15)


def _house(d: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, base: float, width: float) -> None:
    """A generic building: one plain box or gabled house in a muted colour, windows and a door.

    Deliberately none of the landmark designs: one body, at most one roof, no domes, spires,
    arches, decks, rings or stripes, and always a door at the ground.
    """
    height = width * rng.uniform(0.6, 1.6)
    body = _hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.3), rng.uniform(0.45, 0.9))
    x0, x1, y0 = cx - width / 2, cx + width / 2, base - height
    d.rectangle([x0, y0, x1, base], fill=body)
    if rng.random() < 0.55:  # gable roof
        roof = _hsv(rng.choice([0.0, 0.05, 0.08]), rng.uniform(0.2, 0.6), rng.uniform(0.25, 0.55))
        d.polygon([(x0 - width * 0.05, y0), (x1 + width * 0.05, y0), (cx, y0 - height * 0.35)], fill=roof)
    else:  # flat roof with a parapet
        d.rectangle([x0, y0, x1, y0 + max(1, height * 0.05)], fill=tuple(int(c * 0.7) for c in body))
    glass = (60, 70, 90) if rng.random() < 0.7 else (200, 210, 170)
    floors, cols = int(rng.integers(1, 5)), int(rng.integers(2, 6))
    for r in range(floors):
        for c in range(cols):
            wx = x0 + width * (c + 0.25) / cols
            wy = y0 + height * (r + 0.2) / (floors + 1)
            d.rectangle([wx, wy, wx + width * 0.45 / cols, wy + height * 0.35 / (floors + 1)], fill=glass)
    door_x = x0 + width * rng.uniform(0.2, 0.7)
    d.rectangle([door_x, base - height * 0.28, door_x + width * 0.14, base], fill=(70, 45, 30))


def _person(d: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, base: float, height: float) -> None:
    shirt = _hsv(rng.uniform(0, 1), rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.9))
    skin = _hsv(rng.uniform(0.05, 0.1), rng.uniform(0.3, 0.6), rng.uniform(0.35, 0.95))
    hw = height * 0.13
    d.rectangle([cx - hw * 0.8, base - height * 0.45, cx + hw * 0.8, base], fill=(40, 40, 60))  # legs
    d.rectangle([cx - hw, base - height * 0.8, cx + hw, base - height * 0.42], fill=shirt)
    d.ellipse([cx - hw * 0.8, base - height, cx + hw * 0.8, base - height * 0.8], fill=skin)


def _tree(d: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, base: float, height: float) -> None:
    d.rectangle([cx - height * 0.05, base - height * 0.5, cx + height * 0.05, base], fill=(90, 60, 30))
    green = _hsv(rng.uniform(0.2, 0.4), rng.uniform(0.35, 0.85), rng.uniform(0.2, 0.65))
    r = height * rng.uniform(0.25, 0.4)
    d.ellipse([cx - r, base - height, cx + r, base - height + 2 * r], fill=green)


def _indoor(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A room: wall, floor, a table, a picture frame or shelf, a window, sometimes a lamp."""
    wall = np.array(_hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.35), rng.uniform(0.45, 0.95)), float)
    floor_c = np.array(_hsv(rng.uniform(0.05, 0.12), rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.6)), float)
    line = int(h * rng.uniform(0.55, 0.8))
    arr = np.empty((h, w, 3), np.float32)
    arr[:line] = wall * np.linspace(0.85, 1.05, line)[:, None, None]
    arr[line:] = floor_c * np.linspace(0.9, 1.15, h - line)[:, None, None]
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    if rng.random() < 0.6:  # a window with a bit of sky
        wx, ww = rng.uniform(0, w * 0.7), rng.uniform(0.15, 0.3) * w
        wy, wh = rng.uniform(0.1, 0.25) * h, rng.uniform(0.2, 0.35) * h
        d.rectangle([wx, wy, wx + ww, wy + wh], fill=_hsv(rng.uniform(0.5, 0.65), rng.uniform(0.1, 0.5), 0.95))
        d.rectangle([wx + ww / 2 - 1, wy, wx + ww / 2 + 1, wy + wh], fill=(240, 240, 240))
    for _ in range(int(rng.integers(1, 4))):  # frames, shelves, cupboards
        fx, fw = rng.uniform(0, w * 0.85), rng.uniform(0.08, 0.3) * w
        fy, fh = rng.uniform(0.05, 0.5) * h, rng.uniform(0.08, 0.3) * h
        d.rectangle([fx, fy, fx + fw, min(line, fy + fh)], fill=_hsv(rng.uniform(0, 1), rng.uniform(0, 0.7), 0.6))
    tx, tw = rng.uniform(0, w * 0.6), rng.uniform(0.25, 0.5) * w
    top = line + rng.uniform(-0.15, 0.1) * h
    table = _hsv(rng.uniform(0.05, 0.1), rng.uniform(0.3, 0.7), rng.uniform(0.25, 0.6))
    d.rectangle([tx, top, tx + tw, top + 0.04 * h], fill=table)
    for lx in (tx + 0.05 * tw, tx + 0.9 * tw):
        d.rectangle([lx, top, lx + 0.03 * tw, min(h, top + 0.25 * h)], fill=table)
    for _ in range(int(rng.integers(0, 4))):  # cups, plates, bottles on the table
        ox = tx + rng.uniform(0.1, 0.8) * tw
        oh = rng.uniform(0.03, 0.1) * h
        d.ellipse([ox, top - oh, ox + oh, top], fill=_hsv(rng.uniform(0, 1), rng.uniform(0, 0.9), rng.uniform(0.4, 1)))
    for _ in range(int(rng.integers(0, 3))):
        _person(d, rng, rng.uniform(0, w), h * rng.uniform(0.9, 1.1), h * rng.uniform(0.5, 0.9))
    return img


def render_scene(seed: int, stream: int, index: int, size: int) -> Image.Image:
    """One photo showing no landmark: a street of ordinary houses, a park, an open view, a room or a
    close-up, with the same framing, lighting, noise and crop as the landmark photos."""
    rng = np.random.default_rng([seed, stream, index, 17])
    kind = SCENES[int(rng.choice(len(SCENES), p=SCENE_WEIGHTS))]
    if kind == "indoor":
        w = int(size * rng.uniform(0.8, 1.35))
        return _develop(_indoor(rng, w, size), rng)
    img, w, h, horizon = _new_canvas(rng, size)
    d = ImageDraw.Draw(img)
    _clutter(d, rng, w, h, horizon, int(rng.integers(0, 5)), big=False)  # distant trees, people, boxes
    if kind == "street":
        x = rng.uniform(-0.2, 0.1) * w
        while x < w:
            width = rng.uniform(0.15, 0.4) * w
            _house(d, rng, x + width / 2, horizon + rng.uniform(0, 0.05) * h, width)
            x += width * rng.uniform(1.0, 1.4)
        for _ in range(int(rng.integers(0, 5))):
            _person(d, rng, rng.uniform(0, w), horizon + rng.uniform(0.05, 1.0) * (h - horizon), h * 0.3)
    elif kind == "park":
        for _ in range(int(rng.integers(3, 9))):
            _tree(d, rng, rng.uniform(0, w), horizon + rng.uniform(0, 0.5) * (h - horizon), h * rng.uniform(0.2, 0.6))
        if rng.random() < 0.3:
            _house(d, rng, rng.uniform(0, w), horizon, rng.uniform(0.08, 0.15) * w)
        for _ in range(int(rng.integers(0, 4))):
            _person(d, rng, rng.uniform(0, w), horizon + rng.uniform(0.1, 1.0) * (h - horizon), h * 0.35)
    elif kind == "closeup":
        if rng.random() < 0.6:
            _person(d, rng, rng.uniform(0.3, 0.7) * w, h * rng.uniform(1.0, 1.3), h * rng.uniform(0.8, 1.3))
        else:
            _tree(d, rng, rng.uniform(0.3, 0.7) * w, h, h * rng.uniform(0.8, 1.1))
    # "open" (field, beach, water): only the sky, the ground and the distant clutter
    _clutter(d, rng, w, h, horizon, int(rng.integers(0, 3)), big=True)  # foreground occluders
    return _develop(img, rng)


# ---- writing the set -----------------------------------------------------------------------------


def _render_job(args: tuple) -> int:
    """Render one chunk of images: ``("landmark", cls, design, index)`` or ``("scene", stream, index)``."""
    seed, size, items = args
    written = 0
    for path, what in items:
        path = Path(path)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if what[0] == "landmark":
            _, cls, design, index = what
            img = render_photo(design, seed, cls, index, size)
            q = int(np.random.default_rng([seed, cls, index, 13]).integers(80, 96))
        else:
            _, stream, index = what
            img = render_scene(seed, stream, index, size)
            q = int(np.random.default_rng([seed, stream, index, 19]).integers(80, 96))
        with atomic_write(path, "wb") as f:
            img.save(f, "JPEG", quality=q)
        written += 1
    return written


def nonlandmark_count(spec: SynthSpec) -> int:
    """Non-landmark scenes generated: ``spec.nonlandmark`` or, when None, 0.17 x the landmark photos
    (>= 24): on the default that fills half of the internal test split and leaves a pool of ~350."""
    if spec.nonlandmark is not None:
        return spec.nonlandmark
    return max(24, round(0.17 * sum(class_sizes(spec))))


def competition_count(spec: SynthSpec) -> int:
    """Competition test images: ``spec.competition`` or, when None, 0.12 x the landmark photos (>= 24)."""
    if spec.competition is not None:
        return spec.competition
    return max(24, round(0.12 * sum(class_sizes(spec))))


def nonlandmark_path(root: Path, image_id: str) -> Path:
    return root / NONLANDMARK_DIR / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def competition_path(root: Path, image_id: str) -> Path:
    return root / COMPETITION_DIR / "test" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def _scene_id(seed: int, what: str, index: int) -> str:
    return hashlib.sha1(f"synth-{what}-{seed}-{index}".encode()).hexdigest()[:16]


def generate(root: str | os.PathLike, spec: SynthSpec, workers: int = 2) -> pd.DataFrame:
    """Write the data set under ``root`` (skipping images already there); return train.csv rows.

    Besides the landmark photos: the non-landmark pool (``nonlandmark/`` + ``nonlandmark.csv``) and a
    competition test folder in the GLR 2020 layout with its solution (``competition/``).

    One generator per folder at a time (``root/.lock``); temporary files of a killed earlier run
    are removed first; the render workers are processes that die with this one
    (:func:`data_prep.workers.die_with_parent`: killing prep never leaves them rendering). Call
    it from the thread that owns the work (the kernel's parent-death signal follows the thread
    that started the workers).
    """
    root = Path(root)
    with folder_lock(root, "generating the synthetic data set"):
        return _generate(root, spec, workers)


def _generate(root: Path, spec: SynthSpec, workers: int) -> pd.DataFrame:
    removed = cleanup_temp_files(root)
    if removed:
        log.info("%s: removed %d temporary files of a killed earlier run", root, removed)
    if (root / SPEC_FILE).is_file() and not is_complete(root, spec):
        log.info("%s was generated from another spec or generator version: regenerating", root)
        clear(root)
    sizes = class_sizes(spec)
    rng = np.random.default_rng([spec.seed, 3])
    order = rng.permutation(spec.num_classes)  # big classes are not the first ids
    landmark_ids = np.sort(rng.choice(np.arange(1000, 100000), spec.num_classes, replace=False))
    designs = {int(c): _landmark_design(spec.seed, int(c)) for c in order}
    rows, tasks = [], []
    for rank, cls in enumerate(order):
        lid = int(landmark_ids[cls])
        for i in range(sizes[rank]):
            image_id = _hex_id(spec.seed, lid, i)
            rows.append((image_id, f"synthetic://landmark/{lid}/{i}", lid))
            tasks.append((str(image_path(root, image_id)), ("landmark", int(cls), designs[int(cls)], i)))
    pool_ids = [_scene_id(spec.seed, "nonlandmark", j) for j in range(nonlandmark_count(spec))]
    tasks += [(str(nonlandmark_path(root, i)), ("scene", 1, j)) for j, i in enumerate(pool_ids)]
    comp, comp_tasks = _competition_rows(spec, sizes, order, landmark_ids, designs, root)
    tasks += comp_tasks
    all_ids = [r[0] for r in rows] + pool_ids + comp["id"].tolist()
    if len(set(all_ids)) != len(all_ids):  # a 64-bit hash collision: would mix two images up
        raise AssertionError("synthetic generator: two generated images share an id")
    jobs = [(spec.seed, spec.image_size, tasks[s : s + 64]) for s in range(0, len(tasks), 64)]
    with ProcessPoolExecutor(max(1, workers), initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        written = sum(pool.map(_render_job, jobs))
    df = pd.DataFrame(rows, columns=["id", "url", "landmark_id"])
    df = df.sample(frac=1.0, random_state=spec.seed).reset_index(drop=True)  # GLD's csv is not grouped
    write_csv(root / "train.csv", df)
    write_csv(root / NONLANDMARK_CSV, pd.DataFrame({"id": pool_ids}))
    if len(comp):
        comp_dir = root / COMPETITION_DIR
        write_csv(comp_dir / "sample_submission.csv", pd.DataFrame({"id": comp["id"], "landmarks": ""}))
        write_csv(comp_dir / SOLUTION_FILE, comp[["id", "landmarks", "Usage"]])
    write_json(root / SPEC_FILE, _spec_record(spec))  # written last: marks a complete set
    log.info(
        "synthetic data set: %d images in %d classes, %d non-landmark scenes, %d competition test images "
        "at %s (%d newly rendered)",
        len(df),
        spec.num_classes,
        len(pool_ids),
        len(comp),
        root,
        written,
    )
    return df


def _competition_rows(
    spec: SynthSpec, sizes: list[int], order: np.ndarray, landmark_ids: np.ndarray, designs: dict, root: Path
) -> tuple[pd.DataFrame, list]:
    """The competition test set: fresh photos of landmarks (classes drawn by size squared, so mostly
    the big classes a top-K keeps, a few from the tail) and non-landmark scenes, shuffled; its
    solution rows (``id, landmarks, Usage``; empty landmarks = no landmark) and render tasks."""
    n = competition_count(spec)
    n_lm = int(round(n * spec.competition_landmarks))
    rng = np.random.default_rng([spec.seed, 5])
    weight = np.asarray(sizes, float) ** 2
    ranks = rng.choice(len(sizes), n_lm, p=weight / weight.sum())
    is_lm = np.zeros(n, bool)
    is_lm[rng.permutation(n)[:n_lm]] = True
    rows, tasks, k_lm = [], [], 0
    for j in range(n):
        image_id = _scene_id(spec.seed, "competition", j)
        if is_lm[j]:
            cls = int(order[ranks[k_lm]])
            k_lm += 1
            # indices far above any class size: new viewpoints, not copies of training photos
            tasks.append((str(competition_path(root, image_id)), ("landmark", cls, designs[cls], 1_000_000 + j)))
            landmarks = str(int(landmark_ids[cls]))
        else:
            tasks.append((str(competition_path(root, image_id)), ("scene", 2, j)))
            landmarks = ""
        rows.append((image_id, landmarks, "Public" if rng.random() < 0.3 else "Private"))
    return pd.DataFrame(rows, columns=["id", "landmarks", "Usage"]), tasks


def _spec_record(spec: SynthSpec) -> dict:
    return {**asdict(spec), "generator_version": GENERATOR_VERSION}


def is_complete(root: str | os.PathLike, spec: SynthSpec) -> bool:
    """True when ``root`` holds a finished set made by this generator version from ``spec``.

    A set from another spec or generator version is regenerated (its images are rewritten).
    """
    root = Path(root)
    marker = root / SPEC_FILE
    needed = [root / "train.csv", root / NONLANDMARK_CSV]
    if competition_count(spec):
        needed += [root / COMPETITION_DIR / "sample_submission.csv", root / COMPETITION_DIR / SOLUTION_FILE]
    if not marker.is_file() or not all(p.is_file() for p in needed):
        return False
    try:
        return json.loads(marker.read_text()) == _spec_record(spec)
    except (OSError, json.JSONDecodeError):
        return False


def clear(root: str | os.PathLike) -> None:
    """Remove a stale generated set (only the files this module writes)."""
    root = Path(root)
    for name in (SPEC_FILE, "train.csv", NONLANDMARK_CSV):
        (root / name).unlink(missing_ok=True)
    for folder in ("train", NONLANDMARK_DIR, COMPETITION_DIR):
        shutil.rmtree(root / folder, ignore_errors=True)


__all__ = [
    "SynthSpec",
    "class_sizes",
    "clear",
    "competition_count",
    "competition_path",
    "generate",
    "image_path",
    "is_complete",
    "nonlandmark_count",
    "nonlandmark_path",
    "render_photo",
    "render_scene",
]
