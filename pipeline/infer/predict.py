"""Prediction stage: finished runs -> ``<run>/<manifest>[_tta].npz`` for any manifest, with TTA.

``python -m pipeline predict`` loads every finished (model, fold) of ``runs/<experiment>/``
(a ``DONE`` marker; ``models``/``folds`` filter them), ONE model in memory at a time, and
predicts each requested manifest of ``data/<dataset>/`` in manifest order under Accelerate
(CPU, one GPU or several processes: ``gather_for_metrics`` gives every row exactly once).
Files are written with :func:`pipeline.runs.predfile.save_predictions` (float16 by default) and carry
where they come from in ``meta`` (model, fold, manifest, TTA, prep fingerprint, label map).

Two other inputs go through the same loop without prep (:mod:`pipeline.infer.folders`):
``images=DIR`` (your own photos: a CSV of the top-k landmark ids per image) and ``test_root=DIR``
(the competition folder, with or without ``bundle=DIR``, see :mod:`pipeline.submit.export`). Run folders
are read and checked by :mod:`pipeline.runs.load`; the views of TTA are :mod:`pipeline.infer.tta`.

Nothing is written when a check fails (checked for every run before the first prediction):
a finished run without readable weights, weights that do not fit the recipe, a model of
another label map, or a manifest from another prep than the one the run was trained on.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from common import schema
from common.errors import DataError
from pipeline.config_stages import PredictConfig
from pipeline.data.datasets import fold_rows
from pipeline.infer.core import (
    Job,
    check_runs,
    iter_predictions,
    lock_folders,
    make_accelerator,
    prediction_meta,
    run_cache,
)
from pipeline.infer.tta import TTA
from pipeline.runs.predfile import output_errors, save_predictions
from pipeline.runs.prep import read_prep_identity
from pipeline.runs.scan import finished_runs

log = logging.getLogger(__name__)

OOF = "oof"  # pseudo-manifest: the fold's own validation rows (needs the train manifest and fold file)
DEFAULT_MANIFESTS = (schema.COMPETITION, schema.NONLANDMARK, "test")


# ---------------------------------------------------------------- TTA and the loop


# ---------------------------------------------------------------- the stage


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


def run_predict(cfg: PredictConfig) -> list[Path]:
    """Predict the requested manifests with every finished run; returns the files written."""
    if cfg.images or cfg.test_root:  # no prep: a folder of images (pipeline/predict_folders.py)
        from pipeline.infer.folders import predict_competition, predict_images

        with output_errors("predict"):  # a read-only out= or work_dir: one line
            return [predict_images(cfg)] if cfg.images else predict_competition(cfg)
    data_dir = cfg.data_dir
    label_map = schema.read_label_map(data_dir)
    current = read_prep_identity(data_dir)
    test_fp = schema.prep_fingerprint(data_dir, "test_fingerprint")  # recorded in competition predictions
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
    with contextlib.ExitStack() as locks, output_errors("predict"):
        lock_folders(locks, [i.run_dir for i in infos], accelerator, "predict")
        for info, job, out in iter_predictions(infos, jobs, cfg, accelerator, tta):
            path = info.run_dir / schema.pred_file(job.manifest, tta.on)
            if accelerator.is_main_process:
                test = {"test_fingerprint": test_fp} if job.manifest == schema.COMPETITION else {}
                meta = prediction_meta(info, job.manifest, tta, current, accelerator, experiment=cfg.experiment, **test)
                save_predictions(path, job.rows["id"].to_numpy(), out["probs"], out["labels"], meta, cfg.probs_dtype,
                                 cfg.pred_topk)  # fmt: skip
                log.debug("%s: %s (%d rows)", info.tag, path.name, len(job.rows))  # main() prints each file once
            written.append(path)
        accelerator.wait_for_everyone()
    return written


def main(cfg: PredictConfig) -> int:
    """CLI face: predict, then one line per file written (main process)."""
    from accelerate import PartialState

    from pipeline.infer.folders import submit_command

    paths = run_predict(cfg)
    if PartialState().is_main_process:
        for p in paths:
            print(f"wrote {p}")
        if cfg.test_root:
            src_ds, src_exp = cfg.dataset, cfg.experiment
            if cfg.bundle:
                from pipeline.runs.bundle import read_bundle

                b = read_bundle(cfg.bundle)
                src_ds, src_exp = b.dataset, b.experiment
            print(f"next: {submit_command(cfg, src_ds, src_exp)}")
    return 0
