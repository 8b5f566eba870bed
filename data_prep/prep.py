"""The prep stage: raw source -> selection -> splits -> resized cache -> manifests + report.

Output in ``<data_root>/<dataset>/`` (see :mod:`common.schema`). A rerun with the same config
and the same source is a no-op (fingerprint in the report); a killed run resumes: cached images
are kept and the manifests, written last and atomically, are never half-written.

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

import functools
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from common import schema
from common.errors import DataError
from common.io import cleanup_temp_files, write_csv, write_json, write_yaml
from data_prep import select
from data_prep.competition import (
    ExtraSets,
    check_unique_ids,
    label_counts,
    label_rows,
    read_extra_sets,
    split_nonlandmark,
)
from data_prep.config import PrepConfig
from data_prep.images import FORMATS, build_cache, cache_relpath, draft_open, prepare_cache_dir
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
            synthetic.generate(root, spec, workers=cfg.workers)
        from data_prep.readers import read_gld_v2

        table = read_gld_v2(root)
        # the version makes the fingerprint and the image cache follow generator changes
        table.description = f"synthetic landmarks v{synthetic.GENERATOR_VERSION} at {root}"
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


def _fingerprint(cfg: PrepConfig, table: SourceTable, extra: ExtraSets) -> str:
    d = asdict(cfg)
    d.pop("workers")  # speed only: the outputs do not depend on it
    d["source_description"] = table.description
    d["extra_sets"] = extra.signature()  # test set and non-landmark ids, file sizes/mtimes, solution
    h = hashlib.sha1(json.dumps(d, sort_keys=True).encode())
    h.update(pd.util.hash_pandas_object(table.rows[["id", "landmark_id"]], index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def _expected_outputs(out: Path, extra: ExtraSets) -> list[Path]:
    paths = [schema.manifest_path(out, s) for s in schema.SPLITS]
    if extra.competition is not None:
        paths += [schema.manifest_path(out, schema.COMPETITION), out / schema.COMPETITION_ORDER]
    if extra.nonlandmark is not None:
        paths.append(schema.manifest_path(out, schema.NONLANDMARK))
    return paths


def is_up_to_date(out: Path, fingerprint: str, extra: ExtraSets | None = None) -> bool:
    report = out / schema.PREP_REPORT
    if not report.is_file() or not all(p.is_file() for p in _expected_outputs(out, extra or ExtraSets())):
        return False
    try:
        return json.loads(report.read_text()).get("fingerprint") == fingerprint
    except (OSError, json.JSONDecodeError):
        return False


def _opener(cfg: PrepConfig, table: SourceTable):
    """File sources open through JPEG draft mode; in-memory sources (CIFAR) through the table."""
    if cfg.source in FILE_SOURCES:
        return functools.partial(draft_open, size=cfg.image_size)
    return table.open_image


def run_prep(cfg: PrepConfig, progress: bool = True) -> dict:
    """Run the stage; returns the prep report (also written to ``prep_report.json``).

    The counts reconcile exactly: ``rows_in = rows_read + sum(skipped_reading)``,
    ``rows_after_sampling = rows_kept + sum(skipped_images)``,
    ``sum(splits) = rows_kept + nonlandmark.test``; for the competition set
    ``ids = readable + sum(skipped)`` and for the non-landmark folder
    ``images = readable + sum(skipped) = test + pool + sum(skipped)``.
    Dropped rows are listed in ``skipped_reading.csv``, ``skipped_images.csv``,
    ``skipped_competition.csv`` and ``skipped_nonlandmark.csv``.
    """
    t0 = time.time()
    out = Path(cfg.data_root) / cfg.dataset
    table = read_source(cfg)
    test_root, nonlandmark_root = extra_roots(cfg)
    extra = read_extra_sets(test_root, cfg.test_format, cfg.solution_csv, nonlandmark_root)
    check_unique_ids(extra, table.rows, table.description)
    fp = _fingerprint(cfg, table, extra)
    if is_up_to_date(out, fp, extra):
        log.info("%s is up to date (fingerprint %s): nothing to do", out, fp)
        return json.loads((out / schema.PREP_REPORT).read_text())
    if out.is_dir():
        cleanup_temp_files(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = table.rows
    report: dict = {
        "source": table.description,
        "rows_in": len(rows) + sum(table.skipped.values()),
        "skipped_reading": dict(sorted(table.skipped.items())),
        "rows_read": len(rows),
        "classes_in": int(rows["landmark_id"].nunique()),
    }
    _write_list(out / SKIPPED_READING, getattr(table, "skipped_rows", None))
    if rows.empty:
        raise DataError(f"prep: {table.description} has no usable rows (see {out / SKIPPED_READING})")
    rows = select.top_k_classes(rows, cfg.top_k)
    report["rows_after_top_k"] = len(rows)
    rows = select.subsample(rows, cfg.sample_ratio, cfg.seed, cfg.min_per_class, cfg.max_per_class)
    report["rows_after_sampling"] = len(rows)

    fmt = cfg.cache_format()
    cache_meta = {
        "source": table.description,
        "size": cfg.image_size,
        "mode": cfg.resize_mode,
        "format": fmt,
        "quality": cfg.jpeg_quality if fmt == "jpeg" else None,
    }
    prepare_cache_dir(out, cache_meta)
    cache_stats: list[dict] = []

    def cache(df: pd.DataFrame, opener=None) -> tuple[dict[str, str], dict[str, str], dict]:
        """Cache ``df``'s ``id, src`` rows like every other image of the stage; a user folder
        (opener None: files of the test set or non-landmark folder) is checked for replaced files."""
        if opener is None:
            _drop_stale(df, out, fmt)
        done, failed, st = _cache(df, opener or file_opener, cfg, out, fmt, progress)
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
    lm = select.label_map(rows)
    label_of = dict(zip(lm["landmark_id"], lm["label"]))
    rows["label"] = rows["landmark_id"].map(label_of).astype(int)
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

    write_csv(out / schema.LABEL_MAP, lm[schema.LABEL_MAP_COLUMNS])
    _remove_unconfigured(out, extra)
    for name, df in manifests.items():
        write_csv(schema.manifest_path(out, name), df[schema.MANIFEST_COLUMNS])
    write_yaml(out / schema.PREP_CONFIG, asdict(cfg))
    if cfg.packed:
        from data_prep.packed import build_packed

        ordered = pd.concat(manifests.values(), ignore_index=True)  # manifest order: splits, then the extra sets
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
        fingerprint=fp,
        seconds=round(time.time() - t0, 1),
    )
    _check_counts(report)
    _plot_histogram(lm, out / HISTOGRAM, cfg.dataset)
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


def _cache(
    rows: pd.DataFrame, opener, cfg: PrepConfig, out: Path, fmt: str, progress: bool
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


def _drop_stale(rows: pd.DataFrame, out: Path, fmt: str) -> None:
    """Delete cached files older than their source (a replaced test image under the same id).

    The cache is keyed by id; the competition and non-landmark folders are user folders whose
    files may be swapped between runs, so their cached copies are checked against the source's
    mtime and ctime (ctime also catches a replacement that kept an old mtime, e.g. from a tar).
    """
    ext = FORMATS[fmt]
    for image_id, src in zip(rows["id"], rows["src"]):
        cached = out / cache_relpath(image_id, ext)
        try:
            st = os.stat(src)
            if cached.stat().st_mtime_ns < max(st.st_mtime_ns, st.st_ctime_ns):
                cached.unlink()
        except FileNotFoundError:
            continue


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
    write_csv(out / schema.COMPETITION_ORDER, order)
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
    write_csv(path, df)


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
