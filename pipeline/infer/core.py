"""The prediction loop every inference input shares: runs checked, one model in memory at a time,
probabilities (with TTA) gathered across processes in manifest order, and the meta that ties each
prediction file to the run and prep it came from."""

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

from common.errors import DataError, PipelineError
from common.lock import folder_lock
from pipeline.config_stages import PredictConfig
from pipeline.data.datasets import build_dataset, normalize
from pipeline.data.loaders import make_loader
from pipeline.infer.tta import TTA, check_tta
from pipeline.runs.load import RunInfo, check_run, load_run, read_run
from pipeline.runs.predfile import WEIGHTS_KEY, output_errors, weights_sha
from pipeline.runs.prep import PrepIdentity
from pipeline.scores import choose_k, concat, topk

log = logging.getLogger(__name__)


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
    k: int = 0,
) -> dict[str, np.ndarray]:
    """Softmax probabilities of every dataset row, in dataset order (gathered, each row once).

    Above 1000 classes (:func:`pipeline.scores.choose_k`, ``k`` > 0 forces one) each gathered
    batch keeps its top-k classes only, so no (N, C) matrix is held: ``probs`` is a ``TopK``.

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
    want: int | None = None  # top-k of softmax outputs at scale; embeddings (forward) stay dense
    show = progress and sys.stderr.isatty() and accelerator.is_local_main_process
    for batch in tqdm(loader, desc=desc, leave=False, disable=not show, mininterval=1.0):
        p = None
        for view in tta.views(batch["image"], img_size):
            with accelerator.autocast():  # also for a forward other than the prepared model's
                out = forward(model, normalize(view, channels_last=channels_last)).float()
            p = out if p is None else p + out
        p = p / tta.n_views
        p, t, i = accelerator.gather_for_metrics((p, batch["target"], batch["id"]))
        if not probs and forward is _softmax:
            want = choose_k(p.shape[1], k)
        probs.append(p.cpu() if want is None else topk(p.cpu().numpy().astype(np.float32), want))
        targets.append(t.cpu())
        index.append(i.cpu())
    n = len(loader.dataset)
    idx = torch.cat(index).numpy() if index else np.zeros(0, dtype=np.int64)
    if len(idx) != n or not np.array_equal(np.sort(idx), np.arange(n)):
        raise PipelineError(f"{desc}: gathered {len(idx)} predictions for {n} rows (a row missing or repeated)")
    order = np.argsort(idx, kind="stable")
    if want is not None:
        return {"probs": concat(probs)[order], "labels": torch.cat(targets).numpy()[order], "index": idx[order]}
    return {
        "probs": torch.cat(probs).numpy().astype(np.float32)[order],
        "labels": torch.cat(targets).numpy()[order],
        "index": idx[order],
    }


@dataclass
class Job:
    """One manifest to predict with one run: its rows, where their cached images are, and how."""

    manifest: str
    data_dir: Path
    rows: pd.DataFrame
    cache: str = "jpeg"


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
    from pipeline.runtime import new_accelerator

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
    from pipeline.runtime import resolve_channels_last

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
                k=cfg.pred_topk,
            )
            yield info, job, out
        del model, run
        accelerator.free_memory()


def prediction_meta(info: RunInfo, manifest: str, tta: TTA, prep: PrepIdentity, accelerator, **extra) -> dict:
    """``meta`` of a prediction file: where the predictions come from (see pipeline.runs.predfile),
    the sha256 of the ``best.pt`` included, so the ensemble can refuse files of older weights."""
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
        WEIGHTS_KEY: weights_sha(info.weights),  # hashed once per run (cached): stale files are refused later
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
        model = check_run(info, label_map, label_map_path, current)
        if tta is not None:
            check_tta(tta, info, model)
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
            with output_errors(what):  # a read-only folder is one line too, on every rank
                for folder in folders:
                    stack.enter_context(folder_lock(folder, what))
        except PipelineError as e:
            error = str(e)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        error = broadcast_object_list([error])[0]
    if error:
        raise PipelineError(error)
