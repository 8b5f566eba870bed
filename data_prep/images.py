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

The cache is keyed by content, not by where the raw data was found: a cached file is reused
when it is sound (:func:`check_cached_file`: a 0-byte, truncated or garbage file is re-encoded)
and, for file sources, when its source still has the size and mtime recorded in
``images/sources.csv`` (so the same files reached through a symlink or a new mount point are
reused, and a replaced file under the same id is re-encoded; a copy with new mtimes is told
from a replaced file by its size and a hash of its first and last 4 KiB). Every re-encode is
logged with its reason.
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
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from common.io import write_csv, write_json
from data_prep.readers import check_pixels, to_rgb

log = logging.getLogger(__name__)

CACHE_DIR = "images"
CACHE_META = "cache.json"  # size/mode/format of the files in images/; a change clears the folder
SOURCES_LEDGER = "sources.csv"  # id, size, mtime_ns, content sample of the source of each cached image
FORMATS = {"jpeg": "jpg", "png": "png"}
FILE_SOURCE = "files"  # cache.json "source" of file sources: checked per file (SOURCES_LEDGER), not by path
PIXEL_KEYS = ("size", "mode", "format", "quality")  # what the cached pixels depend on
_TRAILERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}  # how a complete file of each format ends
_PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG"}


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
    """Open as RGB; a JPEG is decoded at the smallest DCT scale whose sides stay >= ``size``. The
    bomb limit applies to what is decoded: a large real photo (8000x8000) is read at 1/8 scale."""
    with Image.open(src) as im:
        if im.format == "JPEG":
            im.draft("RGB", (size, size))
        check_pixels(im, src)  # after draft: im.size is the size that will be decoded
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


def check_cached_file(
    path: str | Path, fmt: str | None = None, size: int | None = None, deep: bool = False
) -> str | None:
    """None when the cached file at ``path`` is sound, else a short description of the problem.

    Shallow (the default, ~30 us per file): it exists, is not empty, its header parses as an
    image of format ``fmt`` (``jpeg``/``png``; None = either) and ``size`` x ``size`` pixels, and
    it ends with its format's end marker (a truncated write or a cut copy does not). ``deep``
    also decodes every pixel (~0.3 ms per 256 px JPEG), which finds damaged headers and tables.
    """
    try:
        if os.stat(path).st_size == 0:
            return "empty file (0 bytes)"
        with open(path, "rb") as f:
            with Image.open(f) as im:
                found, dims = im.format, im.size
                if deep:
                    im.load()
            end = f.seek(0, os.SEEK_END)
            f.seek(max(0, end - 12))
            tail = f.read()
    except FileNotFoundError:
        return "missing"
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        return f"cannot decode ({type(e).__name__}: {str(e).strip() or 'no detail'})"
    want = _PIL_FORMAT.get(fmt) if fmt else None
    if want and found != want:
        return f"{found} file, expected {want}"
    if size is not None and dims != (size, size):
        return f"{dims[0]}x{dims[1]} pixels, expected {size}x{size}"
    trailer = _TRAILERS.get(found)
    if trailer and not tail.endswith(trailer):
        return "truncated (no end-of-image marker)"
    return None


SAMPLE_BYTES = 4096


