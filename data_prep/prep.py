"""The prep stage: raw source -> selection -> splits -> resized cache -> manifests + report.

Output in ``<data_root>/<dataset>/`` (see :mod:`common.schema`). A rerun with the same config
and the same source is a no-op (fingerprint in the report); a killed run resumes: cached images
are kept and the manifests, written last and atomically, are never half-written.

The fingerprint and the image cache key on content (ids, labels, file sizes, the config's
values; the cache also each source's mtime and a content sample), never on paths: the same raw
data reached through a symlink, a new mount point or a copy is up to date. When prep does
rerun, the log says why. One process at a time (a folder lock); a full disk or an unwritable
folder is one error line. An up-to-date rerun still checks the cached files and re-encodes
damaged ones; ``python -m data_prep verify`` decodes every one. The competition test set has its
own identity (``test_fingerprint``): adding or replacing it keeps the training fingerprint.

Beside the labelled source (see :mod:`data_prep.competition`):

* ``test_root``: the competition's test set, cached like the training images ->
  ``competition.csv`` (readable images; labels from a solution file, else UNLABELLED) and
  ``competition_order.csv`` (every id in submission order with ``ok`` or why it is unreadable);
* ``nonlandmark_root``: images without a landmark; ``nonlandmark_test_share`` of the internal
  test split is made of them (label NON_LANDMARK), the rest form ``nonlandmark.csv``.
  train/val (and the folds made over train) stay landmark-only.

The synthetic default generates both (``<source_root>/competition``, ``<source_root>/nonlandmark``).
What the outputs depend on (source, selection, fingerprint) is :mod:`data_prep.inputs`, shared
with ``verify``; the report's checks and class-size histogram are :mod:`data_prep.report`.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from common import schema
from common.errors import DataError
from common.io import cleanup_temp_files, write_csv, write_json, write_yaml
from common.lock import folder_lock
from data_prep import select, verify
from data_prep.competition import (
    ExtraSets,
    check_unique_ids,
    label_counts,
    label_rows,
    read_extra_sets,
    split_nonlandmark,
)
from data_prep.config import PrepConfig
from data_prep.images import CACHE_DIR, CACHE_META, build_cache, draft_open, prepare_cache_dir
from data_prep.inputs import (
    FILE_SOURCES,
    cache_settings,
    extra_roots,
    fingerprint,
    is_up_to_date,
    opener,
    prep_inputs,
    read_source,
    rerun_reason,
    select_rows,
    sources_of,
    test_fingerprint,
)
from data_prep.report import HISTOGRAM, check_counts, class_sizes, plot_histogram, reason_counts
from data_prep.sources import SourceTable
from data_prep.stage import naming, stage_os_errors

log = logging.getLogger(__name__)

SKIPPED_READING = "skipped_reading.csv"  # rows dropped by the reader (missing image, duplicate id, ...)
SKIPPED_IMAGES = "skipped_images.csv"  # selected rows whose image could not be decoded
SKIPPED_COMPETITION = "skipped_competition.csv"  # competition test images that could not be read
SKIPPED_NONLANDMARK = "skipped_nonlandmark.csv"  # non-landmark images that could not be read
COMPETITION_OUTPUTS = (f"{schema.COMPETITION}.csv", schema.COMPETITION_ORDER, SKIPPED_COMPETITION)
NONLANDMARK_OUTPUTS = (f"{schema.NONLANDMARK}.csv", SKIPPED_NONLANDMARK)


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
    fp, test_fp = fingerprint(inputs), test_fingerprint(inputs)
    if is_up_to_date(out, fp, extra, test_fp):
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
        "rows_after_top_k": after_top_k,
        "rows_after_sampling": len(selected),
    }
    _write_list(out / SKIPPED_READING, getattr(table, "skipped_rows", None))
    cache_meta = cache_settings(cfg, table)
    with naming(out / CACHE_DIR / CACHE_META):
        prepare_cache_dir(out, cache_meta)
    cache = _Cacher(cfg, out, progress)
    rows, lm, manifests = _images_and_splits(cfg, out, selected, opener(cfg, table), cache, report)
    label_of = dict(zip(lm["landmark_id"], lm["label"]))
    report["competition"] = report["nonlandmark"] = None
    if extra.competition is not None:
        manifests[schema.COMPETITION], report["competition"] = _competition(extra, cache, label_of, out)
    if extra.nonlandmark is not None:
        test_nl, manifests[schema.NONLANDMARK], report["nonlandmark"] = _nonlandmark(
            extra, cache, len(manifests["test"]), cfg, out
        )
        manifests["test"] = pd.concat([manifests["test"], test_nl], ignore_index=True)
    report["cache"] = cache.section(cache_meta)
    _write_outputs(cfg, out, extra, lm, manifests, report, progress)
    report.update(_summary(table.rows["landmark_id"], rows, lm, manifests))
    report.update(histogram=HISTOGRAM, inputs=inputs, fingerprint=fp, test_fingerprint=test_fp,
                  seconds=round(time.time() - t0, 1))  # fmt: skip
    check_counts(report)
    with naming(out / HISTOGRAM):
        plot_histogram(lm, out / HISTOGRAM, cfg.dataset)
    with naming(out / schema.PREP_REPORT):
        write_json(out / schema.PREP_REPORT, report)  # written last: its fingerprint marks a complete prep
    log.info("prep %s: %d images in %d classes -> train/val/test %s (%.1fs)", cfg.dataset, len(rows), len(lm),
             report["splits"], report["seconds"])  # fmt: skip
    return report


@dataclass
class _Cacher:
    """Caches ``df``'s ``id, src`` rows like every other image of the stage; files (the file
    sources, the test set and non-landmark folder) are checked against their recorded size and
    mtime, so a replaced file under the same id is re-encoded. Keeps every call's statistics."""

    cfg: PrepConfig
    out: Path
    progress: bool
    stats: list[dict] = field(default_factory=list)

    def __call__(self, df: pd.DataFrame, open_row=None) -> tuple[dict[str, str], dict[str, str], dict]:
        track = open_row is None or self.cfg.source in FILE_SOURCES
        open_row = open_row or functools.partial(draft_open, size=self.cfg.image_size)
        done, failed, st = _cache(df, open_row, self.cfg, self.out, self.cfg.cache_format(), self.progress, track)
        self.stats.append(st)
        return done, failed, st

    def section(self, cache_meta: dict) -> dict:
        """The report's ``cache`` section: settings, files encoded / reused / re-encoded (and why)."""
        reencoded: dict[str, int] = {}
        for st in self.stats:
            for why, n in st.get("reencoded", {}).items():
                reencoded[why] = reencoded.get(why, 0) + n
        return {
            **cache_meta,
            "folder": "images",
            "encoded": sum(st["encoded"] for st in self.stats),
            "reused": sum(st["reused"] for st in self.stats),
            "reencoded": dict(sorted(reencoded.items())),
        }


