"""What ties a training run folder to its data and keeps it to one writer.

The fold file (made when missing, as ``make folds`` would), the prep identity a run records
(prep fingerprint, label map, fold file and cache format), the check of a run folder against the
current config and data (one line saying what changed), the run lock and the run's ``train.log``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from common import schema
from common.errors import PipelineError
from common.lock import folder_lock
from pipeline.config import TrainConfig

log = logging.getLogger(__name__)


def _file_sha(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()[:16]


def ensure_fold_file(cfg: TrainConfig) -> Path:
    """The fold file of the config; made (like ``make folds``) when it does not exist yet."""
    path = schema.fold_file(cfg.folds_dir, cfg.dataset, cfg.k, cfg.fold_seed)
    if not path.is_file() and any(f >= 0 for f in cfg.folds):
        from data_prep.config import FoldsConfig
        from data_prep.folds import run_folds

        names = {f.name for f in dataclasses.fields(FoldsConfig)}
        seed_key = "fold_seed" if "fold_seed" in names else "seed"
        log.info("%s does not exist: making it (as 'make folds' would)", path)
        run_folds(
            FoldsConfig(
                **{
                    "dataset": cfg.dataset,
                    "data_root": cfg.data_root,
                    "folds_dir": cfg.folds_dir,
                    "k": cfg.k,
                    seed_key: cfg.fold_seed,
                }
            )
        )
    return path


def prep_identity(cfg: TrainConfig, fold: int) -> dict:
    """What a run is trained on: the prep (fingerprint, label map, image size) and the fold file."""
    data_dir = cfg.data_dir
    label_map = schema.read_label_map(data_dir)
    prep_cfg: dict = {}
    cache: dict = {}
    with contextlib.suppress(OSError, yaml.YAMLError):
        prep_cfg = yaml.safe_load((data_dir / schema.PREP_CONFIG).read_text()) or {}
    with contextlib.suppress(OSError, ValueError, AttributeError):
        cache = json.loads((data_dir / schema.PREP_REPORT).read_text()).get("cache") or {}
    ident = {
        "fingerprint": schema.prep_fingerprint(data_dir),
        "label_map_sha": schema.label_map_sha(label_map),
        "num_classes": len(label_map),
        "image_size": prep_cfg.get("image_size"),
        "resize_mode": prep_cfg.get("resize_mode"),
        # how the cached pixels were made: predicting raw photos must decode them the same way
        "cache_format": cache.get("format"),
        "jpeg_quality": cache.get("quality"),
    }
    if fold >= 0:
        ident["folds_sha"] = _file_sha(schema.fold_file(cfg.folds_dir, cfg.dataset, cfg.k, cfg.fold_seed))
    return ident


_WHAT = {"fingerprint": "the prep (data/<dataset> was re-prepped)", "label_map_sha": "the label map",
         "folds_sha": "the fold file", "num_classes": "the number of classes"}  # fmt: skip


def check_run_folder(out: Path, cfg: TrainConfig, ident: dict) -> dict | None:
    """The config a run folder was made with; one :class:`PipelineError` line if it cannot continue.

    Continuing (resume, skip, more epochs) is only right with the same recipe and the same data:
    a changed recipe key, another prep, label map or fold file would silently mix results.
    """
    path = out / schema.RUN_CONFIG
    if not path.is_file():
        return None
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise PipelineError(f"{path}: unreadable run config; delete {out} to retrain that fold") from None
    defaults = asdict(TrainConfig())
    new = asdict(cfg)
    diff = [
        f"{k}: {saved.get(k, defaults[k])!r} -> {new[k]!r}"
        for k in TrainConfig.recipe_keys()
        if saved.get(k, defaults[k]) != new[k]
    ]
    if diff:
        raise PipelineError(
            f"{out} was trained with another recipe ({'; '.join(diff[:4])}{' ...' if len(diff) > 4 else ''}); "
            "use another experiment=NAME or delete that folder"
        )
    old = saved.get("prep") or {}
    changed = [k for k in _WHAT if k in old and k in ident and old[k] != ident[k]]
    if changed:
        what = "; ".join(f"{_WHAT[k]}: {old[k]} -> {ident[k]}" for k in changed)
        raise PipelineError(
            f"{out} was trained on other data ({what}); retrain it into another experiment=NAME "
            "(or delete that folder) instead of mixing data sets"
        )
    for key, now in (("threads", torch.get_num_threads()), ("num_workers", cfg.num_workers)):
        if key in saved and saved[key] != now:
            log.warning(
                "%s: resumed with %s=%s (trained with %s): the result will differ from an uninterrupted run",
                out,
                key,
                now,
                saved[key],
            )
    return saved


@contextlib.contextmanager
def run_lock(out: Path, accelerator: Accelerator) -> Iterator[None]:
    """One process group per run folder; a second one gets one line naming the holder."""
    error, lock = None, None
    if accelerator.is_main_process:
        try:
            lock = folder_lock(out, "training")
            lock.__enter__()
        except PermissionError as e:
            error = f"cannot write the run folder {out}: {e.strerror}"
        except PipelineError as e:
            error = str(e)
    if accelerator.num_processes > 1:
        error = broadcast_object_list([error])[0]  # every rank stops, none waits in a collective
    if error:
        raise PipelineError(error)
    try:
        yield
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


@contextlib.contextmanager
def run_log(out: Path, accelerator: Accelerator) -> Iterator[None]:
    """Copy this process's log lines to ``<run>/train.log`` (main process; appended on resume)."""
    if not accelerator.is_main_process:
        yield
        return
    handler = logging.FileHandler(out / schema.RUN_LOG, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    root, ours = logging.getLogger(), logging.getLogger("pipeline")
    level = ours.level
    if ours.getEffectiveLevel() > logging.INFO:  # the run's log keeps the epoch lines whatever the console shows
        ours.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        ours.setLevel(level)
        handler.close()
