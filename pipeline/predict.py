"""Prediction stage: finished runs -> ``<run>/<manifest>[_tta].npz`` for any manifest, with TTA.

``python -m pipeline predict`` loads every finished (model, fold) of ``runs/<experiment>/``
(a ``DONE`` marker; ``models``/``folds`` filter them), ONE model in memory at a time, and
predicts each requested manifest of ``data/<dataset>/`` in manifest order under Accelerate
(CPU, one GPU or several processes: ``gather_for_metrics`` gives every row exactly once).
Files are written with :func:`pipeline.predfile.save_predictions` (float16 by default) and carry
where they come from in ``meta`` (model, fold, manifest, TTA, prep fingerprint, label map).

Two other inputs go through the same loop without prep (:mod:`pipeline.predict_folders`):
``images=DIR`` (your own photos: a CSV of the top-k landmark ids per image) and ``test_root=DIR``
(the competition folder, with or without ``bundle=DIR``, see :mod:`pipeline.export`). Run folders
are read and checked by :mod:`pipeline.runs`; the views of TTA are :mod:`pipeline.tta`.

Nothing is written when a check fails (checked for every run before the first prediction):
a finished run without readable weights, weights that do not fit the recipe, a model of
another label map, or a manifest from another prep than the one the run was trained on.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator

from common import schema
from common.errors import DataError, PipelineError
from common.lock import folder_lock
from pipeline.config import PredictConfig
from pipeline.data import build_dataset, fold_rows, make_loader, normalize
from pipeline.predfile import save_predictions
from pipeline.runs import PrepIdentity, RunInfo, check_run, finished_runs, load_run, read_prep_identity, read_run
from pipeline.tta import TTA

log = logging.getLogger(__name__)

OOF = "oof"  # pseudo-manifest: the fold's own validation rows (needs the train manifest and fold file)
DEFAULT_MANIFESTS = (schema.COMPETITION, schema.NONLANDMARK, "test")


# ---------------------------------------------------------------- TTA and the loop


def _softmax(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).float().softmax(dim=1)


@torch.no_grad()
def predict_loader(
    model: torch.nn.Module,
    loader,
    accelerator,
    img_size: int,
    tta: TTA | None = None,
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "predict",
    forward: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, np.ndarray]:
    """Softmax probabilities of every dataset row, in dataset order (gathered, each row once).

    ``loader`` yields uncropped cached images ``{"image", "target", "id"}`` (``id`` = row
    position); the eval crop and the TTA views are made here, on the device, per batch.
    ``forward(model, x)`` replaces the softmax of the logits (e.g. ``model.embed(x)`` for
    embeddings): ``probs`` is then the mean of its outputs over the TTA views.
    """
    from tqdm import tqdm

    tta = tta or TTA()  # the plain eval crop
    forward = forward or _softmax
    model.eval()
    probs, targets, index = [], [], []
    show = progress and sys.stderr.isatty() and accelerator.is_local_main_process
    for batch in tqdm(loader, desc=desc, leave=False, disable=not show, mininterval=1.0):
        p = None
        for view in tta.views(batch["image"], img_size):
            with accelerator.autocast():  # also for a forward other than the prepared model's
                out = forward(model, normalize(view, channels_last=channels_last)).float()
            p = out if p is None else p + out
        p = p / tta.n_views
        p, t, i = accelerator.gather_for_metrics((p, batch["target"], batch["id"]))
        probs.append(p.cpu())
        targets.append(t.cpu())
        index.append(i.cpu())
    n = len(loader.dataset)
    idx = torch.cat(index).numpy() if index else np.zeros(0, dtype=np.int64)
    if len(idx) != n or not np.array_equal(np.sort(idx), np.arange(n)):
        raise PipelineError(f"{desc}: gathered {len(idx)} predictions for {n} rows (a row missing or repeated)")
    order = np.argsort(idx, kind="stable")
    return {
        "probs": torch.cat(probs).numpy().astype(np.float32)[order],
        "labels": torch.cat(targets).numpy()[order],
        "index": idx[order],
    }


# ---------------------------------------------------------------- the stage


@dataclass
class Job:
    """One manifest to predict with one run: its rows, where their cached images are, and how."""

    manifest: str
    data_dir: Path
    rows: pd.DataFrame
    cache: str = "jpeg"


def resolve_manifests(cfg: PredictConfig, data_dir: Path) -> list[str]:
    """The requested manifests (each must exist), or every default one that exists."""
    if cfg.manifests:
        for m in cfg.manifests:
            if m != OOF and not schema.manifest_path(data_dir, m).is_file():
                found = sorted(p.stem for p in data_dir.glob("*.csv") if p.stem in (*schema.SPLITS, *DEFAULT_MANIFESTS))
                raise DataError(
                    f"manifest '{m}' not found: {schema.manifest_path(data_dir, m)} (found: {found + [OOF]})"
                )
        return list(dict.fromkeys(cfg.manifests))
    found = [m for m in DEFAULT_MANIFESTS if schema.manifest_path(data_dir, m).is_file()]
    if not found:
        raise DataError(f"{data_dir}: none of the manifests {list(DEFAULT_MANIFESTS)} exists (run prep first)")
    return found


def run_cache(info: RunInfo, data_dir: Path, rows: pd.DataFrame) -> str:
    """The cache the run trained from, when it covers these rows; the JPEG file cache otherwise."""
    if info.cfg.cache != "packed":
        return "jpeg"
    try:
        build_dataset(data_dir, rows, None, "packed")
        return "packed"
    except DataError as e:
        log.warning("%s: reading the JPEG cache (%s)", info.tag, e)
        return "jpeg"


def make_accelerator(cfg: PredictConfig) -> Accelerator:
    """One Accelerator for the stage: the precision and device of ``cfg``."""
    from pipeline.engine import new_accelerator

    return new_accelerator(cfg.mixed_precision, cfg.cpu)


def iter_predictions(
    infos: list[RunInfo],
    jobs: dict[Path, list[Job]],
    cfg: PredictConfig,
    accelerator,
    tta: TTA,
    forward: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[tuple[RunInfo, Job, dict]]:
    """``(run, job, {"probs", "labels", "index"})`` for every run and its jobs; one model in memory
    at a time. ``forward``: see :func:`predict_loader` (the embed stage passes ``model.embed``)."""
    from pipeline.engine import resolve_channels_last

    channels_last = resolve_channels_last(cfg.channels_last, cfg.cpu)
    for info in infos:
        run = load_run(info)
        model = run.model.to(memory_format=torch.channels_last) if channels_last else run.model
        model = accelerator.prepare_model(model, evaluation_mode=True)
        for job in jobs[info.run_dir]:
            ds = build_dataset(job.data_dir, job.rows, None, job.cache)
            loader = accelerator.prepare_data_loader(make_loader(ds, cfg.batch_size, False, cfg.num_workers))
            out = predict_loader(
                model,
                loader,
                accelerator,
                info.cfg.img_size,
                tta,
                channels_last,
                cfg.progress,
                f"{info.tag} {job.manifest}",
                forward,
            )
            yield info, job, out
        del model, run
        accelerator.free_memory()


def prediction_meta(info: RunInfo, manifest: str, tta: TTA, prep: PrepIdentity, accelerator, **extra) -> dict:
    """``meta`` of a prediction file: where the predictions come from (see pipeline.predfile)."""
    return {
        "model": info.model_name,
        "fold": info.fold,
        "manifest": manifest,
        "tta": tta.as_dict() if tta.on else None,
        "prep_fingerprint": prep.fingerprint,
        "label_map_sha": prep.label_map_sha,
        "num_classes": info.num_classes,
        "img_size": info.cfg.img_size,
        "fused": info.fused,
        "precision": accelerator.mixed_precision,
        **extra,
    }


def check_runs(
    runs: list[Path],
    data_dir: Path | None,
    label_map: pd.DataFrame,
    label_map_path: Path,
    current: PrepIdentity | None,
    tta: TTA,
) -> list[RunInfo]:
    """Read and check every run before anything is written (see :func:`check_run`)."""
    infos = []
    for run_dir in runs:
        info = read_run(run_dir, data_dir)
        check_run(info, label_map, label_map_path, current, tta)
        infos.append(info)
    if current is not None and not any(i.prep.recorded for i in infos):
        log.warning("runs record no prep identity (older runs): assuming they were trained on %s", data_dir)
    return infos


def lock_folders(stack: contextlib.ExitStack, folders: list[Path], accelerator, what: str) -> None:
    """The main process locks every output folder (one writer each); under several processes a
    refused lock stops every rank at once instead of leaving the others waiting in a collective."""
    error = None
    if accelerator.is_main_process:
        try:
            for folder in folders:
                stack.enter_context(folder_lock(folder, what))
        except PipelineError as e:
            error = str(e)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        error = broadcast_object_list([error])[0]
    if error:
        raise PipelineError(error)


def run_predict(cfg: PredictConfig) -> list[Path]:
    """Predict the requested manifests with every finished run; returns the files written."""
    if cfg.images or cfg.test_root:  # no prep: a folder of images (pipeline/predict_folders.py)
        from pipeline.predict_folders import predict_competition, predict_images

        return [predict_images(cfg)] if cfg.images else predict_competition(cfg)
    data_dir = Path(cfg.data_root) / cfg.dataset
    label_map = schema.read_label_map(data_dir)
    current = read_prep_identity(data_dir)
    manifests = resolve_manifests(cfg, data_dir)
    runs = finished_runs(cfg.runs_root, cfg.experiment, cfg.models or None, cfg.folds or None)
    tta = TTA(cfg.tta_flip, tuple(cfg.tta_scales))
    infos = check_runs(runs, data_dir, label_map, data_dir / schema.LABEL_MAP, current, tta)
    rows = {m: schema.read_manifest(data_dir, m) for m in manifests if m != OOF}
    jobs: dict[Path, list[Job]] = {}
    for info in infos:
        jobs[info.run_dir] = []
        for m in manifests:
            if m == OOF:
                folds_file = schema.fold_file(cfg.folds_dir, info.cfg.dataset, info.cfg.k, info.cfg.fold_seed)
                r = fold_rows(data_dir, folds_file, info.fold)[1].reset_index(drop=True)
            else:
                r = rows[m]
            jobs[info.run_dir].append(Job(m, data_dir, r, run_cache(info, data_dir, r)))
    accelerator = make_accelerator(cfg)
    written: list[Path] = []
    with contextlib.ExitStack() as locks:
        lock_folders(locks, [i.run_dir for i in infos], accelerator, "predict")
        for info, job, out in iter_predictions(infos, jobs, cfg, accelerator, tta):
            path = info.run_dir / schema.pred_file(job.manifest, tta.on)
            if accelerator.is_main_process:
                meta = prediction_meta(info, job.manifest, tta, current, accelerator, experiment=cfg.experiment)
                save_predictions(path, job.rows["id"].to_numpy(), out["probs"], out["labels"], meta, cfg.probs_dtype)
                log.info("%s: %s (%d rows)", info.tag, path.name, len(job.rows))
            written.append(path)
        accelerator.wait_for_everyone()
    return written


def main(cfg: PredictConfig) -> int:
    """CLI face: predict, then one line per file written (main process)."""
    from accelerate import PartialState

    from pipeline.predict_folders import submit_command

    paths = run_predict(cfg)
    if PartialState().is_main_process:
        for p in paths:
            print(f"wrote {p}")
        if cfg.test_root:
            src_ds, src_exp = cfg.dataset, cfg.experiment
            if cfg.bundle:
                from pipeline.export import read_bundle

                b = read_bundle(cfg.bundle)
                src_ds, src_exp = b.dataset, b.experiment
            print(f"next: {submit_command(cfg, src_ds, src_exp)}")
    return 0