def _images_and_splits(
    cfg: PrepConfig, out: Path, rows: pd.DataFrame, open_row, cache: _Cacher, report: dict
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]:
    """Cache the selected images, split the readable ones; (rows, label map, split manifests)."""
    done, failed, stats = cache(rows, open_row)
    _write_list(out / SKIPPED_IMAGES, _failures(rows, failed, stats))
    if failed:
        log.warning("%d images could not be read and were skipped (listed in %s)", len(failed), out / SKIPPED_IMAGES)
    report["skipped_images"] = reason_counts(failed)
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
    rows["label"] = rows["landmark_id"].map(pd.Series(lm["label"].to_numpy(), index=lm["landmark_id"])).astype("int64")
    return rows, lm, {s: rows.loc[rows["split"] == s, schema.MANIFEST_COLUMNS] for s in schema.SPLITS}


def _write_outputs(
    cfg: PrepConfig, out: Path, extra: ExtraSets, lm: pd.DataFrame, manifests: dict, report: dict, progress: bool
) -> None:
    """Label map, manifests, the prep's config and (``packed``) the packed cache."""
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


def _summary(source_ids: pd.Series, rows: pd.DataFrame, lm: pd.DataFrame, manifests: dict) -> dict:
    """Kept rows and classes, split sizes, images per class and the class-size bins."""
    counts = lm["count"]
    return {
        "rows_kept": len(rows),
        "classes_kept": len(lm),
        "splits": {s: len(manifests[s]) for s in schema.SPLITS},
        "images_per_class": {
            "min": int(counts.min()),
            "median": float(counts.median()),
            "max": int(counts.max()),
            "mean": round(float(counts.mean()), 2),
        },
        "class_sizes": class_sizes(source_ids, rows["landmark_id"], manifests["train"]["landmark_id"]),
    }


def _recheck_cache(cfg: PrepConfig, out: Path, table: SourceTable, extra: ExtraSets, progress: bool) -> None:
    """An up-to-date prep still checks its cached files (cheap: header and end marker) and
    re-encodes damaged ones, so rerunning prep after a decode error is never a silent no-op."""
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
        "skipped": reason_counts(failed),
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
        "skipped": reason_counts(failed),
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

