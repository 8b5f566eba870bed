"""Resize cache: every selected image decoded once, resized, and saved as a small JPEG.

Seed 001 resizes to 256x256 (then random-crops 224 at training time): ``mode="square"``.
``mode="shorter"`` keeps the aspect ratio (shorter side = size) and centre-crops the square.
Large JPEGs are decoded with draft mode (DCT scaling), which skips most of the decode work.
Unreadable files are returned as failures, never raised: the caller skips and lists them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from common.io import atomic_write

log = logging.getLogger(__name__)


def cache_relpath(image_id: str) -> str:
    """Where an id's cached image lives, relative to the dataset folder (256 buckets)."""
    safe = image_id.replace("/", "__").replace("\\", "__")
    return f"images/{hashlib.sha1(image_id.encode()).hexdigest()[:2]}/{safe}.jpg"


def resize_image(img: Image.Image, size: int, mode: str = "square") -> Image.Image:
    if img.mode != "RGB":
        img = img.convert("RGB")
    if mode == "square":
        return img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=2.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def draft_open(src: str, size: int) -> Image.Image:
    """Open with JPEG draft mode: decode at the smallest DCT scale still >= ``size``."""
    from data_prep.readers import open_rgb

    with Image.open(src) as probe:
        is_jpeg = probe.format == "JPEG"
    if not is_jpeg:
        return open_rgb(src)
    from PIL import ImageOps

    with Image.open(src) as im:
        im.draft("RGB", (size, size))
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


def _cache_one(item: tuple, out_root: Path, opener: Callable, size: int, mode: str, quality: int) -> tuple:
    image_id, src = item
    rel = cache_relpath(image_id)
    out = out_root / rel
    if out.exists():
        return image_id, rel, None
    try:
        img = opener(src)
        img.load()
        small = resize_image(img, size, mode)
    except Image.DecompressionBombError:
        return image_id, rel, "decompression_bomb"
    except (OSError, ValueError, SyntaxError) as e:
        reason = "empty_file" if Path(str(src)).is_file() and Path(str(src)).stat().st_size == 0 else "unreadable"
        log.debug("%s: %s (%s)", src, reason, e)
        return image_id, rel, reason
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "wb") as f:
        small.save(f, "JPEG", quality=quality)
    return image_id, rel, None


def build_cache(
    items: Iterable[tuple[str, str]],
    out_root: str | Path,
    opener: Callable[[str], Image.Image],
    size: int,
    mode: str = "square",
    quality: int = 92,
    workers: int = 2,
    progress: bool = True,
) -> tuple[dict[str, str], dict[str, str]]:
    """Cache ``(id, src)`` items; returns ``({id: relpath}, {id: failure_reason})``.

    Existing cached files are kept (a killed run resumes where it stopped); threads are enough
    because PIL releases the GIL while decoding and resizing.
    """
    out_root = Path(out_root)
    items = list(items)
    done: dict[str, str] = {}
    failed: dict[str, str] = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(lambda it: _cache_one(it, out_root, opener, size, mode, quality), items, chunksize=16)
        for image_id, rel, err in tqdm(
            results, total=len(items), desc="resize cache", disable=not progress, mininterval=2.0
        ):
            if err:
                failed[image_id] = err
            else:
                done[image_id] = rel
    return done, failed
