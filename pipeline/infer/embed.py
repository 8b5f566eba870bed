"""Embeddings and kNN re-ranking: ``python -m pipeline embed`` (and ``make embed``).

For every finished run of an experiment:

1. **Embeddings**: the L2-normalised ``model.embed(x)`` of every row of the train manifest (the
   gallery), and of the test, competition and non-landmark manifests (queries), streamed to
   ``<run>/emb_<manifest>.npy`` (float16, manifest order; written to a temporary file and
   renamed) with ``emb_<manifest>.json`` (ids and where they come from). Several processes
   split the rows; the main process writes each row where its index says.
2. **kNN re-ranking** (the GLR 2019-2020 winners' retrieval step): each query's top-k most
   similar gallery images (exact cosine, chunked matrix products: :mod:`pipeline.infer.retrieval`),
   a class score from them, and ``fused = clf_prob^alpha * knn_score^beta``. The gallery of a
   fold run is its own training rows (never the fold's held-out rows); the OOF queries are the
   fold's rows, so the kNN step is scored out-of-fold like everything else. alpha and beta are
   tuned on the OOF rows plus the non-landmark pool (GAP), never on the test split.
   The fused scores go to ``<manifest>_knn.npz`` (and ``oof_knn.npz``): one more prediction
   source that ``ensemble``/``submit`` read with ``knn=true``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common import schema
from common.errors import DataError, PipelineError
from common.io import write_json
from pipeline.config_stages import PredictConfig
from pipeline.data.datasets import build_dataset, normalize
from pipeline.data.loaders import make_loader
from pipeline.infer.core import check_runs, lock_folders, make_accelerator, run_cache
from pipeline.infer.retrieval import fuse, knn, knn_class_scores, nearest_file, save_nearest
from pipeline.infer.tta import TTA
from pipeline.metrics import score_all
from pipeline.runs.load import RunInfo, load_run
from pipeline.runs.predfile import WEIGHTS_KEY, check_fresh, load_predictions, save_predictions, weights_sha
from pipeline.runs.prep import read_prep_identity
from pipeline.runs.scan import finished_runs
from pipeline.scores import TopK, concat

log = logging.getLogger(__name__)

GALLERY = "train"
QUERY_MANIFESTS = ("test", schema.COMPETITION, schema.NONLANDMARK)
ALPHAS = (1.0, 0.5, 0.0)  # at beta 0 every alpha ranks alike: report alpha 1 (the classifier)
BETAS = (0.0, 0.5, 1.0, 2.0, 4.0)


def emb_paths(run_dir: Path, manifest: str) -> tuple[Path, Path]:
    """(embeddings .npy, index .json) of a manifest in a run folder."""
    return run_dir / f"emb_{manifest}.npy", run_dir / f"emb_{manifest}.json"


def read_embeddings(run_dir: Path, manifest: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, memory-mapped float16 (N, D) embeddings) of a manifest; one error line when absent."""
    data, index = emb_paths(run_dir, manifest)
    try:
        meta = json.loads(index.read_text())
        emb = np.load(data, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise DataError(f"{data}: embeddings missing or unreadable ({e}); run 'make embed'") from None
    ids = np.asarray(meta["ids"], dtype=str)
    if emb.shape[0] != len(ids):
        raise DataError(f"{data}: {emb.shape[0]} rows but {len(ids)} ids; run 'make embed' again")
    return ids, emb


# ------------------------------------------------------------------------------ embeddings


@torch.no_grad()
def write_embeddings(model, loader, accelerator, img_size: int, path: Path, n: int, channels_last: bool) -> int:
    """Stream ``model.embed`` of every loader row into ``path`` (float16, row = manifest position)."""
    from numpy.lib.format import open_memmap

    unwrapped = accelerator.unwrap_model(model)
    out, seen = None, 0
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        for batch in loader:
            (view,) = TTA().views(batch["image"], img_size)  # the eval centre crop
            with accelerator.autocast():
                e = unwrapped.embed(normalize(view, channels_last=channels_last)).float()
            e, i = accelerator.gather_for_metrics((e, batch["id"]))
            if accelerator.is_main_process:
                if out is None:
                    out = open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, e.shape[1]))
                out[i.cpu().numpy()] = e.cpu().numpy().astype(np.float16)
                seen += len(i)
        if accelerator.is_main_process:
            if seen != n:
                raise PipelineError(f"{path}: embedded {seen} rows for {n} (a row missing or repeated)")
            out.flush()
            del out
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return seen


