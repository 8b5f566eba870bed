"""Packed cache: every cached image in one uint8 array ``(N, H, W, 3)`` read by memory map.

Decoding a JPEG per sample costs more than the whole augmentation on a CPU; the packed array
costs one memory copy. Files, beside the manifests in ``data/<dataset>/``::

    packed_<size>.u8     raw uint8, C order, N x size x size x 3 (RGB), no header
    packed_<size>.json   {"shape": [N, H, W, 3], "dtype": "uint8", "ids": [...], "key": ...}

Row ``i`` of the array is the image of ``ids[i]``. The array is built from the resized file
cache (so both caches hold the same pixels), written to a temporary file and renamed; the
index is written after it and is what marks the pair complete. A rebuild is skipped when the
index already describes the same ids and cache files (``key``). This module needs only numpy
and PIL so the training side can read the format without importing the prep stage's deps.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common.errors import DataError
from common.io import atomic_path

log = logging.getLogger(__name__)


def packed_paths(data_dir: str | Path, size: int) -> tuple[Path, Path]:
    """(array file, index file) of the packed cache of side ``size``."""
    d = Path(data_dir)
    return d / f"packed_{size}.u8", d / f"packed_{size}.json"


def packed_sizes(data_dir: str | Path) -> list[int]:
    """Sides of the packed caches present in ``data_dir`` (index files), ascending."""
    out = []
    for p in Path(data_dir).glob("packed_*.json"):
        tail = p.stem.split("_", 1)[1]
        if tail.isdigit():
            out.append(int(tail))
    return sorted(out)


def _key(ids: Sequence[str], relpaths: Sequence[str], size: int) -> str:
    h = hashlib.sha1(str(size).encode())
    for i, r in zip(ids, relpaths):
        h.update(f"{i}\0{r}\n".encode())
    return h.hexdigest()[:16]


def read_index(data_dir: str | Path, size: int) -> dict:
    """The index of a complete packed cache; DataError when absent or not matching the array."""
    data, index = packed_paths(data_dir, size)
    if not index.is_file() or not data.is_file():
        raise DataError(f"no packed cache of size {size} in {data_dir} (rerun prep with packed=true)")
    try:
        meta = json.loads(index.read_text())
        shape = tuple(int(s) for s in meta["shape"])
        ids = meta["ids"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{index}: unreadable packed index ({e}); rerun prep with packed=true") from None
    if len(shape) != 4 or shape[3] != 3 or len(ids) != shape[0]:
        raise DataError(f"{index}: shape {shape} does not match {len(ids)} ids")
    expected = int(np.prod(shape))
    if data.stat().st_size != expected:
        raise DataError(f"{data}: {data.stat().st_size} bytes, index says {expected}; rerun prep with packed=true")
    return meta


def open_packed(data_dir: str | Path, size: int) -> tuple[np.memmap, list[str]]:
    """(read-only memory map (N, H, W, 3) uint8, ids in row order)."""
    meta = read_index(data_dir, size)
    data, _ = packed_paths(data_dir, size)
    return np.memmap(data, dtype=np.uint8, mode="r", shape=tuple(meta["shape"])), list(meta["ids"])


def _decode(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def build_packed(
    data_dir: str | Path,
    ids: Sequence[str],
    relpaths: Sequence[str],
    size: int,
    workers: int = 2,
    progress: bool = False,
) -> dict:
    """Pack the cached files ``relpaths`` (relative to ``data_dir``) of ``ids``; returns a summary.

    A no-op when the index already describes these ids and files. Decoding is threaded (PIL
    releases the GIL); a cached file of the wrong size is a :class:`DataError` (a stale cache).
    """
    from tqdm import tqdm

    data_dir = Path(data_dir)
    ids, relpaths = list(ids), list(relpaths)
    data_path, index_path = packed_paths(data_dir, size)
    key = _key(ids, relpaths, size)
    with contextlib.suppress(DataError):
        if read_index(data_dir, size).get("key") == key:
            return {"file": data_path.name, "rows": len(ids), "bytes": data_path.stat().st_size, "rebuilt": False}
    shape = (len(ids), size, size, 3)
    with atomic_path(data_path) as tmp:
        with open(tmp, "wb") as f:
            f.truncate(int(np.prod(shape)))
        arr = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=shape) if ids else None

        def put(start: int) -> int:
            stop = min(start + 64, len(ids))  # chunks: a thread hand-off per small image costs more than it
            for i in range(start, stop):
                img = _decode(data_dir / relpaths[i])
                if img.shape != shape[1:]:
                    raise DataError(f"{data_dir / relpaths[i]}: cached image is {img.shape}, expected {shape[1:]}")
                arr[i] = img
            return stop - start

        with ThreadPoolExecutor(max(1, workers)) as pool:
            bar = tqdm(total=len(ids), desc="packed cache", disable=not progress, mininterval=1.0)
            for n in pool.map(put, range(0, len(ids), 64)):
                bar.update(n)
            bar.close()
        if arr is not None:
            arr.flush()
            del arr
    from common.io import write_json

    write_json(index_path, {"shape": list(shape), "dtype": "uint8", "layout": "NHWC RGB", "ids": ids, "key": key})
    log.info("packed cache: %d images -> %s (%.1f MB)", len(ids), data_path, data_path.stat().st_size / 2**20)
    return {"file": data_path.name, "rows": len(ids), "bytes": data_path.stat().st_size, "rebuilt": True}
