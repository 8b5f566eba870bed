"""Training stage: for each model and fold, fit the configured recipe and write the run folder.

``runs/<experiment>/<model>/fold<k>/``: config.yaml (the recipe and what it was trained on),
metrics.csv, curves.png, train.log, last.pt, best.pt, oof.npz (the best epoch's predictions on
the held-out fold), test.npz (and nonlandmark.npz when prep made a non-landmark pool),
per-class analysis, summary.json and DONE (written last).

:func:`fit` reads in three pieces: :func:`~pipeline.train.build.build_run` (data, model and the
recipe's parts from the factories), :func:`~pipeline.train.loop.train_epochs` (the epoch loop,
checkpoints) and :func:`~pipeline.train.finish.finish_run` (predictions of the best epoch,
summary, DONE). A finished fold is skipped on rerun; an
interrupted one resumes exactly from ``last.pt`` (every epoch reseeds all generators from
``(seed, epoch)``). A run folder is tied to its recipe and to the prep and fold file it was
trained on: a change of either is refused with one line instead of silently mixing results.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from accelerate import Accelerator

from common import schema
from common.errors import ConfigError, PipelineError
from common.io import cleanup_temp_files
from pipeline.config import TrainConfig
from pipeline.models import check_input_size, model_info
from pipeline.runs.identity import check_run_folder, ensure_fold_file, prep_identity, run_lock, run_log
from pipeline.runs.scan import clear_done, is_done
from pipeline.runtime import new_accelerator
from pipeline.train.build import build_run, resume_state, write_run_config
from pipeline.train.finish import finish_run
from pipeline.train.loop import train_epochs
from pipeline.train.progress import Progress

log = logging.getLogger(__name__)

def make_accelerator(cfg: TrainConfig) -> Accelerator:
    kw = {}
    if cfg.log_with != "none":
        kw = {"log_with": cfg.log_with, "project_dir": str(Path(cfg.runs_root) / cfg.experiment)}
    return new_accelerator(cfg.mixed_precision, cfg.cpu, **kw)


def fit(
    cfg: TrainConfig,
    model_name: str,
    fold: int,
    accelerator: Accelerator | None = None,
    progress: Progress | None = None,
) -> dict:
    """Train one model on one fold; returns the run summary (also in summary.json).

    A finished fold is skipped; with more ``epochs`` than it was trained for, it continues from
    ``last.pt``. A fold trained with another recipe or on other data is an error.
    """
    _collect_last_fold()
    accelerator = accelerator or make_accelerator(cfg)
    progress = progress or Progress({model_name: cfg.epochs})
    out = schema.run_dir(cfg.runs_root, cfg.experiment, model_name, fold)
    data_dir = cfg.data_dir
    schema.read_label_map(data_dir)  # a missing prep is one line before anything is created
    if fold >= 0:
        ensure_fold_file(cfg)
    with run_lock(out, accelerator):
        if accelerator.is_main_process:
            cleanup_temp_files(out)  # half checkpoints of a killed write
        ident = prep_identity(cfg, fold)
        saved = check_run_folder(out, cfg, ident) if cfg.resume else None
        if cfg.resume and is_done(out):
            if saved and saved.get("epochs", cfg.epochs) >= cfg.epochs:
                log.info("%s: already finished, skipped (delete the folder to retrain)", out)
                progress.skip(cfg.epochs, model_name)
                return pd.read_json(out / schema.RUN_SUMMARY, typ="series").to_dict()
            if not (out / schema.RUN_LAST).is_file():
                raise PipelineError(f"{out}: finished without last.pt (keep_last=false): {cfg.epochs} epochs need a "
                                    "retrain from scratch (delete the folder)")  # fmt: skip
            log.info("%s: finished after %s epochs, continuing to %d", out, saved and saved.get("epochs"), cfg.epochs)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                clear_done(out)
        with run_log(out, accelerator):
            run = build_run(cfg, model_name, fold, out, accelerator, ident)
            state = resume_state(run, accelerator)
            progress.skip(state.epoch, model_name)
            write_run_config(run, accelerator)
            log.info(
                "%s: %s, %s params, input path %s, %s on %s",
                run.tag,
                cfg.optimizer,
                f"{run.info['params']:,}",
                run.train_input.path,
                accelerator.mixed_precision,
                accelerator.device,
            )
            state = train_epochs(run, state, accelerator, progress)
            summary = finish_run(run, state, accelerator)
    _release(accelerator)
    return summary


_collect_pending = False  # a finished fold's memory is still to be collected


def _release(accelerator: Accelerator) -> None:
    """Drop accelerate's references to this fold's model, optimizer and loaders, and leave the
    collection (``gc.collect`` and the device cache) to the next fold's start: after the last fold
    the process exits instead of spending a full collection (0.3-1.8 s) on memory it frees anyway."""
    global _collect_pending
    if getattr(accelerator, "deepspeed_engine_wrapped", None) is not None:
        accelerator.free_memory()  # an engine to destroy: accelerate's own clean-up
        return
    accelerator._schedulers, accelerator._optimizers, accelerator._models, accelerator._dataloaders = [], [], [], []
    accelerator.step = 0
    _collect_pending = True


def _collect_last_fold() -> None:
    """What ``accelerator.free_memory()`` did at the end of a fold, before the next one allocates."""
    global _collect_pending
    if _collect_pending:
        from accelerate.utils import release_memory

        release_memory()  # gc.collect() and the device's cache
        _collect_pending = False


def check_models(cfg: TrainConfig) -> None:
    """Fail fast on a bad name or setting, before hours of training."""
    for name in cfg.models:
        model_info(name)
        m_cfg = cfg.for_model(name)
        check_input_size(name, m_cfg.img_size, m_cfg.small_input)
        if m_cfg.mixup + m_cfg.cutmix > 0 and m_cfg.head != "linear":
            raise ConfigError(f"train: {name}: mixup/cutmix need hard targets, head={m_cfg.head} cannot use them")
    unknown = sorted(set(cfg.model_overrides) - set(cfg.models))
    if unknown:
        log.warning("model_overrides for model(s) not in 'models' are unused: %s", unknown)
    if cfg.log_with != "none":
        import importlib.util

        module = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}[cfg.log_with]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"train: log_with={cfg.log_with} needs the '{module}' package (pip install {module})")


def run_train(cfg: TrainConfig) -> list[dict]:
    """Every (model, fold) of the config, one after the other, on one Accelerator."""
    check_models(cfg)
    accelerator = make_accelerator(cfg)
    if cfg.log_with != "none":
        flat = {k: (str(v) if isinstance(v, (list, dict)) else v) for k, v in asdict(cfg).items()}
        accelerator.init_trackers(cfg.experiment, config={k: v for k, v in flat.items() if v is not None})
    progress = Progress({n: cfg.for_model(n).epochs * len(cfg.folds) for n in cfg.models})
    results = []
    try:
        for name in cfg.models:
            for fold in cfg.folds:
                results.append(fit(cfg.for_model(name), name, fold, accelerator, progress))
    finally:
        # trackers flushed; under several processes the process group is shut down (a gloo
        # group left to the interpreter's exit sometimes aborts the process)
        accelerator.end_training()
    return results


def main(cfg: TrainConfig) -> int:
    """CLI face: train, then one line per finished (model, fold)."""
    for s in run_train(cfg):
        print(
            f"{s['model']} fold {s['fold']}: top1 {s.get('val_top1', float('nan')):.4f} "
            f"top5 {s.get('val_top5', float('nan')):.4f} gap {s.get('val_gap', float('nan')):.4f}"
        )
    return 0