def embed_runs(infos: list[RunInfo], manifests: list[str], cfg: PredictConfig, data_dir: Path, accelerator) -> None:
    """Embeddings of ``manifests`` for every run, one model in memory at a time."""
    from pipeline.runtime import resolve_channels_last

    channels_last = resolve_channels_last(cfg.channels_last, cfg.cpu)
    rows = {m: schema.read_manifest(data_dir, m) for m in manifests}
    for info in infos:
        run = load_run(info)
        model = run.model.to(memory_format=torch.channels_last) if channels_last else run.model
        if not hasattr(model, "embed"):
            raise PipelineError(f"{info.tag}: the model has no embed() (built before heads existed?)")
        model = accelerator.prepare_model(model, evaluation_mode=True)
        for m in manifests:
            ds = build_dataset(data_dir, rows[m], None, run_cache(info, data_dir, rows[m]))
            loader = accelerator.prepare_data_loader(make_loader(ds, cfg.batch_size, False, cfg.num_workers))
            path, index = emb_paths(info.run_dir, m)
            write_embeddings(model, loader, accelerator, info.cfg.img_size, path, len(rows[m]), channels_last)
            if accelerator.is_main_process:
                write_json(index, {"ids": rows[m]["id"].astype(str).tolist(), "manifest": m, "model": info.model_name,
                                   "fold": info.fold, "prep_fingerprint": info.prep.fingerprint,
                                   WEIGHTS_KEY: weights_sha(info.weights)})  # fmt: skip
                log.info("%s: %s (%d x %d)", info.tag, path.name, len(rows[m]), np.load(path, mmap_mode="r").shape[1])
        del model, run
        accelerator.free_memory()


# ------------------------------------------------------------------------------ kNN


@dataclass
class KnnSetting:
    k: int
    power: float
    alpha: float
    beta: float


