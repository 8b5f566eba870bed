"""The prep stage: raw source -> selection -> splits -> resized cache -> manifests + report.

Output in ``<data_root>/<dataset>/`` (see :mod:`common.schema`). A rerun with the same config
and the same source is a no-op (fingerprint in the report); a killed run resumes: cached images
are kept and the manifests, written last and atomically, are never half-written.
"""

from __future__ import annotations

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
from data_prep.images import build_cache, draft_open
from data_prep.sources import SourceTable

log = logging.getLogger(__name__)


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

        return read_gld_v2(root)
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
    d.pop("workers")
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


def run_prep(cfg: PrepConfig, progress: bool = True) -> dict:
    """Run the stage; returns the prep report (also written to ``prep_report.json``)."""
    t0 = time.time()
    out = Path(cfg.data_root) / cfg.dataset
    table = read_source(cfg)
    fp = _fingerprint(cfg, table)
    if is_up_to_date(out, fp):
        log.info("%s is up to date (fingerprint %s): nothing to do", out, fp)
        return json.loads((out / schema.PREP_REPORT).read_text())
    cleanup_temp_files(out) if out.is_dir() else None
    rows = table.rows
    report: dict = {
        "source": table.description,
        "rows_in": len(rows) + sum(table.skipped.values()),
        "skipped_reading": dict(table.skipped),
        "rows_read": len(rows),
        "classes_in": int(rows["landmark_id"].nunique()),
    }
    rows = select.top_k_classes(rows, cfg.top_k)
    report["rows_after_top_k"] = len(rows)
    rows = select.subsample(rows, cfg.sample_ratio, cfg.seed, cfg.min_per_class, cfg.max_per_class)
    report["rows_after_sampling"] = len(rows)

    opener = table.open_image
    if cfg.source in ("synthetic", "gld_v2", "gld_v1", "imagefolder"):

        def opener(src: str, _size: int = cfg.image_size):  # noqa: E306 - JPEG draft decoding for files
            return draft_open(src, _size)

    done, failed = build_cache(
        zip(rows["id"], rows["src"]),
        out,
        opener,
        cfg.image_size,
        cfg.resize_mode,
        cfg.jpeg_quality,
        cfg.workers,
        progress,
    )
    if failed:
        fail_df = pd.DataFrame(
            [(i, rows.set_index("id").at[i, "src"], r) for i, r in sorted(failed.items())],
            columns=["id", "src", "reason"],
        )
        write_csv(out / "skipped_images.csv", fail_df)
        log.warning(
            "%d images could not be read and were skipped (listed in %s)", len(failed), out / "skipped_images.csv"
        )
    report["skipped_images"] = pd.Series(failed, dtype=object).value_counts().to_dict()
    rows = rows[rows["id"].isin(done)].copy()
    if rows.empty:
        raise DataError(f"prep: no readable images left for {cfg.dataset} (see {out / 'skipped_images.csv'})")
    rows["image"] = rows["id"].map(done)
    rows["split"] = select.stratified_split(rows, cfg.val_frac, cfg.test_frac, cfg.seed)
    lm = select.label_map(rows)
    rows["label"] = rows["landmark_id"].map(dict(zip(lm["landmark_id"], lm["label"]))).astype(int)

    write_csv(out / schema.LABEL_MAP, lm[schema.LABEL_MAP_COLUMNS])
    for split in schema.SPLITS:
        write_csv(schema.manifest_path(out, split), rows.loc[rows["split"] == split, schema.MANIFEST_COLUMNS])
    write_yaml(out / schema.PREP_CONFIG, asdict(cfg))
    report.update(
        rows_kept=len(rows),
        classes_kept=len(lm),
        splits={s: int((rows["split"] == s).sum()) for s in schema.SPLITS},
        images_per_class={
            "min": int(lm["count"].min()),
            "median": float(lm["count"].median()),
            "max": int(lm["count"].max()),
        },
        fingerprint=fp,
        seconds=round(time.time() - t0, 1),
    )
    _plot_histogram(lm, out / "class_histogram.png", cfg.dataset)
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
