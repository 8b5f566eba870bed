"""Training stage: for each model and fold, fit the configured recipe and write the run folder.

``runs/<experiment>/<model>/fold<k>/``: config.yaml (the recipe and what it was trained on),
metrics.csv, curves.png, train.log, last.pt, best.pt, oof.npz (the best epoch's predictions on
the held-out fold), test.npz (and nonlandmark.npz when prep made a non-landmark pool),
per-class analysis, summary.json and DONE (written last).

:func:`fit` reads in three pieces: :func:`build_run` (data, model and the recipe's parts from
the factories), :func:`train_epochs` (the epoch loop, checkpoints) and :func:`finish_run`
(predictions of the best epoch, summary, DONE). A finished fold is skipped on rerun; an
interrupted one resumes exactly from ``last.pt`` (every epoch reseeds all generators from
``(seed, epoch)``). A run folder is tied to its recipe and to the prep and fold file it was
trained on: a change of either is refused with one line instead of silently mixing results.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from common import schema
from common.errors import ConfigError, DataError, PipelineError
from common.io import cleanup_temp_files, write_csv, write_json, write_yaml
from pipeline.augment import build_mixer
from pipeline.config import TrainConfig
from pipeline.data import build_eval_loader, build_train_input, fold_rows
from pipeline.engine import (
    Diverged,
    StepParts,
    checkpoint_state,
    evaluate,
    load_checkpoint,
    new_accelerator,
    predict,
    read_checkpoint,
    resolve_channels_last,
    train_one_epoch,
    write_checkpoint,
)
from pipeline.factories import CHECKPOINT_METRICS, build_loss, build_optimizer, build_schedule, is_better
from pipeline.models import check_input_size, create_model, model_info
from pipeline.predfile import save_predictions
from pipeline.progress import Progress
from pipeline.run_identity import check_run_folder, ensure_fold_file, prep_identity, run_lock, run_log

log = logging.getLogger(__name__)

HEAD_KEYS = ("pool", "neck", "embedding_size", "head", "arcface_s", "arcface_m", "subcenters", "dynamic_margin",
             "margin_min")  # fmt: skip


# ------------------------------------------------------------------------------------ the model


def _head_kwargs(cfg: TrainConfig) -> dict:
    """Head options for create_model; nothing when they are all defaults (today's plain models)."""
    defaults = TrainConfig()
    kw = {k: getattr(cfg, k) for k in HEAD_KEYS}
    return {} if all(kw[k] == getattr(defaults, k) for k in HEAD_KEYS) else kw


def build_model(
    cfg: TrainConfig,
    name: str,
    num_classes: int,
    channels_last: bool = False,
    class_counts: list[int] | None = None,
) -> torch.nn.Module:
    """The network of a run: backbone (registry or ``timm:<name>``), head options, freezing."""
    check_input_size(name, cfg.img_size, cfg.small_input)
    head = _head_kwargs(cfg)
    if head.get("dynamic_margin"):
        head["class_counts"] = class_counts
    model = create_model(
        name,
        num_classes=num_classes,
        pretrained=cfg.use_pretrained,
        small_input=cfg.small_input,
        **head,
        **cfg.model_kwargs,
    )
    if cfg.freeze_backbone:
        from pipeline.models.utils import freeze_backbone

        model = freeze_backbone(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def init_weights_from(model: torch.nn.Module, source: str, runs_root: str) -> list[str]:
    """Load ``source`` (a .pt file or a run folder: its best.pt) into ``model`` before training.

    Progressive resizing and fine-tuning start from another run's weights. Tensors whose shape
    differs (the classifier of another class count) are left at their fresh initialisation and
    named in the log; any other missing or extra key is one error line (not the same network).
    Returns the names of the re-initialised tensors.
    """
    path = Path(source)
    if path.is_dir():
        path = path / schema.RUN_BEST
    elif not path.exists() and (Path(runs_root) / source).is_dir():
        path = Path(runs_root) / source / schema.RUN_BEST
    state = read_checkpoint(path)
    weights = state.get("model", state.get("state_dict", state)) if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise PipelineError(f"init_from={source}: {path} holds no state dict")
    own = model.state_dict()
    skipped = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in weights]
    extra = [k for k in weights if k not in own]
    if missing or extra:
        first = (missing or extra)[0]
        raise PipelineError(
            f"init_from={source}: {path} is another network ({len(missing)} missing, {len(extra)} unexpected "
            f"tensors, first: '{first}')"
        )
    model.load_state_dict({k: v for k, v in weights.items() if k not in skipped}, strict=False)
    if skipped:
        log.info("init_from %s: re-initialised %s (shape differs: another class count)", path, ", ".join(skipped))
    else:
        log.info("init_from %s: all %d tensors loaded", path, len(weights))
    return skipped


# ------------------------------------------------------------------------------------ building


@dataclass
class Run:
    """Everything one (model, fold) trains with, built once by :func:`build_run`."""

    cfg: TrainConfig
    model_name: str
    fold: int
    out: Path
    ident: dict
    label_map: pd.DataFrame
    rows: dict[str, pd.DataFrame]  # train, val, test (+ nonlandmark)
    model: torch.nn.Module
    parts: StepParts
    train_input: object  # pipeline.data.TrainInput
    loaders: dict  # val, test (+ nonlandmark): prepared eval loaders
    channels_last: bool
    info: dict = field(default_factory=dict)  # params, macs, input path

    @property
    def tag(self) -> str:
        return f"{self.model_name}/{'holdout' if self.fold < 0 else f'fold{self.fold}'}"


@dataclass
class RunState:
    """What the epoch loop carries from epoch to epoch (and ``last.pt`` stores)."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"epoch": -1, "value": None})


def load_rows(cfg: TrainConfig, fold: int, label_map: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Train/val rows of the fold, test rows (and the non-landmark pool), checked against the label map."""
    data_dir = Path(cfg.data_root) / cfg.dataset
    if fold >= 0:
        path = ensure_fold_file(cfg)
        schema.read_folds(path, cfg.k, schema.read_manifest(data_dir, "train")["id"])
    train, val = fold_rows(data_dir, schema.fold_file(cfg.folds_dir, cfg.dataset, cfg.k, cfg.fold_seed), fold)
    rows = {"train": train, "val": val, "test": schema.read_manifest(data_dir, "test")}
    if schema.manifest_path(data_dir, schema.NONLANDMARK).is_file():
        rows[schema.NONLANDMARK] = schema.read_manifest(data_dir, schema.NONLANDMARK)
    n = len(label_map)
    for split, df in rows.items():
        labels = df["label"].to_numpy()
        allowed = (labels >= 0) & (labels < n)
        if split in ("test", schema.NONLANDMARK):  # may hold rows without a known class
            allowed |= np.isin(labels, (schema.NON_LANDMARK, schema.OTHER_LANDMARK, schema.UNLABELLED))
        if not allowed.all():
            i = int((~allowed).nonzero()[0][0])
            raise DataError(
                f"{schema.manifest_path(data_dir, 'train' if split == 'val' and fold >= 0 else split)}: id "
                f"'{df['id'].iloc[i]}' has label {labels[i]}, outside 0..{n - 1} of {data_dir / schema.LABEL_MAP} "
                "(manifests and label map are from different preps: rerun 'make prep')"
            )
    return rows


def check_cached_images(data_dir: Path, manifests: list[str], cache: str) -> None:
    """Every cached image a fold reads exists and looks intact, checked before the first epoch
    (a bad test image would otherwise surface after the last one). Shallow: ~40 us per image."""
    from data_prep.verify import check_cache

    problems = check_cache(data_dir, list(dict.fromkeys(manifests)), cache)
    if problems:
        manifest, image_id, what = problems[0]
        raise DataError(
            f"{data_dir}: {len(problems)} cached image(s) damaged or missing (first: {manifest} id '{image_id}': "
            f"{what}); run 'make verify' (python -m data_prep verify --config ...) to re-encode them from the source"
        )


def _profile(model: torch.nn.Module, img_size: int) -> dict:
    from pipeline.models.profile import count_macs, count_params

    info = {"params": count_params(model), "trainable_params": count_params(model, trainable_only=True)}
    try:
        info["macs"] = count_macs(model, img_size)
    except Exception as e:  # noqa: BLE001 - a size report must never stop training
        log.debug("MACs not counted: %s", e)
    return info


def build_run(cfg: TrainConfig, model_name: str, fold: int, out: Path, accelerator: Accelerator, ident: dict) -> Run:
    """Data, model and the recipe's parts (optimizer, schedule, loss, mixup, EMA), prepared by Accelerate."""
    data_dir = Path(cfg.data_root) / cfg.dataset
    label_map = schema.read_label_map(data_dir)
    rows = load_rows(cfg, fold, label_map)
    pool = [schema.NONLANDMARK] if schema.NONLANDMARK in rows else []
    check_cached_images(data_dir, ["train", "val", "test", *pool], cfg.cache)
    channels_last = resolve_channels_last(cfg.channels_last, cfg.cpu)
    counts = rows["train"]["label"].value_counts().reindex(range(len(label_map)), fill_value=0).tolist()

    set_seed(cfg.seed)  # weights are a function of the seed alone
    model = build_model(cfg, model_name, len(label_map), channels_last, class_counts=counts)
    if cfg.init_from:
        init_weights_from(model, cfg.init_from, cfg.runs_root)
    info = _profile(model, cfg.img_size)
    if cfg.sync_bn and accelerator.num_processes > 1:
        if accelerator.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            log.info("%s: BatchNorm layers synchronised across %d processes", model_name, accelerator.num_processes)
        else:  # torch's SyncBatchNorm refuses CPU modules
            log.warning("sync_bn=true has no effect on %s (SyncBatchNorm needs GPUs)", accelerator.device)
    optimizer = build_optimizer(model, cfg)
    train_input = build_train_input(data_dir, rows["train"], cfg)
    eval_names = [s for s in ("val", "test", schema.NONLANDMARK) if s in rows]
    eval_loaders = [build_eval_loader(data_dir, rows[s], cfg, ram_cache=s == "val") for s in eval_names]
    model, optimizer, train_loader, *prepared = accelerator.prepare(model, optimizer, train_input.loader, *eval_loaders)
    train_input.loader = train_loader
    batches = len(train_loader) if cfg.limit_train_batches is None else min(len(train_loader), cfg.limit_train_batches)
    accelerator.gradient_accumulation_steps = cfg.accumulate
    schedule = build_schedule(optimizer, cfg, math.ceil(batches / cfg.accumulate))
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(accelerator.unwrap_model(model), decay=cfg.ema_decay)
    parts = StepParts(
        optimizer=optimizer,
        loss_fn=build_loss(cfg),
        schedule=schedule,
        mixer=build_mixer(cfg, len(label_map)),
        device_transform=train_input.device_transform,
        ema=ema,
        clip_grad=cfg.clip_grad,
        needs_target=bool(getattr(accelerator.unwrap_model(model), "needs_target", False)),
    )
    info["input_path"] = train_input.path
    return Run(
        cfg, model_name, fold, out, ident, label_map, rows, model, parts, train_input,
        dict(zip(eval_names, prepared)), channels_last, info,
    )  # fmt: skip


def _eval_model(run: Run, accelerator: Accelerator) -> torch.nn.Module:
    """The weights that are evaluated and saved as best: the EMA when it is on."""
    return run.parts.ema.module if run.parts.ema is not None else run.model


def _weights(run: Run, accelerator: Accelerator) -> dict:
    return accelerator.unwrap_model(_eval_model(run, accelerator)).state_dict()


def resume_state(run: Run, accelerator: Accelerator) -> RunState:
    """The state after the last finished epoch (``last.pt``), or a fresh one."""
    path = run.out / schema.RUN_LAST
    if not (run.cfg.resume and path.is_file()):
        return RunState()
    state = load_checkpoint(path, accelerator, run.model, run.parts.optimizer, run.parts.schedule)
    if run.parts.ema is not None:
        if "ema" not in state:
            raise PipelineError(f"{path} has no EMA weights: it was written without ema=true")
        run.parts.ema.module.load_state_dict(state["ema"])
    best = state["best"]
    if "value" not in best:  # checkpoints written before checkpoint_metric existed
        best = {"epoch": best["epoch"], "value": best.get("val_top1")}
    log.info("%s: resuming after epoch %d", run.out, state["epoch"])
    return RunState(state["epoch"], state["history"], best)


def write_run_config(run: Run, accelerator: Accelerator) -> None:
    if accelerator.is_main_process:
        write_yaml(
            run.out / schema.RUN_CONFIG,
            {
                **asdict(run.cfg),
                "model": run.model_name,
                "fold": run.fold,
                "num_classes": len(run.label_map),
                "resolved_mixed_precision": accelerator.mixed_precision,
                "resolved_channels_last": run.channels_last,
                "device": str(accelerator.device),
                "processes": accelerator.num_processes,
                "threads": torch.get_num_threads(),
                "resolved_input_path": run.train_input.path,
                "prep": run.ident,
            },
        )


# ---------------------------------------------------------------------------------- the loop


def resolve_prefetch(requested: str, device: torch.device) -> bool:
    """``auto``: prefetch on a GPU (the copy and the CPU-side batch work overlap the GPU's step); not
    on a CPU, where the thread's work takes cores the model's threads use (measured 0.89-0.91x vs
    0.96-1.00x of a plain loop for ``simple_cnn`` on 2 cores, bench/bench_loop.py)."""
    return requested == "true" or (requested == "auto" and device.type == "cuda")


def training_feed(loader, cfg: TrainConfig, accelerator: Accelerator):
    """The loader, or (when ``prefetch`` resolves on: a GPU) a thread preparing its next batch while the model runs."""
    from pipeline.prefetch import Prefetcher

    return Prefetcher(loader, accelerator.device) if resolve_prefetch(cfg.prefetch, accelerator.device) else loader


def train_epochs(run: Run, state: RunState, accelerator: Accelerator, progress: Progress | None = None) -> RunState:
    """Epochs ``state.epoch + 1 .. cfg.epochs``: train, validate, step the schedule, checkpoint."""
    cfg = run.cfg
    metric_key = CHECKPOINT_METRICS[cfg.checkpoint_metric][0]
    show_bars = cfg.progress and sys.stderr.isatty()
    with BackgroundWriter() as writer:
        for epoch in range(state.epoch, cfg.epochs):
            _one_epoch(run, state, epoch, accelerator, writer, metric_key, show_bars, progress)
    return state


def _write_epoch_files(out: Path, files: list, hist: pd.DataFrame, title: str, best_epoch: int) -> None:
    from pipeline.plots import plot_curves

    for path, state in files:
        write_checkpoint(path, state)
    write_csv(out / schema.RUN_METRICS, hist)
    plot_curves(hist, out / schema.RUN_CURVES, title, best_epoch=best_epoch)


class BackgroundWriter:
    """One background thread writing the epoch files in order; errors come back on ``flush``.

    Leaving the block waits for every pending write (a failure, e.g. a full disk, is raised
    there), so nothing is still being written when the run goes on to its predictions, and an
    exception of the loop never leaves a thread writing behind it.
    """

    def __enter__(self) -> BackgroundWriter:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="epoch-files")
        self.pending: list = []
        return self

    def submit(self, fn, *args) -> None:
        self.pending.append(self.pool.submit(fn, *args))

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for f in pending:
            f.result()  # re-raises a write error here, in the training thread

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.flush()
        finally:
            self.pool.shutdown(wait=True)


