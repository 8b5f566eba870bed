"""Check and repair the prep's image caches: every cached file of every manifest, and the packed rows.

``python -m data_prep verify --config FILE`` (``make verify``) decodes every cached image of
every manifest, re-encodes the damaged ones from their source (the same decode, resize and
encode as prep), patches the packed cache's rows of re-encoded images (and rows that differ
from their cached file), and reports what it fixed and what it could not (a source that is gone
or unreadable). Exit code 0 when everything is sound afterwards, 1 otherwise; the details go to
``verify_report.json``.

:func:`check_cache` is the fast check a trainer runs before the first epoch. Measured on this
machine (bench/bench_verify.py, 256 px JPEGs of the Paris6k photos, warm page cache, 2 busy
cores): shallow ~30 us per image (exists, not empty, header of the right format and size,
end-of-image marker), ~40 us with the manifest reading, so 80k images take ~3 s; deep (every
pixel decoded) ~0.3-0.4 ms per image, ~30 s for 80k, which is why ``deep`` is off by default
and on in ``verify``. Shallow finds what makes the training decoder fail (0-byte files, cut
copies, garbage, another format or size); deep also finds damaged headers and tables. Neither
PIL nor torchvision reports corrupt entropy-coded data (libjpeg repairs it with a warning), so
no decoder-based check can.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from common import schema
from common.errors import ConfigError, DataError
from common.io import cleanup_temp_files, write_json
from data_prep.config import PrepConfig
from data_prep.images import CACHE_DIR, CACHE_META, FORMATS, build_cache, cache_relpath, check_cached_file
from data_prep.stage import stage_os_errors

log = logging.getLogger(__name__)

CACHES = ("jpeg", "packed")  # the trainer's ``cache`` values: the file cache (JPEG or PNG) or packed
VERIFY_REPORT = "verify_report.json"
WHOLE_CACHE = ""  # the id of a problem that concerns the whole packed cache, not one image

Problem = tuple[str, str, str]  # (manifest, id, problem)


def manifest_names(data_dir: str | Path) -> list[str]:
    """The manifests prep wrote in ``data_dir``: the splits, then the extra sets that exist."""
    data_dir = Path(data_dir)
    extra = [m for m in schema.EXTRA_MANIFESTS if schema.manifest_path(data_dir, m).is_file()]
    return [*schema.SPLITS, *extra]


def cache_meta(data_dir: str | Path) -> dict:
    """``images/cache.json`` (size, mode, format, quality of the cached files); {} when unreadable."""
    try:
        meta = json.loads((Path(data_dir) / CACHE_DIR / CACHE_META).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _rows(data_dir: Path, manifests: Sequence[str]) -> list[tuple[str, str, str]]:
    """(manifest, id, image relpath) of every row of ``manifests``, in manifest order."""
    out = []
    for name in manifests:
        df = schema.read_manifest(data_dir, name)
        out += [(name, i, img) for i, img in zip(df["id"], df["image"])]
    return out


def _threaded(fn: Callable, items: list, workers: int) -> list:
    """``[fn(x) for x in items]`` over ``workers`` threads in chunks (PIL releases the GIL)."""
    chunks = [items[i : i + 64] for i in range(0, len(items), 64)]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return [r for part in pool.map(lambda c: [fn(x) for x in c], chunks) for r in part]


def _decode(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _inspect(
    path: Path, fmt: str | None, size: int | None, deep: bool, packed_row: np.ndarray | None
) -> tuple[str | None, bool]:
    """(problem of the cached file or None, whether ``packed_row`` differs from its pixels)."""
    problem = check_cached_file(path, fmt, size, deep=False)
    if problem is not None or not (deep or packed_row is not None):
        return problem, False
    try:
        pixels = _decode(path)
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        return f"cannot decode ({type(e).__name__}: {str(e).strip() or 'no detail'})", False
    return None, packed_row is not None and not np.array_equal(pixels, packed_row)


def _packed_size(data_dir: Path, meta: dict) -> int | None:
    from data_prep.packed import packed_sizes

    sizes = packed_sizes(data_dir)
    if meta.get("size") in sizes:
        return int(meta["size"])
    return sizes[0] if len(sizes) == 1 else meta.get("size")


def check_cache(
    data_dir: Path, manifests: list[str], cache: str = "jpeg", deep: bool = False, *, workers: int = 2
) -> list[tuple[str, str, str]]:
    """Problems of the cached images of ``manifests``: ``[(manifest, id, problem)]`` (empty = sound).

    ``cache="jpeg"`` (the file cache, JPEG or PNG): each file exists, is not empty, has a header
    of the prepped format and size and its end marker; ``deep`` also decodes every pixel.
    ``cache="packed"``: the packed index and array are complete and hold every manifest id
    (a problem of the whole cache has id ``""``); ``deep`` also compares every row with the
    pixels of its cached file. A manifest that is missing or malformed raises DataError.
    """
    if cache not in CACHES:
        raise ConfigError(f"unknown cache '{cache}' (valid: {', '.join(CACHES)})")
    data_dir = Path(data_dir)
    meta = cache_meta(data_dir)
    rows = _rows(data_dir, manifests)
    if cache == "jpeg":
        images = sorted({img for _, _, img in rows})
        found = _threaded(lambda img: _inspect(data_dir / img, meta.get("format"), meta.get("size"), deep, None)[0],
                          images, workers)  # fmt: skip
        bad = {img: p for img, p in zip(images, found) if p is not None}
        return [(m, i, bad[img]) for m, i, img in rows if img in bad]
    return _check_packed(data_dir, manifests, rows, meta, deep, workers)


def _check_packed(
    data_dir: Path, manifests: Sequence[str], rows: list, meta: dict, deep: bool, workers: int
) -> list[Problem]:
    from data_prep.packed import open_packed

    size = _packed_size(data_dir, meta)
    if size is None:
        return [(m, WHOLE_CACHE, "no packed cache (run prep with packed=true)") for m in manifests[:1]]
    try:
        arr, ids = open_packed(data_dir, size)
    except DataError as e:
        return [(m, WHOLE_CACHE, str(e)) for m in manifests[:1]]
    pos = {image_id: k for k, image_id in enumerate(ids)}
    problems = [(m, i, f"not in the packed cache of size {size}") for m, i, _ in rows if i not in pos]
    if not deep:
        return problems
    present = [(m, i, img) for m, i, img in rows if i in pos]

    def inspect(row: tuple) -> str | None:
        _, image_id, img = row
        problem, differs = _inspect(data_dir / img, meta.get("format"), size, True, arr[pos[image_id]])
        if problem is not None:
            return f"its cached file: {problem}"
        return "packed row differs from its cached file" if differs else None

    found = _threaded(inspect, present, workers)
    return problems + [(m, i, p) for (m, i, _), p in zip(present, found) if p is not None]


def repair(
    data_dir: Path,
    problems: list[Problem],
    sources: dict[str, tuple[str, Callable, bool]],
    workers: int = 2,
    progress: bool = False,
) -> tuple[dict[str, str], dict[str, str]]:
    """Re-encode the cached files of ``problems`` from ``sources`` (``{id: (src, opener, track)}``,
    see :func:`data_prep.inputs.sources_of`) with the cache's own settings (``images/cache.json``).

    The damaged file is deleted first (a file that cannot be replaced is then plainly missing,
    never silently trusted). Returns ``({id: problem it had}, {id: why it could not be fixed})``.
    """
    data_dir = Path(data_dir)
    meta = cache_meta(data_dir)
    if not meta.get("size") or meta.get("format") not in FORMATS:
        raise DataError(f"{data_dir / CACHE_DIR / CACHE_META}: missing or unreadable; rerun prep")
    fmt, size = meta["format"], int(meta["size"])
    bad: dict[str, str] = {}
    for _, image_id, problem in problems:
        if image_id != WHOLE_CACHE:
            bad.setdefault(image_id, problem)
    fixed: dict[str, str] = {}
    unfixed: dict[str, str] = {}
    groups: dict[tuple, tuple[Callable, bool, list]] = {}
    for image_id in bad:
        (data_dir / cache_relpath(image_id, FORMATS[fmt])).unlink(missing_ok=True)
        if image_id not in sources:
            unfixed[image_id] = "not in the source any more (rerun prep)"
            continue
        src, opener, track = sources[image_id]
        groups.setdefault((id(opener), track), (opener, track, []))[2].append((image_id, src))
    for opener, track, items in groups.values():
        done, failed = build_cache(
            items,
            data_dir,
            opener,
            size,
            meta.get("mode", "square"),
            meta.get("quality") or 92,
            workers,
            progress,
            fmt=fmt,
            track_sources=track,
        )
        src_of = dict(items)
        for image_id, reason in failed.items():
            unfixed[image_id] = f"its source cannot be read: {reason} ({src_of[image_id]})"
        for image_id, rel in done.items():
            problem = check_cached_file(data_dir / rel, fmt, size, deep=True)
            if problem is None:
                fixed[image_id] = bad[image_id]
            else:
                unfixed[image_id] = f"re-encoded but still bad: {problem}"
    return fixed, unfixed


def patch_packed(data_dir: Path, manifests: Sequence[str], ids: Sequence[str] | dict, workers: int = 2) -> int:
    """Rewrite the packed rows of ``ids`` from their (sound) cached files; returns how many.

    In place (the array can be many GB): a process killed mid-row leaves that row wrong, which
    the next ``verify`` finds and patches again; the rows it had were wrong already.
    """
    from data_prep.packed import packed_paths, read_index

    data_dir = Path(data_dir)
    size = _packed_size(data_dir, cache_meta(data_dir))
    if not ids or size is None or not packed_paths(data_dir, size)[1].is_file():
        return 0
    index = read_index(data_dir, size)
    pos = {image_id: k for k, image_id in enumerate(index["ids"])}
    image_of = {i: img for _, i, img in _rows(data_dir, manifests)}
    todo = [(pos[i], data_dir / image_of[i]) for i in ids if i in pos and i in image_of]
    if not todo:
        return 0
    arr = np.memmap(packed_paths(data_dir, size)[0], dtype=np.uint8, mode="r+", shape=tuple(index["shape"]))
    try:
        for row, pixels in zip([r for r, _ in todo], _threaded(lambda t: _decode(t[1]), todo, workers)):
            arr[row] = pixels
        arr.flush()
    finally:
        del arr
    return len(todo)


def _rebuild_packed(data_dir: Path, manifests: Sequence[str], size: int, workers: int) -> dict:
    from data_prep.packed import build_packed

    rows = _rows(data_dir, manifests)  # manifest order, as prep packs them
    return build_packed(data_dir, [i for _, i, _ in rows], [img for _, _, img in rows], size, workers)


def run_verify(cfg: PrepConfig, deep: bool = True, progress: bool = False) -> dict:
    """Check every cached image of ``cfg``'s dataset, re-encode the damaged ones, fix the packed
    cache; returns the report (also ``verify_report.json``), ``report["ok"]`` False when some
    image could not be fixed."""
    from common.lock import folder_lock

    out = Path(cfg.data_root) / cfg.dataset
    if not (out / schema.PREP_REPORT).is_file():
        raise DataError(f"{out}: no finished prep to verify (run 'make prep' first)")
    with stage_os_errors("verify"), folder_lock(out, "verify"):
        return _run_verify(cfg, out, deep, progress)


def _run_verify(cfg: PrepConfig, out: Path, deep: bool, progress: bool) -> dict:
    t0 = time.time()
    temp = cleanup_temp_files(out)
    names = manifest_names(out)
    meta = cache_meta(out)
    images = len({img for _, _, img in _rows(out, names)})
    problems = check_cache(out, names, "jpeg", deep, workers=cfg.workers)
    for m, i, p in problems[:20]:
        log.warning("%s: %s: %s", m, i, p)
    fixed, unfixed = ({}, {}) if not problems else repair(out, problems, _sources(cfg, out), cfg.workers, progress)
    packed: dict | None = None
    size = _packed_size(out, meta)
    if size is not None and (cfg.packed or any(out.glob("packed_*.json"))):
        packed = _verify_packed(out, names, size, deep, fixed, unfixed, cfg.workers)
    for image_id, problem in list(fixed.items())[:20]:
        log.info("re-encoded %s (was: %s)", image_id, problem)
    for image_id, why in list(unfixed.items())[:20]:
        log.error("could not fix %s: %s", image_id, why)
    ok = not unfixed and (packed is None or packed["ok"])
    report = {
        "images": images,
        "deep": deep,
        "problems": [{"manifest": m, "id": i, "problem": p} for m, i, p in problems],
        "fixed": fixed,
        "unfixed": unfixed,
        "packed": packed,
        "temp_files_removed": temp,
        "ok": ok,
        "seconds": round(time.time() - t0, 1),
    }
    write_json(out / VERIFY_REPORT, report)
    log.info(
        "verify %s: %d cached images %s, %d damaged: %d re-encoded, %d could not be fixed%s (%s)",
        out,
        images,
        "decoded" if deep else "checked (header and end marker)",
        len({i for _, i, _ in problems}),
        len(fixed),
        len(unfixed),
        f"; packed cache: {packed['summary']}" if packed else "",
        out / VERIFY_REPORT,
    )
    return report


def _verify_packed(
    out: Path, names: list[str], size: int, deep: bool, fixed: dict, unfixed: dict, workers: int
) -> dict:
    """Patch the packed rows of re-encoded images and rows that differ from their file; rebuild
    an incomplete packed cache (when every file is sound)."""
    problems = check_cache(out, names, "packed", deep, workers=workers)
    whole = [p for _, i, p in problems if i == WHOLE_CACHE or p.startswith("not in the packed cache")]
    if whole:
        if unfixed:
            return {"ok": False, "summary": f"broken ({whole[0]}), not rebuilt while images are bad"}
        built = _rebuild_packed(out, names, size, workers)
        return {"ok": True, "summary": f"rebuilt ({whole[0]})", "rows": built["rows"]}
    differ = [i for _, i, p in problems if p == "packed row differs from its cached file"]
    patched = patch_packed(out, names, sorted(set(differ) | set(fixed)), workers)
    return {"ok": True, "summary": f"{patched} rows patched", "patched": patched}


def _sources(cfg: PrepConfig, out: Path) -> dict:
    """``{id: (src, opener, track)}`` from ``cfg``'s source (read again: only when something is bad)."""
    from data_prep import inputs as pi
    from data_prep.competition import read_extra_sets

    table = pi.read_source(cfg)
    test_root, nonlandmark_root = pi.extra_roots(cfg)
    extra = read_extra_sets(test_root, cfg.test_format, cfg.solution_csv, nonlandmark_root)
    inputs = pi.prep_inputs(cfg, table, extra)
    if not pi.is_up_to_date(out, pi.fingerprint(inputs), extra):
        log.warning(
            "the config given is not the one of the prep in %s (%s): re-encoding from this config's source",
            out,
            pi.rerun_reason(out, inputs, extra),
        )
    return pi.sources_of(cfg, table, extra)
