"""Rendering of the generated default (:mod:`data_prep.synthetic`): landmark designs and their
photos (viewpoint, framing, sky, ground, lighting, clutter, occluders, blur, JPEG noise), and the
non-landmark scenes (streets, parks, open views, rooms, close-ups). Deterministic from the seed."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

log = logging.getLogger(__name__)


PRIMITIVES = ("tower", "dome", "spire", "arch", "deck", "block", "pyramid", "ring")


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
