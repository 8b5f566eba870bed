"""The epoch loop: train, validate, step the schedule, checkpoint.

Every epoch reseeds all generators from ``(seed, epoch)`` and derives its stage (image side of
progressive resizing, frozen or trained backbone) from the epoch alone, so a resumed run equals
an uninterrupted one, also when it resumes into a later stage. The epoch's files (checkpoints,
metrics.csv, curves.png) are snapshotted and written by a background thread while the next
epoch trains.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from common import schema
from common.errors import PipelineError
from common.io import write_csv
from pipeline.config import TrainConfig
from pipeline.optim.schedule import CHECKPOINT_METRICS, is_better
from pipeline.runs.checkpoints import checkpoint_state, write_checkpoint
from pipeline.train.build import Run, RunState, _eval_model, _weights, enter_final_stage, enter_stage, stage_at
from pipeline.train.engine import Diverged, evaluate, train_one_epoch
from pipeline.train.progress import Progress

log = logging.getLogger(__name__)


def resolve_prefetch(requested: str, device: torch.device) -> bool:
    """``auto``: prefetch on a GPU (the copy and the CPU-side batch work overlap the GPU's step); not
    on a CPU, where the thread's work takes cores the model's threads use (measured 0.89-0.91x vs
    0.96-1.00x of a plain loop for ``simple_cnn`` on 2 cores, bench/bench_loop.py)."""
    return requested == "true" or (requested == "auto" and device.type == "cuda")


def training_feed(loader, cfg: TrainConfig, accelerator: Accelerator):
    """The loader, or (when ``prefetch`` resolves on: a GPU) a thread preparing its next batch while the model runs."""
    from pipeline.data.prefetch import Prefetcher

    return Prefetcher(loader, accelerator.device) if resolve_prefetch(cfg.prefetch, accelerator.device) else loader


def train_epochs(run: Run, state: RunState, accelerator: Accelerator, progress: Progress | None = None) -> RunState:
    """Epochs ``state.epoch + 1 .. cfg.epochs``: train, validate, step the schedule, checkpoint."""
    cfg = run.cfg
    metric_key = CHECKPOINT_METRICS[cfg.checkpoint_metric][0]
    show_bars = cfg.progress and sys.stderr.isatty()
    with BackgroundWriter() as writer:
        for epoch in range(state.epoch, cfg.epochs):
            _one_epoch(run, state, epoch, accelerator, writer, metric_key, show_bars, progress)
    enter_final_stage(run, accelerator)
    return state


def _write_epoch_files(out: Path, files: list, hist: pd.DataFrame, title: str, best_epoch: int) -> Callable[[], Path]:
    """Write the checkpoints and metrics.csv now; return curves.png as a job for :class:`BackgroundWriter`,
    which draws it when its time budget allows and always at the end."""
    for path, state in files:
        write_checkpoint(path, state)
    write_csv(out / schema.RUN_METRICS, hist)
    return functools.partial(_plot_curves, hist, out / schema.RUN_CURVES, title, best_epoch)


def _plot_curves(hist: pd.DataFrame, path: Path, title: str, best_epoch: int) -> Path:
    from pipeline.report.plots import plot_curves

    return plot_curves(hist, path, title, best_epoch=best_epoch)


def _import_matplotlib() -> None:
    try:
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
    except ImportError:
        pass


class BackgroundWriter:
    """One background thread writing the epoch files in order; errors come back on ``flush``.

    A job's returned callable is a figure (curves.png): only the newest one matters, and drawing
    it every epoch took a core for ~0.1-0.5 s an epoch (matplotlib's import, ~1 s, the first time),
    as much as the validation of a small model. It is drawn at most once per ``max(min_gap,
    cost / share)`` seconds (the first not before ``min_gap`` s into the loop, so a short run pays
    for one figure) and always when the block ends. Leaving the block waits for every pending write
    (a failure, e.g. a full disk, is raised there), so nothing is still being written when the run
    goes on to its predictions, and an exception of the loop never leaves a thread writing behind it.
    """

    def __init__(self, min_gap: float = 30.0, share: float = 0.05) -> None:
        self.min_gap, self.share = min_gap, share

    def __enter__(self) -> BackgroundWriter:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="epoch-files")
        self.pending: list = []
        self.figure: Callable | None = None  # the newest figure not drawn yet
        self.next_figure = time.monotonic() + self.min_gap
        self.warm = False  # matplotlib imported (~1-1.5 s of one core)
        return self

    def submit(self, fn, *args) -> None:
        self.pending.append(self.pool.submit(self._run, fn, *args))

    def _run(self, fn, *args) -> None:
        """In the writer thread: the job, then its figure when it is due."""
        figure = fn(*args)
        if callable(figure):
            self.figure = figure
            if time.monotonic() >= self.next_figure:
                self._draw()
            elif not self.warm:
                _import_matplotlib()  # now, while training runs: not on the way to the run's end
            self.warm = True

    def _draw(self) -> None:
        figure, self.figure = self.figure, None
        if figure is not None:
            t0 = time.monotonic()
            figure()
            cost = time.monotonic() - t0
            self.next_figure = time.monotonic() + max(self.min_gap, cost / self.share)

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for f in pending:
            f.result()  # re-raises a write error here, in the training thread

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.pending.append(self.pool.submit(self._draw))  # the last figure, also after a failure
            self.flush()
        finally:
            self.pool.shutdown(wait=True)


def _one_epoch(run: Run, state: RunState, epoch: int, accelerator: Accelerator, writer: BackgroundWriter,
               metric_key: str, show_bars: bool, progress: Progress | None) -> None:  # fmt: skip
    """Train, validate, step the schedule, hand this epoch's files to the writer, log."""
    cfg = run.cfg
    t0 = time.time()
    enter_stage(run, epoch, accelerator)  # progressive resizing, frozen warm-up: a function of the epoch
    set_seed(cfg.seed + 1000 * (epoch + 1))  # augmentation and dropout: a function of (seed, epoch)
    run.train_input.set_epoch(epoch)  # shuffle order and the input path's own generators: same
    if run.parts.mixer is not None:
        run.parts.mixer.set_epoch(epoch)
    row = {"epoch": epoch + 1, "lr": run.parts.schedule.lr}
    if cfg.stage_epochs:  # only then: the columns of other runs stay as they were
        stage, size = stage_at(cfg, epoch)
        row.update(stage=stage + 1, img_size=size)
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
        _hand_over_epoch_files(run, state, is_best, accelerator, writer, row)
    _log_epoch(run, row, progress.eta(run) if progress is not None else "")
    if cfg.log_with != "none":
        accelerator.log({f"{run.tag}/{k}": v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
    accelerator.wait_for_everyone()


def _hand_over_epoch_files(run: Run, state: RunState, is_best: bool, accelerator: Accelerator,
                           writer: BackgroundWriter, row: dict) -> None:  # fmt: skip
    """Snapshot this epoch's checkpoints (best when it is, last always) and give them, metrics.csv
    and curves.png to the background writer, so the next epoch trains while they are written."""
    cfg, out = run.cfg, run.out
    t1 = time.time()
    extra = {"epoch": state.epoch, "history": state.history, "best": state.best, "config": asdict(cfg)}
    files = []
    if is_best:
        files.append((out / schema.RUN_BEST, checkpoint_state(_weights(run, accelerator), **extra)))
    if run.parts.ema is not None:
        extra["ema"] = run.parts.ema.module.state_dict()
    if accelerator.scaler is not None:  # fp16's GradScaler: its loss scale, so a resume is exact
        extra["scaler"] = accelerator.scaler.state_dict()
    weights = accelerator.unwrap_model(run.model).state_dict()
    files.append((out / schema.RUN_LAST, checkpoint_state(weights, run.parts.optimizer, run.parts.schedule, **extra)))
    row["seconds_outside"] = round(time.time() - t1, 3)  # what the epoch files cost the loop
    files[-1][1]["history"][-1]["seconds_outside"] = row["seconds_outside"]  # last.pt's copy too (resume)
    writer.submit(_write_epoch_files, out, files, pd.DataFrame(state.history), f"{cfg.experiment}: {run.tag}",
                  state.best["epoch"])  # fmt: skip


def _log_epoch(run: Run, row: dict, eta: str = "") -> None:
    """One line per epoch: the scores, then the whole run's elapsed time and ETA."""
    log.info(
        "%s epoch %d/%d: train_loss %.3f val_loss %.3f top1 %.3f top5 %.3f gap %.3f lr %.2e (%.1fs)%s",
        run.tag, row["epoch"], run.cfg.epochs, row["train_loss"], row["val_loss"],
        row.get("val_top1", float("nan")), row.get("val_top5", float("nan")), row.get("val_gap", float("nan")),
        row["lr"], row["seconds"], f"; {eta}" if eta else "",
    )  # fmt: skip
