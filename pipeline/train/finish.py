"""Finishing a run: predictions of the best epoch (OOF, test, non-landmark pool), the per-class
analysis, summary.json and, last, the DONE marker."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pandas as pd
from accelerate import Accelerator

from common import schema
from common.io import write_json
from pipeline.runs.checkpoints import load_checkpoint
from pipeline.runs.predfile import WEIGHTS_KEY, save_predictions, weights_sha
from pipeline.runs.scan import mark_done
from pipeline.train.build import Run, RunState
from pipeline.train.engine import evaluate, predict

log = logging.getLogger(__name__)


def _save_predictions(run: Run, manifest: str, rows: pd.DataFrame, out: dict, sha: str | None) -> None:
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
            WEIGHTS_KEY: sha,  # the final best.pt these predictions come from (stale ones are refused later)
        },
    )


def finish_run(run: Run, state: RunState, accelerator: Accelerator) -> dict:
    """Predictions of the best epoch (OOF, test, non-landmark pool), analysis, summary, DONE."""
    accelerator.wait_for_everyone()  # the main process has finished writing best.pt
    load_checkpoint(run.out / schema.RUN_BEST, accelerator, run.model)
    val_metrics, val_out = evaluate(run.model, run.loaders["val"], accelerator, run.channels_last)
    # the per-class figures (matplotlib, ~1 s) are drawn while the model predicts the test rows
    figures = _in_background(_analysis, run, val_out) if accelerator.is_main_process else None
    try:
        preds = {"oof": (run.rows["val"], val_out)}
        for manifest in ("test", schema.NONLANDMARK):
            if manifest in run.loaders:
                preds[manifest] = (run.rows[manifest], predict(run.model, run.loaders[manifest], accelerator,
                                                               run.channels_last))  # fmt: skip
        summary = _summary(run, state, accelerator, val_metrics)
        if accelerator.is_main_process:
            sha = weights_sha(run.out / schema.RUN_BEST)  # best.pt is final here: it was just loaded
            for manifest, (rows, out) in preds.items():
                _save_predictions(run, manifest, rows.reset_index(drop=True), out, sha)
    finally:
        if figures is not None:
            figures.join()  # no thread left writing into the run folder, also after an error
    if accelerator.is_main_process:
        write_json(run.out / schema.RUN_SUMMARY, summary)
        mark_done(run.out)
        if not run.cfg.keep_last:  # best.pt predicts; last.pt (optimizer state) only continues training
            (run.out / schema.RUN_LAST).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    return summary


def _summary(run: Run, state: RunState, accelerator: Accelerator, val_metrics: dict) -> dict:
    seconds = [r["seconds"] for r in state.history]
    return {
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


def _in_background(fn, *args) -> threading.Thread:
    """``fn(*args)`` in a thread (the caller joins it): for work that never raises (``_analysis``)."""
    thread = threading.Thread(target=fn, args=args, name="run-figures", daemon=True)
    thread.start()
    return thread


def _analysis(run: Run, val_out: dict) -> None:
    """Per-class accuracy and confusion matrix of the OOF predictions (best effort: never fails a run)."""
    try:
        from pipeline.report.analysis import write_run_analysis
    except ImportError:
        return
    order = np.argsort(val_out["index"], kind="stable")
    try:
        write_run_analysis(run.out, val_out["probs"][order], val_out["labels"][order], run.label_map)
    except Exception as e:  # noqa: BLE001 - figures are a report, never a reason to lose the run
        log.warning("%s: per-class analysis not written (%s)", run.out, e)
