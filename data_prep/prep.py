"""The prep stage: raw source -> selection -> splits -> resized cache -> manifests + report.

Output in ``<data_root>/<dataset>/`` (see :mod:`common.schema`). A rerun with the same config
and the same source is a no-op (fingerprint in the report); a killed run resumes: cached images
are kept and the manifests, written last and atomically, are never half-written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from common import schema
from common.errors import DataError
from common.io import cleanup_temp_files, write_csv, write_json, write_yaml
from data_prep import select
from data_prep.config import PrepConfig
from data_prep.images import build_cache, draft_open, prepare_cache_dir
from data_prep.sources import SourceTable

log = logging.getLogger(__name__)

FILE_SOURCES = ("synthetic", "gld_v2", "gld_v1", "imagefolder")
SKIPPED_READING = "skipped_reading.csv"  # rows dropped by the reader (missing image, duplicate id, ...)
SKIPPED_IMAGES = "skipped_images.csv"  # selected rows whose image could not be decoded
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
    )


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


def _fingerprint(cfg: PrepConfig, table: SourceTable) -> str:
    d = asdict(cfg)
    d.pop("workers")  # speed only: the outputs do not depend on it
    d["source_description"] = table.description
    h = hashlib.sha1(json.dumps(d, sort_keys=True).encode())
    h.update(pd.util.hash_pandas_object(table.rows[["id", "landmark_id"]], index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def is_up_to_date(out: Path, fingerprint: str) -> bool:
    report = out / schema.PREP_REPORT
    if not report.is_file() or not all(schema.manifest_path(out, s).is_file() for s in schema.SPLITS):
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
    ``rows_after_sampling = rows_kept + sum(skipped_images)``, ``sum(splits) = rows_kept``.
    Dropped rows are listed in ``skipped_reading.csv`` and ``skipped_images.csv``.
    """
    t0 = time.time()
    out = Path(cfg.data_root) / cfg.dataset
    table = read_source(cfg)
    fp = _fingerprint(cfg, table)
    if is_up_to_date(out, fp):
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
    stats: dict = {}
    done, failed = build_cache(
        zip(rows["id"], rows["src"]),
        out,
        _opener(cfg, table),
        cfg.image_size,
        cfg.resize_mode,
        cfg.jpeg_quality,
        cfg.workers,
        progress,
        fmt=fmt,
        stats=stats,
    )
    src_of = dict(zip(rows["id"], rows["src"]))
    fail_df = pd.DataFrame(
        [(i, src_of[i], r, stats["details"].get(i, "")) for i, r in sorted(failed.items())],
        columns=["id", "src", "reason", "detail"],
    )
    _write_list(out / SKIPPED_IMAGES, fail_df)
    if failed:
        log.warning("%d images could not be read and were skipped (listed in %s)", len(failed), out / SKIPPED_IMAGES)
    report["skipped_images"] = dict(sorted(pd.Series(failed, dtype=object).value_counts().items()))
    report["cache"] = {**cache_meta, "folder": "images", "encoded": stats["encoded"], "reused": stats["reused"]}
    rows = rows[rows["id"].isin(done)].copy()
    if rows.empty:
        raise DataError(f"prep: no readable images left for {cfg.dataset} (see {out / SKIPPED_IMAGES})")
    rows["image"] = rows["id"].map(done)
    rows["split"] = select.stratified_split(rows, cfg.val_frac, cfg.test_frac, cfg.seed)
    lm = select.label_map(rows)
    rows["label"] = rows["landmark_id"].map(dict(zip(lm["landmark_id"], lm["label"]))).astype(int)

    write_csv(out / schema.LABEL_MAP, lm[schema.LABEL_MAP_COLUMNS])
    for split in schema.SPLITS:
        write_csv(schema.manifest_path(out, split), rows.loc[rows["split"] == split, schema.MANIFEST_COLUMNS])
    write_yaml(out / schema.PREP_CONFIG, asdict(cfg))
    if cfg.packed:
        from data_prep.packed import build_packed

        ordered = pd.concat([rows[rows["split"] == s] for s in schema.SPLITS])  # manifest order
        report["packed"] = build_packed(out, ordered["id"], ordered["image"], cfg.image_size, cfg.workers, progress)
    counts = lm["count"]
    report.update(
        rows_kept=len(rows),
        classes_kept=len(lm),
        splits={s: int((rows["split"] == s).sum()) for s in schema.SPLITS},
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


def _write_list(path: Path, df: pd.DataFrame | None) -> None:
    """Write a skip list (also when empty, so a rerun never shows a stale list)."""
    if df is None:
        df = pd.DataFrame(columns=["id", "src", "reason"])
    write_csv(path, df)


def _check_counts(r: dict) -> None:
    """The report's counts must add up; a mismatch is a bug in this stage, not a data error."""
    ok = (
        r["rows_in"] == r["rows_read"] + sum(r["skipped_reading"].values())
        and r["rows_after_sampling"] == r["rows_kept"] + sum(r["skipped_images"].values())
        and sum(r["splits"].values()) == r["rows_kept"]
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