def _knn_scores(
    q: np.ndarray, g: np.ndarray, g_labels: np.ndarray, c: int, s: KnnSetting, dtype: str, sparse: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(class scores, each query's similarity to its nearest gallery photo: its landmark-ness);
    ``sparse``: the class scores as top-k (the classifier's files are top-k: 81k classes)."""
    if s.k > len(g):
        raise PipelineError(f"knn_k={s.k} is larger than the gallery ({len(g)} training images); lower knn_k")
    sims, idx = knn(q, g, s.k, compute_dtype=dtype)
    return knn_class_scores(sims, idx, g_labels, c, power=s.power, sparse=sparse), sims[:, 0].copy()


def tune_fusion(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[float, float, float]:
    """(alpha, beta, GAP) maximising GAP over the tuning rows (OOF + the non-landmark pool).

    ``parts``: (classifier probs, kNN scores, labels) per set. Ties keep the first grid point, so
    the classifier alone (beta 0) wins unless the kNN scores really help.
    """
    probs = concat([p for p, _, _ in parts])
    scores = concat([s for _, s, _ in parts])
    labels = np.concatenate([y for _, _, y in parts])
    best = (1.0, 0.0, -1.0)
    for beta in BETAS:
        for alpha in ALPHAS:
            if alpha == 0 and beta == 0:
                continue
            g = score_all(fuse(probs, scores, alpha, beta), labels).get("gap", float("nan"))
            if np.isfinite(g) and g > best[2] + 1e-12:
                best = (alpha, beta, g)
    return best


def knn_run(info: RunInfo, cfg: PredictConfig, data_dir: Path, num_classes: int) -> list[Path]:
    """kNN-fused prediction files of one run (``oof_knn.npz`` and ``<manifest>_knn.npz``)."""
    run_dir = info.run_dir
    g_ids, g_emb = read_embeddings(run_dir, GALLERY)
    train = schema.read_manifest(data_dir, GALLERY).set_index("id")
    oof = load_predictions(run_dir / schema.RUN_OOF)
    check_fresh(run_dir / schema.RUN_OOF, oof["meta"])  # fused with embeddings of the current best.pt
    # a fold's gallery is its training rows: its held-out rows (the OOF queries) are left out
    held_out = set(oof["ids"]) if info.fold >= 0 else set()
    in_gallery = ~np.isin(g_ids, list(held_out))
    # the whole memory map when no row is held out (the holdout recipe), else the fold's training
    # rows, in the stored float16 (knn converts chunk by chunk): 1.58M x 512 is 1.6 GB, not 3.2
    gallery = g_emb if in_gallery.all() else np.asarray(g_emb[in_gallery])
    g_labels = train.loc[g_ids[in_gallery], "label"].to_numpy()
    setting = KnnSetting(cfg.knn_k, cfg.knn_power, cfg.knn_alpha, cfg.knn_beta)
    queries: dict[str, tuple[dict, tuple]] = {}  # manifest -> (plain predictions, (knn scores, top-1 sims))
    q_ids, q_emb = (g_ids, g_emb) if info.fold >= 0 else read_embeddings(run_dir, "val")  # holdout: val rows
    pos = pd.Series(np.arange(len(q_ids)), index=q_ids)[oof["ids"]].to_numpy()
    q = np.asarray(q_emb[pos], dtype=np.float32)
    sparse = isinstance(oof["probs"], TopK)
    queries["oof"] = (oof, _knn_scores(q, gallery, g_labels, num_classes, setting, cfg.knn_compute_dtype, sparse))
    for m in QUERY_MANIFESTS:
        plain = run_dir / schema.pred_file(m)
        if not (plain.is_file() and emb_paths(run_dir, m)[0].is_file()):
            continue
        preds = load_predictions(plain)
        check_fresh(plain, preds["meta"])
        ids, emb = read_embeddings(run_dir, m)
        pos = pd.Series(np.arange(len(ids)), index=ids)[preds["ids"]].to_numpy()
        q = np.asarray(emb[pos], dtype=np.float32)
        queries[m] = (preds, _knn_scores(q, gallery, g_labels, num_classes, setting, cfg.knn_compute_dtype, sparse))
    tuned = None
    if cfg.knn_tune:
        tuning = [(p["probs"], s[0], p["labels"]) for m, (p, s) in queries.items() if m in ("oof", schema.NONLANDMARK)]
        if tuning:
            setting.alpha, setting.beta, gap = tune_fusion(tuning)
            tuned = {"on": [m for m in queries if m in ("oof", schema.NONLANDMARK)], "gap": gap}
            log.info("%s: kNN fusion alpha %.1f beta %.1f (GAP %.4f on OOF + pool)", info.tag, setting.alpha,
                     setting.beta, gap)  # fmt: skip
    written = []
    for m, (preds, (scores, nearest)) in queries.items():
        save_nearest(run_dir / nearest_file(m), preds["ids"], nearest)
        path = run_dir / schema.pred_file(m, source="knn")
        meta = {**preds["meta"], "source": "knn", "knn": {**setting.__dict__, "tuned": tuned,
                "gallery": int(in_gallery.sum())}, WEIGHTS_KEY: weights_sha(info.weights)}  # fmt: skip
        save_predictions(path, preds["ids"], fuse(preds["probs"], scores, setting.alpha, setting.beta),
                         preds["labels"], meta, cfg.probs_dtype)  # fmt: skip
        written.append(path)
    return written


# ------------------------------------------------------------------------------ the stage


def run_embed(cfg: PredictConfig) -> list[Path]:
    """Embeddings of every finished run, then the kNN-fused prediction files; returns them."""
    data_dir = cfg.data_dir
    label_map = schema.read_label_map(data_dir)
    current = read_prep_identity(data_dir)
    runs = finished_runs(cfg.runs_root, cfg.experiment, cfg.models or None, cfg.folds or None)
    infos = check_runs(runs, data_dir, label_map, data_dir / schema.LABEL_MAP, current, TTA())
    manifests = [GALLERY] + [m for m in QUERY_MANIFESTS if schema.manifest_path(data_dir, m).is_file()]
    if cfg.manifests:
        manifests = [GALLERY] + [m for m in cfg.manifests if m != GALLERY]
    if any(i.fold < 0 for i in infos) and "val" not in manifests:
        manifests.append("val")
    accelerator = make_accelerator(cfg)
    written: list[Path] = []
    with contextlib.ExitStack() as locks:
        lock_folders(locks, [i.run_dir for i in infos], accelerator, "embed")
        embed_runs(infos, manifests, cfg, data_dir, accelerator)
        if cfg.knn and accelerator.is_main_process:
            for info in infos:
                written += knn_run(info, cfg, data_dir, len(label_map))
        accelerator.wait_for_everyone()
    return written


def main(cfg: PredictConfig) -> int:
    written = run_embed(cfg)
    print(f"embeddings and {len(written)} kNN prediction files written (ensemble/submit with knn=true)")
    return 0
