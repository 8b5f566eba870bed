"""What a prep depends on: the source read, the selection, the content fingerprint.

Shared by the prep stage and ``verify`` (which re-reads the source to re-encode damaged cached
images); kept apart from :mod:`data_prep.prep` so neither imports the other. The fingerprint
keys on content (ids, labels, file sizes, the config's values), never on paths.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from common import schema
from common.errors import DataError
from data_prep import select
from data_prep.competition import ExtraSets, files_signature
from data_prep.config import PrepConfig
from data_prep.images import FILE_SOURCE, draft_open
from data_prep.sources import SourceTable

log = logging.getLogger(__name__)

FILE_SOURCES = ("synthetic", "gld_v2", "gld_v1", "imagefolder")


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
# the competition test set's keys: its own identity (``test_set``), never the training fingerprint's
TEST_KEYS = ("test_format",)
# keys added after preps were made: left out of the fingerprint at their default, so an existing
# prep (and the runs that recorded its fingerprint) stays up to date
LATER_KEYS = {"min_images": 0}


def select_rows(cfg: PrepConfig, rows: pd.DataFrame) -> tuple[int, pd.DataFrame]:
    """(rows after top-K, rows after sampling) of the source's rows: seed 001's selection."""
    rows = select.top_k_classes(rows, cfg.top_k, cfg.min_images)
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
        "config": {
            k: v
            for k, v in asdict(cfg).items()
            if k not in WHERE_KEYS + TEST_KEYS and not (k in LATER_KEYS and v == LATER_KEYS[k])
        },
        "source": table.identity or table.description,
        "rows": hashlib.sha1(rows).hexdigest()[:16],
        "images": images,
        "extra_sets": extra.signature(),
        "test_set": extra.test_signature(),
    }


def fingerprint(inputs: dict) -> str:
    """The training identity of a prep (``prep_report.json``; runs and prediction files record it):
    source, selection, splits, label map, cache format, the non-landmark pool. The competition
    test set is left out (:func:`test_fingerprint`), so adding or replacing it after training
    leaves every run valid."""
    train = {k: v for k, v in inputs.items() if k != "test_set"}
    return hashlib.sha1(json.dumps(train, sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_fingerprint(inputs: dict) -> str | None:
    """The competition test set's identity (None without one): its predictions record it."""
    return inputs.get("test_set")


def expected_outputs(out: Path, extra: ExtraSets) -> list[Path]:
    paths = [schema.manifest_path(out, s) for s in schema.SPLITS]
    if extra.competition is not None:
        paths += [schema.manifest_path(out, schema.COMPETITION), out / schema.COMPETITION_ORDER]
    if extra.nonlandmark is not None:
        paths.append(schema.manifest_path(out, schema.NONLANDMARK))
    return paths


def read_report(out: Path) -> dict | None:
    try:
        report = json.loads((out / schema.PREP_REPORT).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return report if isinstance(report, dict) else None


def is_up_to_date(out: Path, fingerprint: str, extra: ExtraSets | None = None, test_fp: str | None = None) -> bool:
    report = read_report(out)
    if report is None or not all(p.is_file() for p in expected_outputs(out, extra or ExtraSets())):
        return False
    return report.get("fingerprint") == fingerprint and report.get("test_fingerprint") == test_fp


def rerun_reason(out: Path, inputs: dict, extra: ExtraSets | None = None) -> str:
    """Why the prep in ``out`` is not up to date for ``inputs`` (for the log: a rebuild at GLD
    scale costs hours, so the user must see what triggered it)."""
    report = read_report(out)
    if report is None:
        return f"no finished prep in {out}" if not (out / schema.PREP_REPORT).exists() else "unreadable prep report"
    missing = [p.name for p in expected_outputs(out, extra or ExtraSets()) if not p.is_file()]
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
        reasons.append("the non-landmark folder changed (ids, files' sizes)")
    if old.get("test_set") != inputs.get("test_set"):
        reasons.append("the competition test set changed (ids, files' sizes, solution): runs stay valid, "
                       "predict it again")  # fmt: skip
    return "; ".join(reasons) or "the fingerprint changed"


def opener(cfg: PrepConfig, table: SourceTable):
    """File sources open through JPEG draft mode; in-memory sources (CIFAR) through the table."""
    if cfg.source in FILE_SOURCES:
        return functools.partial(draft_open, size=cfg.image_size)
    return table.open_image


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
    open_row, track = opener(cfg, table), cfg.source in FILE_SOURCES
    skipped = getattr(table, "skipped_rows", None)  # e.g. a source image gone since: says so when re-encoded
    out = {} if skipped is None else {i: (src, open_row, track) for i, src in zip(skipped["id"], skipped["src"])}
    out.update({i: (src, open_row, track) for i, src in zip(table.rows["id"], table.rows["src"])})
    for df in (extra.competition, extra.nonlandmark):
        if df is not None:
            out.update({i: (src, file_opener, True) for i, src in zip(df["id"], df["src"])})
    return out

