"""Training stage: for each model and fold, fit with seed 001's recipe and write the run folder.

``runs/<experiment>/<model>/fold<k>/``: config.yaml, metrics.csv, curves.png, last.pt, best.pt,
oof.npz (predictions of the best epoch on the held-out fold), test.npz, summary.json, DONE.
A finished fold is skipped on rerun; an interrupted one resumes exactly from ``last.pt``: every
epoch reseeds all generators from ``(seed, epoch)``, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed

from common import schema
from common.errors import ConfigError, PipelineError
from common.io import atomic_write, write_csv, write_json, write_yaml
from pipeline.config import TrainConfig
from pipeline.data import build_dataset, build_eval_transform, build_train_transform, fold_rows, make_loader
from pipeline.engine import (
    HalveOnDrop,
    evaluate,
    load_checkpoint,
    predict,
    resolve_channels_last,
    resolve_mixed_precision,
    save_checkpoint,
    train_one_epoch,
)
from pipeline.models import check_input_size, create_model
from pipeline.plots import plot_curves

log = logging.getLogger(__name__)


def build_model(cfg: TrainConfig, name: str, num_classes: int, channels_last: bool = False) -> torch.nn.Module:
    check_input_size(name, cfg.img_size, cfg.small_input)
    model = create_model(
        name, num_classes=num_classes, pretrained=cfg.use_pretrained, small_input=cfg.small_input, **cfg.model_kwargs
    )
    if cfg.freeze_backbone:
        from pipeline.models.utils import freeze_backbone

        model = freeze_backbone(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _save_predictions(path: Path, rows: pd.DataFrame, out: dict) -> None:
    order = np.argsort(out["index"], kind="stable")
    with atomic_write(path, "wb") as f:
        np.savez(
            f,
            ids=rows["id"].to_numpy()[out["index"][order]].astype(str),
            probs=out["probs"][order],
            labels=out["labels"][order],
        )


def check_same_recipe(out: Path, cfg: TrainConfig) -> dict | None:
    """The config a run folder was made with; a :class:`PipelineError` if the recipe differs.

    Continuing a finished or interrupted fold is only exact with the same recipe; a changed one
    would silently mix results, so it must go to a new ``experiment`` (or the folder be deleted).
    """
    path = out / schema.RUN_CONFIG
    if not path.is_file():
        return None
    saved = yaml.safe_load(path.read_text()) or {}
    new = asdict(cfg)
    recipe = set(TrainConfig.recipe_keys())
    diff = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in new.items() if k in recipe and saved.get(k, v) != v]
    if diff:
        raise PipelineError(
            f"{out} was trained with another recipe ({'; '.join(diff[:4])}{' ...' if len(diff) > 4 else ''}); "
            "use another experiment=NAME or delete that folder"
        )
    return saved


def fit(cfg: TrainConfig, model_name: str, fold: int, accelerator: Accelerator | None = None) -> dict:
    """Train one model on one fold; returns the run summary (also in summary.json).

    A finished fold is skipped; with more ``epochs`` than it was trained for, it continues from
    ``last.pt``. A fold trained with another recipe is an error (see :func:`check_same_recipe`).
    """
    data_dir = Path(cfg.data_root) / cfg.dataset
    out = schema.run_dir(cfg.runs_root, cfg.experiment, model_name, fold)
    saved = check_same_recipe(out, cfg) if cfg.resume else None
    if cfg.resume and (out / schema.RUN_DONE).is_file():
        if saved and saved.get("epochs", cfg.epochs) >= cfg.epochs:
            log.info("%s: already finished, skipped (delete the folder to retrain)", out)
            return pd.read_json(out / schema.RUN_SUMMARY, typ="series").to_dict()
        log.info("%s: finished after %s epochs, continuing to %d", out, saved and saved.get("epochs"), cfg.epochs)
        (out / schema.RUN_DONE).unlink()
    accelerator = accelerator or Accelerator(
        mixed_precision=resolve_mixed_precision(cfg.mixed_precision, cfg.cpu), cpu=cfg.cpu
    )
    labels = schema.read_label_map(data_dir)
    folds_file = schema.fold_file(cfg.folds_dir, cfg.dataset, cfg.k, cfg.fold_seed)
    train_rows, val_rows = fold_rows(data_dir, folds_file, fold)
    test_rows = schema.read_manifest(data_dir, "test")

    channels_last = resolve_channels_last(cfg.channels_last, cfg.cpu)
    set_seed(cfg.seed)
    model = build_model(cfg, model_name, len(labels), channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    train_tf = build_train_transform(cfg.img_size, cfg.hflip, cfg.color_jitter, cfg.crop_padding)
    train_ds = build_dataset(data_dir, train_rows, train_tf, cfg.cache)
    eval_tf = build_eval_transform(cfg.img_size)
    train_loader = make_loader(train_ds, cfg.batch_size, True, cfg.num_workers, cfg.seed)
    generator = train_loader.generator
    val_loader = make_loader(
        build_dataset(data_dir, val_rows, eval_tf, cfg.cache), cfg.batch_size, False, cfg.num_workers
    )
    test_loader = make_loader(
        build_dataset(data_dir, test_rows, eval_tf, cfg.cache), cfg.batch_size, False, cfg.num_workers
    )
    model, optimizer, train_loader, val_loader, test_loader = accelerator.prepare(
        model, optimizer, train_loader, val_loader, test_loader
    )
    scheduler = HalveOnDrop(optimizer, cfg.lr_factor, enabled=cfg.schedule == "halve_on_drop")

    history: list[dict] = []
    best = {"epoch": -1, "val_top1": -1.0}
    start = 0
    if cfg.resume and (out / schema.RUN_LAST).is_file():
        state = load_checkpoint(out / schema.RUN_LAST, accelerator, model, optimizer, scheduler)
        start, history, best = state["epoch"], state["history"], state["best"]
        log.info("%s: resuming after epoch %d", out, start)
    if accelerator.is_main_process:
        write_yaml(
            out / schema.RUN_CONFIG,
            {
                **asdict(cfg),
                "model": model_name,
                "fold": fold,
                "num_classes": len(labels),
                "resolved_mixed_precision": accelerator.mixed_precision,
                "resolved_channels_last": channels_last,
                "device": str(accelerator.device),
                "processes": accelerator.num_processes,
            },
        )
    tag = f"{model_name}/{'holdout' if fold < 0 else f'fold{fold}'}"
    for epoch in range(start, cfg.epochs):
        t0 = time.time()
        set_seed(cfg.seed + 1000 * (epoch + 1))  # augmentation and dropout: a function of (seed, epoch)
        generator.manual_seed(cfg.seed + epoch)  # shuffle order: same
        row = {"epoch": epoch + 1, "lr": scheduler.lr}
        row.update(
            train_one_epoch(
                model,
                train_loader,
                optimizer,
                accelerator,
                channels_last,
                cfg.limit_train_batches,
                cfg.progress,
                desc=f"{tag} {epoch + 1}/{cfg.epochs}",
            )
        )
        metrics, _ = evaluate(model, val_loader, accelerator, channels_last)
        row.update(metrics)
        row["seconds"] = round(time.time() - t0, 1)
        scheduler.step(row["val_top1"])
        history.append(row)
        is_best = row["val_top1"] > best["val_top1"]
        if is_best:
            best = {"epoch": epoch + 1, "val_top1": row["val_top1"]}
        extra = {"epoch": epoch + 1, "history": history, "best": best, "config": asdict(cfg)}
        if is_best:
            save_checkpoint(out / schema.RUN_BEST, accelerator, model, **extra)
        save_checkpoint(out / schema.RUN_LAST, accelerator, model, optimizer, scheduler, **extra)
        if accelerator.is_main_process:
            hist = pd.DataFrame(history)
            write_csv(out / schema.RUN_METRICS, hist)
            plot_curves(hist, out / schema.RUN_CURVES, f"{cfg.experiment}: {tag}")
        log.info(
            "%s epoch %d/%d: train_loss %.3f val_loss %.3f top1 %.3f top5 %.3f lr %.2e (%.1fs)",
            tag,
            epoch + 1,
            cfg.epochs,
            row["train_loss"],
            row["val_loss"],
            row["val_top1"],
            row["val_top5"],
            row["lr"],
            row["seconds"],
        )
        accelerator.wait_for_everyone()

    # predictions of the best epoch: out-of-fold (validation rows) and test
    load_checkpoint(out / schema.RUN_BEST, accelerator, model)
    val_metrics, val_out = evaluate(model, val_loader, accelerator, channels_last)
    test_out = predict(model, test_loader, accelerator, channels_last)
    summary = {
        "model": model_name,
        "fold": fold,
        "best_epoch": best["epoch"],
        **val_metrics,
        "epochs": cfg.epochs,
        "seconds": round(sum(r["seconds"] for r in history), 1),
        "train_images": len(train_rows),
        "val_images": len(val_rows),
    }
    if accelerator.is_main_process:
        _save_predictions(out / schema.RUN_OOF, val_rows.reset_index(drop=True), val_out)
        _save_predictions(out / schema.RUN_TEST, test_rows.reset_index(drop=True), test_out)
        write_json(out / schema.RUN_SUMMARY, summary)
        (out / schema.RUN_DONE).write_text("ok\n")
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # drop references to this fold's model/optimizer/loaders
    return summary


def run_train(cfg: TrainConfig) -> list[dict]:
    """Every (model, fold) of the config, one after the other, on one Accelerator."""
    from pipeline.models import model_info

    for name in cfg.models:  # fail fast on a bad name or setting, before hours of training
        model_info(name)
        m_cfg = cfg.for_model(name)
        check_input_size(name, m_cfg.img_size, m_cfg.small_input)
    unknown = sorted(set(cfg.model_overrides) - set(cfg.models))
    if unknown:
        log.warning("model_overrides for model(s) not in 'models' are unused: %s", unknown)
    if cfg.img_size < 8:
        raise ConfigError("train: img_size must be >= 8")
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(cfg.mixed_precision, cfg.cpu), cpu=cfg.cpu)
    results = []
    for name in cfg.models:
        for fold in cfg.folds:
            results.append(fit(cfg.for_model(name), name, fold, accelerator))
    return results


def main(cfg: TrainConfig) -> int:
    """CLI face: train, then one line per finished (model, fold)."""
    for s in run_train(cfg):
        print(
            f"{s['model']} fold {s['fold']}: top1 {s.get('val_top1', float('nan')):.4f} "
            f"top5 {s.get('val_top5', float('nan')):.4f} gap {s.get('val_gap', float('nan')):.4f}"
        )
    return 0
