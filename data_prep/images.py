"""Resize cache: every selected image decoded once, resized, and saved as a small file.

Seed 001 resizes to 256x256 (then random-crops 224 at training time): ``mode="square"``.
``mode="shorter"`` keeps the aspect ratio (shorter side = size) and centre-crops the square.
Large JPEGs are decoded with draft mode (DCT scaling: libjpeg decodes at 1/2, 1/4 or 1/8
scale directly), which skips most of the decode work. Photos are cached as JPEG; sources
whose pixels are already tiny (CIFAR, 32 px) are cached as PNG, because a JPEG round trip at
32 px visibly changes them.

Unreadable files (missing, empty, truncated, not an image, over the pixel limit) are returned
as failures with a reason, never raised: the caller skips and lists them. Every file is written
atomically, so a killed run resumes by keeping the files that exist.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from common.io import write_json
from data_prep.readers import check_pixels, to_rgb

log = logging.getLogger(__name__)

CACHE_DIR = "images"
CACHE_META = "cache.json"  # size/mode/format of the files in images/; a change clears the folder
FORMATS = {"jpeg": "jpg", "png": "png"}


def cache_relpath(image_id: str, ext: str = "jpg") -> str:
    """Where an id's cached image lives, relative to the dataset folder (256 buckets)."""
    safe = image_id.replace("/", "__").replace("\\", "__")
    return f"{CACHE_DIR}/{hashlib.sha1(image_id.encode()).hexdigest()[:2]}/{safe}.{ext}"


def resize_image(img: Image.Image, size: int, mode: str = "square") -> Image.Image:
    """``square``: stretch to size x size; ``shorter``: shorter side = size, then centre crop."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    if mode == "square":
        return img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    # resize only the part that survives the crop: same pixels, less work on panoramas
    box = (left / scale, top / scale, (left + size) / scale, (top + size) / scale)
    return img.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=2.0)


def draft_open(src: str, size: int) -> Image.Image:
    """Open as RGB; a JPEG is decoded at the smallest DCT scale whose sides stay >= ``size``."""
    with Image.open(src) as im:
        check_pixels(im, src)
        if im.format == "JPEG":
            im.draft("RGB", (size, size))
        return to_rgb(im)  # loads; EXIF orientation, CMYK/grey -> RGB


def naive_open(src: str) -> Image.Image:
    """Full-resolution decode (the baseline of bench/bench_resize.py)."""
    with Image.open(src) as im:
        check_pixels(im, src)
        return to_rgb(im)


def failure_reason(src: object, err: BaseException) -> str:
    """A short reason for the skip list: missing_image, empty_file, truncated, not_image, ..."""
    if isinstance(err, Image.DecompressionBombError):
        return "decompression_bomb"
    if isinstance(err, FileNotFoundError):
        return "missing_image"
    if isinstance(err, PermissionError):
        return "permission_denied"
    try:
        if os.path.getsize(str(src)) == 0:
            return "empty_file"
    except OSError:
        pass
    if isinstance(err, UnidentifiedImageError):
        return "not_image"
    if "truncated" in str(err).lower() or isinstance(err, EOFError):
        return "truncated"
    return "unreadable"


def _cache_one(item: tuple, out_root: Path, opener: Callable, size: int, mode: str, fmt: str, quality: int) -> tuple:
    image_id, src = item
    rel = cache_relpath(image_id, FORMATS[fmt])
    out = out_root / rel
    if out.exists():
        return image_id, rel, None, False
    try:
        img = opener(src)
        img.load()
        small = resize_image(img, size, mode)
    except Exception as e:  # noqa: BLE001 - any decoder failure of one file is a listed skip, not a crash
        reason = failure_reason(src, e)
        log.debug("%s: %s (%s: %s)", src, reason, type(e).__name__, e)
        return image_id, rel, (reason, f"{type(e).__name__}: {e}"), False
    buf = io.BytesIO()
    if fmt == "png":
        small.save(buf, "PNG", compress_level=1)
    else:
        small.save(buf, "JPEG", quality=quality)
    _replace_file(out, buf.getbuffer())
    return image_id, rel, None, True


def _replace_file(path: Path, data: memoryview) -> None:
    """Temporary sibling + rename, like :func:`common.io.atomic_write` but without the fsync.

    A killed process never leaves a half file (the rename is atomic); only a power cut could,
    and an fsync per small cached image would cost more than its decode. The cache is
    rebuildable, the manifests and reports (fsynced) are not trusted without it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def prepare_cache_dir(out_root: str | Path, meta: dict) -> bool:
    """Make ``images/`` hold files of ``meta`` (size, mode, format, quality); True if it was cleared.

    Cached files are reused across reruns and config changes (top-K, ratio, splits), but not
    across a change of their own size/mode/format: then the folder is emptied first.
    """
    folder = Path(out_root) / CACHE_DIR
    meta_path = folder / CACHE_META
    cleared = False
    if folder.is_dir():
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old != meta:
            log.info("%s holds images of another size/mode/format (%s): rebuilding it", folder, old)
            shutil.rmtree(folder)
            cleared = True
    if not meta_path.is_file():
        write_json(meta_path, meta)
    return cleared


def build_cache(
    items: Iterable[tuple[str, str]],
    out_root: str | Path,
    opener: Callable[[str], Image.Image],
    size: int,
    mode: str = "square",
    quality: int = 92,
    workers: int = 2,
    progress: bool = True,
    fmt: str = "jpeg",
    stats: dict | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """Cache ``(id, src)`` items; returns ``({id: relpath}, {id: failure_reason})``.

    Existing cached files are kept (a killed run resumes where it stopped); threads are enough
    because PIL releases the GIL while decoding, resizing and encoding. ``stats`` (if given)
    receives ``encoded``/``reused`` counts and ``details`` ({id: exception text}) of failures.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown cache format {fmt!r} (valid: {sorted(FORMATS)})")
    out_root = Path(out_root)
    items = list(items)
    done: dict[str, str] = {}
    failed: dict[str, str] = {}
    details: dict[str, str] = {}
    encoded = 0

    def work(chunk: list) -> list:
        return [_cache_one(it, out_root, opener, size, mode, fmt, quality) for it in chunk]

    # chunks, not single items: a thread hand-off per 32 px image costs more than the image
    chunk = 32
    chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        bar = tqdm(total=len(items), desc="resize cache", disable=not progress, mininterval=1.0)
        for results in pool.map(work, chunks):
            for image_id, rel, err, new in results:
                if err:
                    failed[image_id], details[image_id] = err
                else:
                    done[image_id] = rel
                    encoded += new
            bar.update(len(results))
        bar.close()
    if stats is not None:
        stats.update(encoded=encoded, reused=len(done) - encoded, details=details)
    return done, failed