def _source_stat(src: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of a source file (symlinks followed), None when it cannot be read."""
    try:
        st = os.stat(src)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def content_sample(src: str) -> str | None:
    """Hash of a file's first and last 4 KiB and its size: tells a copy with a new mtime (``cp -r``,
    a new disk) from a replaced photo without reading the whole file. None when unreadable."""
    try:
        with open(src, "rb") as f:
            head = f.read(SAMPLE_BYTES)
            end = f.seek(0, os.SEEK_END)
            f.seek(max(len(head), end - SAMPLE_BYTES))
            tail = f.read()
    except OSError:
        return None
    return hashlib.sha1(head + tail + str(end).encode()).hexdigest()[:16]


def _entry(src: str, stat: tuple[int, int] | None) -> tuple | None:
    return None if stat is None else (*stat, content_sample(src) or "")


def _reuse(
    out: Path, fmt: str, size: int, image_id: str, src: str, ledger: dict | None
) -> tuple[str | None, tuple | None]:
    """(why the cached file ``out`` must be re-encoded, or None to reuse it; the source's ledger entry).

    With a ledger, a sound cached file is reused when its source has the recorded size and
    mtime, or the recorded size and content sample (the same file copied to a new place).
    """
    stat = _source_stat(src) if ledger is not None else None
    try:
        cached_mtime = out.stat().st_mtime_ns
    except FileNotFoundError:
        return "new", _entry(src, stat)
    problem = check_cached_file(out, fmt, size)
    if problem is not None:
        return f"damaged cached file ({problem.split(' (')[0]})", _entry(src, stat)
    if ledger is None or stat is None:  # no record kept, or the source is gone: the sound copy is what there is
        return None, None
    old = ledger.get(image_id)
    if old is None:  # cached by a run killed before it wrote the ledger: trust a copy newer than its source
        return (None if cached_mtime >= stat[1] else "source newer than its cached copy"), _entry(src, stat)
    if tuple(old[:2]) == stat:
        return None, old
    if old[0] == stat[0] and old[2] and content_sample(src) == old[2]:
        return None, (*stat, old[2])  # copied or touched: same bytes, new mtime
    return "source changed (size or content)", _entry(src, stat)


def _cache_one(
    item: tuple, out_root: Path, opener: Callable, size: int, mode: str, fmt: str, quality: int, ledger: dict | None
) -> tuple:
    """Cache one ``(id, src)``: (id, relpath, error or None, newly encoded, why re-encoded, ledger entry)."""
    image_id, src = item
    rel = cache_relpath(image_id, FORMATS[fmt])
    out = out_root / rel
    why, entry = _reuse(out, fmt, size, image_id, src, ledger)
    if why is None:
        return image_id, rel, None, False, None, entry
    try:
        img = opener(src)
        img.load()
        small = resize_image(img, size, mode)
    except Exception as e:  # noqa: BLE001 - any decoder failure of one file is a listed skip, not a crash
        reason = failure_reason(src, e)
        log.debug("%s: %s (%s: %s)", src, reason, type(e).__name__, e)
        return image_id, rel, (reason, f"{type(e).__name__}: {e}"), False, None, None
    buf = io.BytesIO()
    if fmt == "png":
        small.save(buf, "PNG", compress_level=1)
    else:
        small.save(buf, "JPEG", quality=quality)
    _replace_file(out, buf.getbuffer())
    return image_id, rel, None, True, why, entry


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
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)  # a full disk fails in write(), which names no file: say which
        raise


def cache_change(old: dict | None, new: dict) -> str | None:
    """Why cached files made under ``old`` settings cannot serve ``new`` ones (None: they can).

    Only what the pixels depend on counts: size, mode, format, quality, and for in-memory sources
    (CIFAR) their content identity. File sources are checked file by file (size and mtime), so
    the folder they were found in never matters.
    """
    if old is None:
        return "its settings are unknown (images/cache.json is missing or unreadable)"
    changed = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in PIXEL_KEYS if old.get(k) != new.get(k)]
    if changed:
        return "the cached images have other settings: " + ", ".join(changed)
    if new.get("source") != FILE_SOURCE and old.get("source") != new.get("source"):
        return f"the cached images come from another source ({old.get('source')!r} -> {new.get('source')!r})"
    return None


def prepare_cache_dir(out_root: str | Path, meta: dict) -> bool:
    """Make ``images/`` hold files of ``meta`` (size, mode, format, quality, source); True if it was cleared.

    Cached files are reused across reruns and config changes (top-K, ratio, splits, the path of
    the raw data), but not across a change of their own size/mode/format (see
    :func:`cache_change`): then the folder is emptied first, and the log says why.
    """
    folder = Path(out_root) / CACHE_DIR
    meta_path = folder / CACHE_META
    cleared = False
    old: dict | None = None
    if folder.is_dir():
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if not meta_path.exists() and not any(folder.iterdir()):
            reason = None  # an empty folder (a prep killed before it wrote anything)
        else:
            reason = cache_change(old, meta)
        if reason:
            log.warning("%s is rebuilt from scratch: %s", folder, reason)
            shutil.rmtree(folder)
            cleared = True
            old = None
    if old != meta:
        write_json(meta_path, meta)
    return cleared


def read_ledger(out_root: str | Path) -> dict[str, tuple[int, int, str]]:
    """``{id: (size, mtime_ns, content sample)}`` of the source each cached file was made from."""
    path = Path(out_root) / CACHE_DIR / SOURCES_LEDGER
    if not path.is_file():
        return {}
    try:
        df = pd.read_csv(path, dtype={"id": str, "sample": str}, keep_default_na=False)
        sizes, mtimes = df["size"].astype("int64").tolist(), df["mtime_ns"].astype("int64").tolist()
        return dict(zip(df["id"], zip(sizes, mtimes, df["sample"])))
    except (OSError, ValueError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        log.warning("%s is unreadable (%s): cached files are checked against their sources' mtimes", path, e)
        return {}


def write_ledger(out_root: str | Path, ledger: dict[str, tuple[int, int, str]]) -> None:
    ids = sorted(ledger)
    df = pd.DataFrame({
        "id": ids,
        "size": [ledger[i][0] for i in ids],
        "mtime_ns": [ledger[i][1] for i in ids],
        "sample": [ledger[i][2] for i in ids],
    })  # fmt: skip
    write_csv(Path(out_root) / CACHE_DIR / SOURCES_LEDGER, df)


def _finish_cache(out_root: Path, reencoded: Counter, ledger: dict | None, seen: dict[str, tuple]) -> None:
    """Say what was re-encoded and why; record the sources' size/mtime when they changed."""
    if reencoded:
        why = ", ".join(f"{n} {why}" for why, n in reencoded.most_common())
        log.info("%s: re-encoded %d cached images: %s", out_root / CACHE_DIR, sum(reencoded.values()), why)
    if ledger is not None and any(ledger.get(i) != entry for i, entry in seen.items()):
        write_ledger(out_root, {**ledger, **seen})


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
    track_sources: bool = False,
) -> tuple[dict[str, str], dict[str, str]]:
    """Cache ``(id, src)`` items; returns ``({id: relpath}, {id: failure_reason})``.

    Existing sound cached files are kept (a killed run resumes where it stopped); damaged ones
    (0 bytes, truncated, not an image, wrong size) are re-encoded. ``track_sources`` (``src`` is
    a file path): also re-encode when the source's size/mtime differ from those recorded in
    ``images/sources.csv``, and record them. Threads are enough because PIL releases the GIL
    while decoding, resizing and encoding. ``stats`` (if given) receives ``encoded``/``reused``
    counts, ``reencoded`` ({reason: count}) and ``details`` ({id: exception text}) of failures.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown cache format {fmt!r} (valid: {sorted(FORMATS)})")
    out_root = Path(out_root)
    items = list(items)
    done: dict[str, str] = {}
    failed: dict[str, str] = {}
    details: dict[str, str] = {}
    reencoded: Counter = Counter()
    ledger = read_ledger(out_root) if track_sources else None
    seen: dict[str, tuple] = {}
    encoded = 0

    def work(chunk: list) -> list:
        return [_cache_one(it, out_root, opener, size, mode, fmt, quality, ledger) for it in chunk]

    # chunks, not single items: a thread hand-off per 32 px image costs more than the image
    chunk = 32
    chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        bar = tqdm(total=len(items), desc="resize cache", disable=not progress, mininterval=1.0)
        for results in pool.map(work, chunks):
            for image_id, rel, err, new, why, entry in results:
                if err:
                    failed[image_id], details[image_id] = err
                    continue
                done[image_id] = rel
                encoded += new
                if why and why != "new":
                    reencoded[why] += 1
                if entry is not None:
                    seen[image_id] = entry
            bar.update(len(results))
        bar.close()
    _finish_cache(out_root, reencoded, ledger, seen)
    if stats is not None:
        stats.update(encoded=encoded, reused=len(done) - encoded, reencoded=dict(reencoded), details=details)
    return done, failed
