"""The prep stage: raw source -> selection -> splits -> resized cache -> manifests + report.

Output in ``<data_root>/<dataset>/`` (see :mod:`common.schema`). A rerun with the same config
and the same source is a no-op (fingerprint in the report); a killed run resumes: cached images
are kept and the manifests, written last and atomically, are never half-written.

The fingerprint and the image cache key on content (ids, labels, file sizes, the config's
values; the cache also each source's mtime and a content sample), never on paths: the same raw
data reached through a symlink, a new mount point or a copy is up to date. When prep does
rerun, the log says why (which config key, the source's rows or images, the extra sets). One
process at a time: the dataset folder is locked (:func:`common.lock.folder_lock`), and a full
disk or an unwritable folder is one error line naming the file. An up-to-date rerun still
checks the cached files (existence, size, header, end marker) and re-encodes damaged ones;
``python -m data_prep verify`` decodes every one.

Beside the labelled source (see :mod:`data_prep.competition`):

* ``test_root``: the competition's test set, cached like the training images ->
  ``competition.csv`` (readable images; labels from a solution file, else UNLABELLED) and
  ``competition_order.csv`` (every id in submission order with ``ok`` or why it is unreadable);
* ``nonlandmark_root``: images without a landmark; ``nonlandmark_test_share`` of the internal
  test split is made of them (label NON_LANDMARK), the rest form ``nonlandmark.csv``.
  train/val (and the folds made over train) stay landmark-only.

The synthetic default generates both (``<source_root>/competition``, ``<source_root>/nonlandmark``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from common import schema
from common.errors import DataError, PipelineError
from common.io import cleanup_temp_files, write_csv, write_json, write_yaml
from common.lock import folder_lock
from data_prep import select
from data_prep.competition import (
    ExtraSets,
    check_unique_ids,
    files_signature,
    label_counts,
    label_rows,
    read_extra_sets,
    split_nonlandmark,
)
from data_prep.config import PrepConfig
from data_prep.images import CACHE_DIR, CACHE_META, FILE_SOURCE, build_cache, draft_open, prepare_cache_dir
from data_prep.sources import SourceTable

log = logging.getLogger(__name__)

FILE_SOURCES = ("synthetic", "gld_v2", "gld_v1", "imagefolder")
SKIPPED_READING = "skipped_reading.csv"  # rows dropped by the reader (missing image, duplicate id, ...)
SKIPPED_IMAGES = "skipped_images.csv"  # selected rows whose image could not be decoded
SKIPPED_COMPETITION = "skipped_competition.csv"  # competition test images that could not be read
SKIPPED_NONLANDMARK = "skipped_nonlandmark.csv"  # non-landmark images that could not be read
COMPETITION_OUTPUTS = (f"{schema.COMPETITION}.csv", schema.COMPETITION_ORDER, SKIPPED_COMPETITION)
NONLANDMARK_OUTPUTS = (f"{schema.NONLANDMARK}.csv", SKIPPED_NONLANDMARK)
HISTOGRAM = "class_histogram.png"


def source_root(cfg: PrepConfig) -> Path:
    if cfg.source_root:
        return Path(cfg.source_root)
    if cfg.source == "synthetic":
        return Path(cfg.data_root) / "raw" / cfg.dataset
    raise DataError(f"prep: source '{cfg.source}' needs source_root (where the raw data is)")


def synth_spec(cfg: PrepConfig):
    from data_prep.synthetic import SynthSpec

    return SynthSpec(
        cfg.synth_classes,
        cfg.synth_max_per_class,
        cfg.synth_min_per_class,
        cfg.synth_tail,
        cfg.synth_image_size,
        cfg.seed,
        cfg.synth_nonlandmark,
        cfg.synth_competition,
        cfg.synth_competition_landmarks,
    )


def extra_roots(cfg: PrepConfig) -> tuple[Path | None, Path | None]:
    """(test_root, nonlandmark_root) of ``cfg``; the synthetic default supplies its generated ones."""
    test_root = Path(cfg.test_root) if cfg.test_root else None
    nonlandmark_root = Path(cfg.nonlandmark_root) if cfg.nonlandmark_root else None
    if cfg.source == "synthetic":
        from data_prep import synthetic

        spec, root = synth_spec(cfg), source_root(cfg)
        if test_root is None and synthetic.competition_count(spec):
            test_root = root / synthetic.COMPETITION_DIR
        if nonlandmark_root is None and synthetic.nonlandmark_count(spec):
            nonlandmark_root = root / synthetic.NONLANDMARK_DIR
    return test_root, nonlandmark_root


def read_source(cfg: PrepConfig) -> SourceTable:
    """Dispatch to the reader of ``cfg.source`` (generating the synthetic default if absent)."""
    root = source_root(cfg)
    if cfg.source == "synthetic":
        from data_prep import synthetic

        spec = synth_spec(cfg)
        if not synthetic.is_complete(root, spec):
            log.info("generating the synthetic default data set in %s", root)
            synthetic.generate(root, spec, workers=cfg.workers)  # locks root while it writes
        from data_prep.readers import read_gld_v2

        table = read_gld_v2(root)
        # the version makes the fingerprint and the image cache follow generator changes
        table.description = f"synthetic landmarks v{synthetic.GENERATOR_VERSION} at {root}"
        table.identity = f"synthetic landmarks v{synthetic.GENERATOR_VERSION}"
        return table
    if cfg.source == "gld_v2":
        from data_prep.readers import read_gld_v2

        return read_gld_v2(root, cfg.label_source)
    if cfg.source == "gld_v1":
        from data_prep.readers import read_gld_v2

        return read_gld_v2(root)  # v1 images, once downloaded (data_prep.download), use the v2 layout
    if cfg.source == "imagefolder":
        from data_prep.readers import read_image_folder

        return read_image_folder(root)
    from data_prep import cifar  # cifar10 / cifar100

    return cifar.read_cifar(root, cfg.source)


# config keys that say where things are (or how fast), not what the outputs hold
WHERE_KEYS = ("workers", "data_root", "source_root", "test_root", "nonlandmark_root", "solution_csv")


def select_rows(cfg: PrepConfig, rows: pd.DataFrame) -> tuple[int, pd.DataFrame]:
    """(rows after top-K, rows after sampling) of the source's rows: seed 001's selection."""
    rows = select.top_k_classes(rows, cfg.top_k)
    return len(rows), select.subsample(rows, cfg.sample_ratio, cfg.seed, cfg.min_per_class, cfg.max_per_class)


def prep_inputs(cfg: PrepConfig, table: SourceTable, extra: ExtraSets, selected: pd.DataFrame | None = None) -> dict:
    """Everything the outputs depend on, and nothing about where the inputs were found.

    ``config``: the prep keys except paths and ``workers``; ``source``: the reader's content
    identity; ``rows``: hash of the source's ids, landmark ids and names; ``images``: relative
    paths and sizes of the selected image files (a replaced photo under the same id reruns
    prep); ``extra_sets``: the competition test set and non-landmark folder (ids, files'
    relative paths and sizes, the solution's bytes). The same data through a symlink, a new
    mount point or a copy gives the same inputs, so a prep there is a no-op. (Mtimes are left
    to the image cache, which tells a copy from a replaced file by a content sample.)
    """
    cols = [c for c in ("id", "landmark_id", "name") if c in table.rows.columns]
    rows = pd.util.hash_pandas_object(table.rows[cols], index=False).to_numpy().tobytes()
    images = None
    if cfg.source in FILE_SOURCES and not table.rows.empty:
        if selected is None:
            selected = select_rows(cfg, table.rows)[1]
        images = files_signature(selected["src"], source_root(cfg), mtimes=False)
    return {
        "config": {k: v for k, v in asdict(cfg).items() if k not in WHERE_KEYS},
        "source": table.identity or table.description,
        "rows": hashlib.sha1(rows).hexdigest()[:16],
        "images": images,
        "extra_sets": extra.signature(),
    }


def fingerprint(inputs: dict) -> str:
    """The prep's identity (``prep_report.json``; runs and prediction files record it)."""
    return hashlib.sha1(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _expected_outputs(out: Path, extra: ExtraSets) -> list[Path]:
    paths = [schema.manifest_path(out, s) for s in schema.SPLITS]
    if extra.competition is not None:
        paths += [schema.manifest_path(out, schema.COMPETITION), out / schema.COMPETITION_ORDER]
    if extra.nonlandmark is not None:
        paths.append(schema.manifest_path(out, schema.NONLANDMARK))
    return paths


def _read_report(out: Path) -> dict | None:
    try:
        report = json.loads((out / schema.PREP_REPORT).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return report if isinstance(report, dict) else None


def is_up_to_date(out: Path, fingerprint: str, extra: ExtraSets | None = None) -> bool:
    report = _read_report(out)
    if report is None or not all(p.is_file() for p in _expected_outputs(out, extra or ExtraSets())):
        return False
    return report.get("fingerprint") == fingerprint


def rerun_reason(out: Path, inputs: dict, extra: ExtraSets | None = None) -> str:
    """Why the prep in ``out`` is not up to date for ``inputs`` (for the log: a rebuild at GLD
    scale costs hours, so the user must see what triggered it)."""
    report = _read_report(out)
    if report is None:
        return f"no finished prep in {out}" if not (out / schema.PREP_REPORT).exists() else "unreadable prep report"
    missing = [p.name for p in _expected_outputs(out, extra or ExtraSets()) if not p.is_file()]
    if missing:
        return f"output(s) missing: {', '.join(missing)}"
    old = report.get("inputs")
    if not isinstance(old, dict):
        return "the prep report was written by an older version (no content keys); cached images are reused"
    reasons = []
    old_cfg, new_cfg = old.get("config") or {}, inputs["config"]
    changed = [k for k in sorted(set(old_cfg) | set(new_cfg)) if old_cfg.get(k) != new_cfg.get(k)]
    if changed:
        shown = ", ".join(f"{k} {old_cfg.get(k)!r} -> {new_cfg.get(k)!r}" for k in changed[:5])
        reasons.append(f"config changed: {shown}{' ...' if len(changed) > 5 else ''}")
    if old.get("source") != inputs["source"]:
        reasons.append(f"the source changed ({old.get('source')!r} -> {inputs['source']!r})")
    if old.get("rows") != inputs["rows"]:
        reasons.append("the source's rows changed (ids, landmark ids or names)")
    elif old.get("images") != inputs["images"] and not changed:
        reasons.append("the selected images changed (files' sizes)")
    if old.get("extra_sets") != inputs["extra_sets"]:
        reasons.append("the competition test set or the non-landmark folder changed (ids, files' sizes, solution)")
    return "; ".join(reasons) or "the fingerprint changed"


def _opener(cfg: PrepConfig, table: SourceTable):
    """File sources open through JPEG draft mode; in-memory sources (CIFAR) through the table."""
    if cfg.source in FILE_SOURCES:
        return functools.partial(draft_open, size=cfg.image_size)
    return table.open_image


_OS_HINTS = {
    errno.ENOSPC: "disk full: free some space or choose another data_root; finished files are kept, rerun to resume",
    errno.EDQUOT: "disk quota exceeded: free some space or choose another data_root",
    errno.EACCES: "permission denied: choose a writable data_root (or fix the folder's permissions)",
    errno.EPERM: "not permitted: choose a writable data_root (or fix the folder's permissions)",
    errno.EROFS: "read-only file system: choose a writable data_root",
}


@contextlib.contextmanager
def stage_os_errors(stage: str) -> Iterator[None]:
    """An OSError escaping the stage (full disk, unwritable or read-only folder, ...) becomes one
    :class:`PipelineError` line naming the file, instead of a traceback from deep inside pandas."""
    try:
        yield
    except OSError as e:
        if e.errno is None:
            raise
        log.debug("%s failed", stage, exc_info=True)
        where = f"{e.filename}: " if e.filename else ""
        hint = f" ({_OS_HINTS[e.errno]})" if e.errno in _OS_HINTS else ""
        raise PipelineError(f"{stage}: {where}{e.strerror or type(e).__name__}{hint}") from None


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """Name ``path`` in an OSError that names no file (``write()`` on a full disk names none)."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise


def run_prep(cfg: PrepConfig, progress: bool = True) -> dict:
    """Run the stage; returns the prep report (also written to ``prep_report.json``).

    The counts reconcile exactly: ``rows_in = rows_read + sum(skipped_reading)``,
    ``rows_after_sampling = rows_kept + sum(skipped_images)``,
    ``sum(splits) = rows_kept + nonlandmark.test``; for the competition set
    ``ids = readable + sum(skipped)`` and for the non-landmark folder
    ``images = readable + sum(skipped) = test + pool + sum(skipped)``.
    Dropped rows are listed in ``skipped_reading.csv``, ``skipped_images.csv``,
    ``skipped_competition.csv`` and ``skipped_nonlandmark.csv``.

    A second prep of the same dataset folder is refused while this one runs (one line naming
    it); an OSError (full disk, unwritable folder) is one :class:`PipelineError` naming the file.
    """
    out = Path(cfg.data_root) / cfg.dataset
    with stage_os_errors("prep"), folder_lock(out, "prep"):
        return _run_prep(cfg, out, progress)


def _run_prep(cfg: PrepConfig, out: Path, progress: bool) -> dict:
    t0 = time.time()
    cleanup_temp_files(out)  # killed writes of an earlier run (the lock says none is running)
    table = read_source(cfg)
    test_root, nonlandmark_root = extra_roots(cfg)
    extra = read_extra_sets(test_root, cfg.test_format, cfg.solution_csv, nonlandmark_root)
    check_unique_ids(extra, table.rows, table.description)
    if table.rows.empty:
        _write_list(out / SKIPPED_READING, getattr(table, "skipped_rows", None))
        raise DataError(f"prep: {table.description} has no usable rows (see {out / SKIPPED_READING})")
    after_top_k, selected = select_rows(cfg, table.rows)
    inputs = prep_inputs(cfg, table, extra, selected)
    fp = fingerprint(inputs)
    if is_up_to_date(out, fp, extra):
        log.info("%s is up to date (fingerprint %s): nothing to do", out, fp)
        _recheck_cache(cfg, out, table, extra, progress)
        return json.loads((out / schema.PREP_REPORT).read_text())
    log.info("prep %s runs: %s", out, rerun_reason(out, inputs, extra))
    rows = table.rows
    report: dict = {
        "source": table.description,
        "rows_in": len(rows) + sum(table.skipped.values()),
        "skipped_reading": dict(sorted(table.skipped.items())),
        "rows_read": len(rows),
        "classes_in": int(rows["landmark_id"].nunique()),
    }
    _write_list(out / SKIPPED_READING, getattr(table, "skipped_rows", None))
    report["rows_after_top_k"] = after_top_k
    rows = selected
    report["rows_after_sampling"] = len(rows)

    fmt = cfg.cache_format()
    cache_meta = cache_settings(cfg, table)
    with naming(out / CACHE_DIR / CACHE_META):
        prepare_cache_dir(out, cache_meta)
    cache_stats: list[dict] = []

    def cache(df: pd.DataFrame, opener=None) -> tuple[dict[str, str], dict[str, str], dict]:
        """Cache ``df``'s ``id, src`` rows like every other image of the stage; files (the file
        sources, the test set and non-landmark folder) are checked against their recorded size
        and mtime, so a replaced file under the same id is re-encoded."""
        track = opener is None or cfg.source in FILE_SOURCES
        done, failed, st = _cache(df, opener or file_opener, cfg, out, fmt, progress, track)
        cache_stats.append(st)
        return done, failed, st

    file_opener = functools.partial(draft_open, size=cfg.image_size)
    done, failed, stats = cache(rows, _opener(cfg, table))
    _write_list(out / SKIPPED_IMAGES, _failures(rows, failed, stats))
    if failed:
        log.warning("%d images could not be read and were skipped (listed in %s)", len(failed), out / SKIPPED_IMAGES)
    report["skipped_images"] = _reason_counts(failed)
    rows = rows[rows["id"].isin(done)].copy()
    if rows.empty:
        raise DataError(f"prep: no readable images left for {cfg.dataset} (see {out / SKIPPED_IMAGES})")
    rows["image"] = rows["id"].map(done)
    rows["split"] = select.stratified_split(rows, cfg.val_frac, cfg.test_frac, cfg.seed)
    if not (rows["split"] == "test").any():
        largest = int(rows["landmark_id"].value_counts().max())
        raise DataError(
            f"prep: the internal test split of {cfg.dataset} is empty (test_frac={cfg.test_frac} of at most "
            f"{largest} images per class rounds to 0); training evaluates it after the last epoch: raise test_frac"
        )
    lm = select.label_map(rows)
    label_of = dict(zip(lm["landmark_id"], lm["label"]))
    rows["label"] = rows["landmark_id"].map(label_of).astype("int64")
    manifests = {s: rows.loc[rows["split"] == s, schema.MANIFEST_COLUMNS] for s in schema.SPLITS}
    report["competition"] = report["nonlandmark"] = None
    if extra.competition is not None:
        manifests[schema.COMPETITION], report["competition"] = _competition(extra, cache, label_of, out)
    if extra.nonlandmark is not None:
        test_nl, manifests[schema.NONLANDMARK], report["nonlandmark"] = _nonlandmark(
            extra, cache, len(manifests["test"]), cfg, out
        )
        manifests["test"] = pd.concat([manifests["test"], test_nl], ignore_index=True)
    report["cache"] = {
        **cache_meta,
        "folder": "images",
        "encoded": sum(st["encoded"] for st in cache_stats),
        "reused": sum(st["reused"] for st in cache_stats),
    }
    reencoded: dict[str, int] = {}
    for st in cache_stats:
        for why, n in st.get("reencoded", {}).items():
            reencoded[why] = reencoded.get(why, 0) + n
    report["cache"]["reencoded"] = dict(sorted(reencoded.items()))

    _write_csv(out / schema.LABEL_MAP, lm[schema.LABEL_MAP_COLUMNS])
    _remove_unconfigured(out, extra)
    for name, df in manifests.items():
        _write_csv(schema.manifest_path(out, name), df[schema.MANIFEST_COLUMNS])
    with naming(out / schema.PREP_CONFIG):
        write_yaml(out / schema.PREP_CONFIG, asdict(cfg))
    if cfg.packed:
        from data_prep.packed import build_packed, packed_paths

        ordered = pd.concat(manifests.values(), ignore_index=True)  # manifest order: splits, then the extra sets
        with naming(packed_paths(out, cfg.image_size)[0]):
            report["packed"] = build_packed(out, ordered["id"], ordered["image"], cfg.image_size, cfg.workers, progress)
    counts = lm["count"]
    report.update(
        rows_kept=len(rows),
        classes_kept=len(lm),
        splits={s: len(manifests[s]) for s in schema.SPLITS},
        images_per_class={
            "min": int(counts.min()),
            "median": float(counts.median()),
            "max": int(counts.max()),
            "mean": round(float(counts.mean()), 2),
        },
        histogram=HISTOGRAM,
        inputs=inputs,
        fingerprint=fp,
        seconds=round(time.time() - t0, 1),
    )
    _check_counts(report)
    with naming(out / HISTOGRAM):
        _plot_histogram(lm, out / HISTOGRAM, cfg.dataset)
    with naming(out / schema.PREP_REPORT):
        write_json(out / schema.PREP_REPORT, report)  # written last: its fingerprint marks a complete prep
    log.info(
        "prep %s: %d images in %d classes -> train/val/test %s (%.1fs)",
        cfg.dataset,
        len(rows),
        len(lm),
        report["splits"],
        report["seconds"],
    )
    return report


def cache_settings(cfg: PrepConfig, table: SourceTable) -> dict:
    """``images/cache.json``: what the cached pixels depend on (never the raw data's path)."""
    fmt = cfg.cache_format()
    return {
        "source": FILE_SOURCE if cfg.source in FILE_SOURCES else (table.identity or table.description),
        "size": cfg.image_size,
        "mode": cfg.resize_mode,
        "format": fmt,
        "quality": cfg.jpeg_quality if fmt == "jpeg" else None,
    }


def sources_of(cfg: PrepConfig, table: SourceTable, extra: ExtraSets) -> dict[str, tuple[str, object, bool]]:
    """``{id: (src, opener, track_sources)}`` of every image prep caches (to re-encode one)."""
    file_opener = functools.partial(draft_open, size=cfg.image_size)
    opener, track = _opener(cfg, table), cfg.source in FILE_SOURCES
    skipped = getattr(table, "skipped_rows", None)  # e.g. a source image gone since: says so when re-encoded
    out = {} if skipped is None else {i: (src, opener, track) for i, src in zip(skipped["id"], skipped["src"])}
    out.update({i: (src, opener, track) for i, src in zip(table.rows["id"], table.rows["src"])})
    for df in (extra.competition, extra.nonlandmark):
        if df is not None:
            out.update({i: (src, file_opener, True) for i, src in zip(df["id"], df["src"])})
    return out


def _recheck_cache(cfg: PrepConfig, out: Path, table: SourceTable, extra: ExtraSets, progress: bool) -> None:
    """An up-to-date prep still checks its cached files (cheap: header and end marker) and
    re-encodes damaged ones, so rerunning prep after a decode error is never a silent no-op."""
    from data_prep import verify

    names = verify.manifest_names(out)
    problems = verify.check_cache(out, names, workers=cfg.workers)
    if not problems:
        return
    log.warning("%s: %d cached images are damaged: re-encoding them", out, len({i for _, i, _ in problems}))
    fixed, unfixed = verify.repair(out, problems, sources_of(cfg, table, extra), cfg.workers, progress)
    patched = verify.patch_packed(out, names, list(fixed), cfg.workers)
    log.info("%s: re-encoded %d damaged cached images (%d packed rows rewritten)", out, len(fixed), patched)
    if unfixed:
        first = next(iter(unfixed.items()))
        raise DataError(
            f"prep: {len(unfixed)} damaged cached images of {out} could not be re-encoded "
            f"(first: {first[0]}: {first[1]}); run 'python -m data_prep verify' for the list"
        )


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    with naming(path):
        write_csv(path, df)


def _cache(
    rows: pd.DataFrame, opener, cfg: PrepConfig, out: Path, fmt: str, progress: bool, track: bool = False
) -> tuple[dict[str, str], dict[str, str], dict]:
    """Cache the ``id, src`` rows with the stage's size/mode/format; (done, failed, stats)."""
    stats: dict = {}
    done, failed = build_cache(
        zip(rows["id"], rows["src"]),
        out,
        opener,
        cfg.image_size,
        cfg.resize_mode,
        cfg.jpeg_quality,
        cfg.workers,
        progress,
        fmt=fmt,
        stats=stats,
        track_sources=track,
    )
    return done, failed, stats


def _failures(rows: pd.DataFrame, failed: dict[str, str], stats: dict) -> pd.DataFrame:
    src_of = dict(zip(rows["id"], rows["src"]))
    return pd.DataFrame(
        [(i, src_of[i], r, stats["details"].get(i, "")) for i, r in sorted(failed.items())],
        columns=["id", "src", "reason", "detail"],
    )


def _reason_counts(failed: dict[str, str]) -> dict[str, int]:
    return {k: int(v) for k, v in sorted(pd.Series(failed, dtype=object).value_counts().items())}


def _competition(extra: ExtraSets, cache, label_of: dict[int, int], out: Path) -> tuple[pd.DataFrame, dict]:
    """Cache the competition test images; (manifest of the readable ones, report section).

    Every id keeps its row in ``competition_order.csv`` (status ``ok`` or the failure reason):
    the submission must list it even when its image is missing or broken.
    """
    comp = extra.competition
    done, failed, stats = cache(comp)
    missing = comp.loc[~comp["id"].isin(done) & ~comp["id"].isin(failed), "id"]
    if len(missing):  # build_cache answers every id; a gap would be a bug, not a data problem
        raise AssertionError(f"cache returned no result for {len(missing)} competition ids")
    order = pd.DataFrame({"id": comp["id"], "status": comp["id"].map(lambda i: failed.get(i, "ok"))})
    _write_csv(out / schema.COMPETITION_ORDER, order)
    _write_list(out / SKIPPED_COMPETITION, _failures(comp, failed, stats))
    labels = label_rows(comp["id"], extra.solution, label_of)
    ok = comp["id"].isin(done)
    manifest = pd.DataFrame(
        {
            "id": comp.loc[ok, "id"],
            "image": comp.loc[ok, "id"].map(done),
            "label": labels.loc[ok, "label"],
            "landmark_id": labels.loc[ok, "landmark_id"],
        }
    )
    if failed:
        log.warning(
            "%d of %d competition test images are unreadable: kept in %s (empty predictions), listed in %s",
            len(failed),
            len(comp),
            schema.COMPETITION_ORDER,
            out / SKIPPED_COMPETITION,
        )
    section = {
        "root": str(extra.test_root),
        "format": extra.test_format,
        "solution": str(extra.solution_path) if extra.solution_path else None,
        "labelled": extra.solution is not None,
        "ids": len(comp),
        "readable": int(ok.sum()),
        "skipped": _reason_counts(failed),
        "labels": label_counts(manifest["label"]),
        "labels_all_ids": label_counts(labels["label"]),
    }
    if extra.solution is not None:
        section["solution_rows_not_in_test_set"] = int((~extra.solution["id"].isin(comp["id"])).sum())
    return manifest, section


def _nonlandmark(
    extra: ExtraSets, cache, n_landmark_test: int, cfg: PrepConfig, out: Path
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Cache the non-landmark images; (rows added to test.csv, the pool manifest, report section)."""
    nl = extra.nonlandmark
    done, failed, stats = cache(nl)
    _write_list(out / SKIPPED_NONLANDMARK, _failures(nl, failed, stats))
    readable = nl.loc[nl["id"].isin(done), "id"].reset_index(drop=True)
    test_ids, pool_ids = split_nonlandmark(readable, n_landmark_test, cfg.nonlandmark_test_share, cfg.seed)

    def manifest(ids: list[str]) -> pd.DataFrame:
        ids_s = pd.Series(ids, dtype=object)
        return pd.DataFrame(
            {"id": ids_s, "image": ids_s.map(done), "label": schema.NON_LANDMARK, "landmark_id": -1}
        ).astype({"label": "int64", "landmark_id": "int64"})

    test_total = n_landmark_test + len(test_ids)
    section = {
        "root": str(extra.nonlandmark_root),
        "images": len(nl),
        "readable": len(readable),
        "skipped": _reason_counts(failed),
        "test": len(test_ids),
        "pool": len(pool_ids),
        "test_share": round(len(test_ids) / test_total, 4) if test_total else 0.0,
    }
    return manifest(test_ids), manifest(pool_ids), section


def _remove_unconfigured(out: Path, extra: ExtraSets) -> None:
    """A set no longer configured must not leave its old manifest behind for the next stage to trust."""
    names = (COMPETITION_OUTPUTS if extra.competition is None else ()) + (
        NONLANDMARK_OUTPUTS if extra.nonlandmark is None else ()
    )
    for name in names:
        (out / name).unlink(missing_ok=True)


def _write_list(path: Path, df: pd.DataFrame | None) -> None:
    """Write a skip list (also when empty, so a rerun never shows a stale list)."""
    if df is None:
        df = pd.DataFrame(columns=["id", "src", "reason"])
    _write_csv(path, df)


def _check_counts(r: dict) -> None:
    """The report's counts must add up; a mismatch is a bug in this stage, not a data error."""
    nl, comp = r.get("nonlandmark"), r.get("competition")
    ok = (
        r["rows_in"] == r["rows_read"] + sum(r["skipped_reading"].values())
        and r["rows_after_sampling"] == r["rows_kept"] + sum(r["skipped_images"].values())
        and sum(r["splits"].values()) == r["rows_kept"] + (nl["test"] if nl else 0)
    )
    if comp:
        ok = ok and comp["ids"] == comp["readable"] + sum(comp["skipped"].values())
        ok = ok and sum(comp["labels"].values()) == comp["readable"]
    if nl:
        ok = ok and nl["images"] == nl["readable"] + sum(nl["skipped"].values()) == nl["test"] + nl["pool"] + sum(
            nl["skipped"].values()
        )
    if not ok:
        raise AssertionError(f"prep report counts do not reconcile: {r}")


def _plot_histogram(lm: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.io import atomic_write

    counts = lm["count"].sort_values(ascending=False).to_numpy()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(range(len(counts)), counts, width=1.0)
    ax.set_xlabel("class (sorted by size)")
    ax.set_ylabel("images")
    ax.set_title(f"{title}: images per class ({len(counts)} classes)")
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)