def _one_epoch(run: Run, state: RunState, epoch: int, accelerator: Accelerator, writer: BackgroundWriter,
               metric_key: str, show_bars: bool, progress: Progress | None) -> None:  # fmt: skip
    """Train, validate, step the schedule, hand this epoch's files to the writer, log."""
    cfg = run.cfg
    out = run.out
    t0 = time.time()
    set_seed(cfg.seed + 1000 * (epoch + 1))  # augmentation and dropout: a function of (seed, epoch)
    run.train_input.set_epoch(epoch)  # shuffle order and the input path's own generators: same
    if run.parts.mixer is not None:
        run.parts.mixer.set_epoch(epoch)
    row = {"epoch": epoch + 1, "lr": run.parts.schedule.lr}
    try:
        row.update(
            train_one_epoch(
                run.model,
                training_feed(run.train_input.loader, cfg, accelerator),
                run.parts,
                accelerator,
                run.channels_last,
                cfg.limit_train_batches,
                show_bars,
                desc=f"{run.tag} {epoch + 1}/{cfg.epochs}",
            )
        )
        val = training_feed(run.loaders["val"], cfg, accelerator)
        metrics, _ = evaluate(_eval_model(run, accelerator), val, accelerator, run.channels_last)
    except Diverged as e:
        raise PipelineError(
            f"{run.tag}: training diverged in epoch {epoch + 1} ({e}) at lr {row['lr']:.3g}; "
            "the fold is not marked DONE (lower lr, add warm-up or gradient clipping)"
        ) from None
    row.update(metrics)
    row["seconds"] = round(time.time() - t0, 1)
    run.parts.schedule.after_epoch(metrics)
    state.history.append(row)
    value = row.get(metric_key)
    is_best = is_better(cfg.checkpoint_metric, value, state.best["value"]) or state.best["epoch"] < 0
    if is_best:
        state.best = {"epoch": epoch + 1, "value": value}
    state.epoch = epoch + 1
    if accelerator.is_main_process:
        # the files of this epoch are snapshotted here and written by a background thread while
        # the next epoch trains: checkpoints (atomic), metrics.csv and curves.png
        t1 = time.time()
        extra = {"epoch": state.epoch, "history": state.history, "best": state.best, "config": asdict(cfg)}
        files = []
        if is_best:
            files.append((out / schema.RUN_BEST, checkpoint_state(_weights(run, accelerator), **extra)))
        if run.parts.ema is not None:
            extra["ema"] = run.parts.ema.module.state_dict()
        weights = accelerator.unwrap_model(run.model).state_dict()
        files.append(
            (out / schema.RUN_LAST, checkpoint_state(weights, run.parts.optimizer, run.parts.schedule, **extra))
        )
        row["seconds_outside"] = round(time.time() - t1, 3)  # what the epoch files cost the loop
        files[-1][1]["history"][-1]["seconds_outside"] = row["seconds_outside"]  # last.pt's copy too (resume)
        hist = pd.DataFrame(state.history)
        title = f"{cfg.experiment}: {run.tag}"
        writer.submit(_write_epoch_files, out, files, hist, title, state.best["epoch"])
    log.info(
        "%s epoch %d/%d: train_loss %.3f val_loss %.3f top1 %.3f top5 %.3f gap %.3f lr %.2e (%.1fs)",
        run.tag,
        epoch + 1,
        cfg.epochs,
        row["train_loss"],
        row["val_loss"],
        row.get("val_top1", float("nan")),
        row.get("val_top5", float("nan")),
        row.get("val_gap", float("nan")),
        row["lr"],
        row["seconds"],
    )
    if progress is not None:
        log.info(progress.line(run, epoch + 1))
    if cfg.log_with != "none":
        accelerator.log({f"{run.tag}/{k}": v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
    accelerator.wait_for_everyone()


# -------------------------------------------------------------------------------- finishing


def _save_predictions(run: Run, manifest: str, rows: pd.DataFrame, out: dict) -> None:
    order = np.argsort(out["index"], kind="stable")
    name = schema.RUN_OOF if manifest == "oof" else schema.pred_file(manifest)
    save_predictions(
        run.out / name,
        ids=rows["id"].to_numpy()[out["index"][order]].astype(str),
        probs=out["probs"][order],
        labels=out["labels"][order],
        meta={
            "manifest": manifest,
            "model": run.model_name,
            "fold": run.fold,
            "tta": None,
            **run.ident,
            "prep_fingerprint": run.ident["fingerprint"],
            "img_size": run.cfg.img_size,
        },
    )


def finish_run(run: Run, state: RunState, accelerator: Accelerator) -> dict:
    """Predictions of the best epoch (OOF, test, non-landmark pool), analysis, summary, DONE."""
    accelerator.wait_for_everyone()  # the main process has finished writing best.pt
    load_checkpoint(run.out / schema.RUN_BEST, accelerator, run.model)
    val_metrics, val_out = evaluate(run.model, run.loaders["val"], accelerator, run.channels_last)
    preds = {"oof": (run.rows["val"], val_out)}
    for manifest in ("test", schema.NONLANDMARK):
        if manifest in run.loaders:
            preds[manifest] = (run.rows[manifest], predict(run.model, run.loaders[manifest], accelerator,
                                                           run.channels_last))  # fmt: skip
    seconds = [r["seconds"] for r in state.history]
    summary = {
        "model": run.model_name,
        "fold": run.fold,
        "best_epoch": state.best["epoch"],
        "checkpoint_metric": run.cfg.checkpoint_metric,
        **val_metrics,
        "epochs": run.cfg.epochs,
        "seconds": round(sum(seconds), 1),
        "seconds_per_epoch": round(float(np.median(seconds)), 2) if seconds else None,
        "train_images": len(run.rows["train"]),
        "val_images": len(run.rows["val"]),
        "img_size": run.cfg.img_size,
        "precision": accelerator.mixed_precision,
        "device": str(accelerator.device),
        "processes": accelerator.num_processes,
        **run.info,
    }
    if accelerator.is_main_process:
        for manifest, (rows, out) in preds.items():
            _save_predictions(run, manifest, rows.reset_index(drop=True), out)
        _analysis(run, val_out)
        write_json(run.out / schema.RUN_SUMMARY, summary)
        (run.out / schema.RUN_DONE).write_text("ok\n")
    accelerator.wait_for_everyone()
    return summary


def _analysis(run: Run, val_out: dict) -> None:
    """Per-class accuracy and confusion matrix of the OOF predictions (best effort: never fails a run)."""
    try:
        from pipeline.analysis import write_run_analysis
    except ImportError:
        return
    order = np.argsort(val_out["index"], kind="stable")
    try:
        write_run_analysis(run.out, val_out["probs"][order], val_out["labels"][order], run.label_map)
    except Exception as e:  # noqa: BLE001 - figures are a report, the predictions are written already
        log.warning("%s: per-class analysis not written (%s)", run.out, e)


# ------------------------------------------------------------------------------------ the stage


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
    accelerator = accelerator or make_accelerator(cfg)
    progress = progress or Progress({model_name: cfg.epochs})
    out = schema.run_dir(cfg.runs_root, cfg.experiment, model_name, fold)
    data_dir = Path(cfg.data_root) / cfg.dataset
    schema.read_label_map(data_dir)  # a missing prep is one line before anything is created
    if fold >= 0:
        ensure_fold_file(cfg)
    with run_lock(out, accelerator):
        if accelerator.is_main_process:
            cleanup_temp_files(out)  # half checkpoints of a killed write
        ident = prep_identity(cfg, fold)
        saved = check_run_folder(out, cfg, ident) if cfg.resume else None
        if cfg.resume and (out / schema.RUN_DONE).is_file():
            if saved and saved.get("epochs", cfg.epochs) >= cfg.epochs:
                log.info("%s: already finished, skipped (delete the folder to retrain)", out)
                progress.skip(cfg.epochs, model_name)
                return pd.read_json(out / schema.RUN_SUMMARY, typ="series").to_dict()
            log.info("%s: finished after %s epochs, continuing to %d", out, saved and saved.get("epochs"), cfg.epochs)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                (out / schema.RUN_DONE).unlink()
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
    accelerator.free_memory()  # drop references to this fold's model/optimizer/loaders
    return summary


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
