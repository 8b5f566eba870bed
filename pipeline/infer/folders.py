"""Prediction without prep: your own photos (``images=DIR``) and the competition's test folder
(``test_root=DIR``, with or without an exported ``bundle=DIR``), through the same loop as
:func:`pipeline.infer.predict.run_predict`. Images are decoded and resized exactly as prep does it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common import schema
from common.errors import DataError
from common.io import write_csv, write_json, write_yaml
from pipeline.config_stages import PredictConfig
from pipeline.infer.core import Job, check_runs, iter_predictions, lock_folders, make_accelerator, prediction_meta
from pipeline.infer.tta import TTA
from pipeline.runs.load import RunInfo
from pipeline.runs.predfile import save_predictions
from pipeline.runs.prep import PrepIdentity, read_json, read_prep_identity
from pipeline.runs.scan import clear_done, finished_runs, mark_done

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


# ---------------------------------------------------------------- images without prep


def list_images(folder: str | Path) -> pd.DataFrame:
    """``id, src`` of every image file under ``folder`` (recursive, sorted); id = file stem, unique."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    srcs = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not srcs:
        raise DataError(f"{folder}: no image files ({', '.join(IMAGE_EXTS)})")
    seen: dict[str, Path] = {}
    for p in srcs:
        if p.stem in seen:
            raise DataError(f"{folder}: two images with the id '{p.stem}': {seen[p.stem]} and {p}")
        seen[p.stem] = p
    return pd.DataFrame({"id": [p.stem for p in srcs], "src": [str(p) for p in srcs]})


def cache_like_prep(
    items: pd.DataFrame, out_dir: Path, prep: PrepIdentity, workers: int = 2, progress: bool = False
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Decode and resize ``items`` (id, src) exactly as prep does, into a file cache in ``out_dir``.

    Same opener (JPEG draft at the prep size), same resize, same cached format and quality: the
    model sees the pixels a prepped manifest would give. Returns the manifest of the readable
    images (label UNLABELLED) and ``{id: failure reason}`` of the others.
    """
    from data_prep.images import build_cache, draft_open

    size, mode, fmt, quality = prep.decode_settings()
    done, failed = build_cache(
        zip(items["id"], items["src"]),
        out_dir,
        functools.partial(draft_open, size=size),
        size,
        mode,
        quality,
        workers,
        progress and sys.stderr.isatty(),
        fmt=fmt,
    )
    ok = items[items["id"].isin(done)]
    rows = pd.DataFrame(
        {
            "id": ok["id"].to_numpy(),
            "image": ok["id"].map(done).to_numpy(),
            "label": schema.UNLABELLED,
            "landmark_id": -1,
        }
    )
    return rows.reset_index(drop=True), failed


def decode_identity(info: RunInfo, fallback: PrepIdentity | None) -> PrepIdentity:
    """How to decode images for a run: what it recorded, completed by ``fallback`` (the data set's
    or bundle's identity, which also knows the cache format and JPEG quality)."""
    if fallback is None:
        return info.prep
    if not info.prep.recorded:
        return fallback
    known = {k: v for k, v in info.prep.as_dict().items() if v is not None}
    return PrepIdentity.from_dict({**fallback.as_dict(), **known})


@dataclass
class RunSource:
    """Where runs, their label map and prep identity come from: a runs folder or an export bundle."""

    runs: list[Path]
    label_map: pd.DataFrame
    label_map_path: Path
    prep: PrepIdentity | None  # the identity the images are decoded with (None: each run's own)
    dataset: str
    experiment: str
    data_dir: Path | None  # the prepped data folder (None for a bundle)


def run_source(cfg: PredictConfig) -> RunSource:
    """The runs of ``cfg.bundle`` (an export bundle) or of ``<runs_root>/<experiment>``."""
    if cfg.bundle:
        from pipeline.runs.bundle import read_bundle

        b = read_bundle(cfg.bundle)
        return RunSource(
            finished_runs(b.runs_root, b.experiment, cfg.models or None, cfg.folds or None),
            b.label_map,
            b.root / schema.LABEL_MAP,
            b.prep,
            b.dataset,
            b.experiment,
            None,
        )
    data_dir = cfg.data_dir
    return RunSource(
        finished_runs(cfg.runs_root, cfg.experiment, cfg.models or None, cfg.folds or None),
        schema.read_label_map(data_dir),
        data_dir / schema.LABEL_MAP,
        read_prep_identity(data_dir),
        cfg.dataset,
        cfg.experiment,
        data_dir,
    )


def _shared_tempdir(accelerator, parent: Path, prefix: str) -> Path:
    """A temporary folder made by the main process and known to every process."""
    from accelerate.utils import broadcast_object_list

    parent.mkdir(parents=True, exist_ok=True)
    box = [tempfile.mkdtemp(prefix=prefix, dir=parent) if accelerator.is_main_process else None]
    if accelerator.num_processes > 1:
        broadcast_object_list(box)
    return Path(box[0])


def topk_table(
    ids: pd.Series, probs: np.ndarray, label_map: pd.DataFrame, k: int, status: pd.Series | None = None
) -> pd.DataFrame:
    """``id`` + ``landmark_id_r, name_r, confidence_r`` for r = 1..k (original landmark ids)."""
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    lids = label_map["landmark_id"].to_numpy()
    names = label_map["name"].fillna("").astype(str).to_numpy() if "name" in label_map else None
    # names that only repeat the id (generated data sets) add nothing
    has_names = names is not None and (names != "").any() and (names != lids.astype(str)).any()
    out = pd.DataFrame({"id": ids.to_numpy()})
    if status is not None:
        out["status"] = status.to_numpy()
    for r in range(k):
        out[f"landmark_id_{r + 1}"] = lids[top[:, r]]
        if has_names:
            out[f"name_{r + 1}"] = names[top[:, r]]
        out[f"confidence_{r + 1}"] = np.round(probs[np.arange(len(probs)), top[:, r]], 6)
    return out


def run_shares(infos: list[RunInfo]) -> dict[Path, float]:
    """Each run's weight in the ensemble of your photos: the mean over a model's folds, then the
    mean over models, as ``submit`` (method mean) does: a model with 5 folds does not outvote one with 1."""
    folds: dict[str, int] = {}
    for info in infos:
        folds[info.model_name] = folds.get(info.model_name, 0) + 1
    return {i.run_dir: 1.0 / (folds[i.model_name] * len(folds)) for i in infos}


def predict_images(cfg: PredictConfig) -> Path:
    """Your own photos (``images=DIR``, no prep) -> a CSV of the top-k landmarks per image.

    Every finished run predicts (one at a time); the CSV holds the ensemble of their probabilities
    like ``submit``'s: the mean over each model's folds, then over the models (:func:`run_shares`).
    Unreadable files get a row with their failure reason as ``status`` and no landmarks.
    """
    items = list_images(cfg.images)
    src = run_source(cfg)
    tta = TTA(cfg.tta_flip, tuple(cfg.tta_scales))
    infos = check_runs(src.runs, src.data_dir, src.label_map, src.label_map_path, None, tta)
    folder = Path(cfg.images)
    # beside the runs; for a bundle (read-only on Kaggle) in the work folder
    default_dir = Path(cfg.work_dir) if cfg.bundle else Path(cfg.runs_root) / src.experiment
    out = Path(cfg.out) if cfg.out else default_dir / f"predictions_{folder.resolve().name}.csv"
    if out.is_dir():
        raise DataError(f"predict: out={out} is a folder; give the CSV's file name")
    accelerator = make_accelerator(cfg)
    groups: dict[tuple, list[RunInfo]] = {}  # runs that see the same pixels share one decode
    for info in infos:
        groups.setdefault(decode_identity(info, src.prep).decode_settings(), []).append(info)
    total = np.zeros((len(items), len(src.label_map)), dtype=np.float64)
    share = run_shares(infos)
    failed: dict[str, str] = {}
    tmp = _shared_tempdir(accelerator, out.parent, ".predict_images_")
    try:
        for n, members in enumerate(groups.values()):
            cache_dir = tmp / str(n)
            if accelerator.is_main_process:
                prep = decode_identity(members[0], src.prep)
                rows, failed = cache_like_prep(items, cache_dir, prep, cfg.workers, cfg.progress)
                write_csv(cache_dir / "images.csv", rows)
            accelerator.wait_for_everyone()
            rows = pd.read_csv(cache_dir / "images.csv", dtype={"id": str, "image": str})
            if rows.empty:
                raise DataError(f"{folder}: none of the {len(items)} images could be read")
            pos = pd.Index(items["id"]).get_indexer(rows["id"])
            jobs = {i.run_dir: [Job("images", cache_dir, rows)] for i in members}
            for info, _, res in iter_predictions(members, jobs, cfg, accelerator, tta):
                total[pos] += share[info.run_dir] * res["probs"]
    finally:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
    probs = total
    status = items["id"].map(lambda i: failed.get(i, "ok"))
    table = topk_table(items["id"], probs, src.label_map, cfg.top_k, status)
    table.insert(1, "file", [str(Path(s).relative_to(folder)) for s in items["src"]])
    bad = (status != "ok").to_numpy()
    for c in table.columns[3:]:  # no prediction for an unreadable image
        table[c] = table[c].astype(object).where(~bad, "")
    if accelerator.is_main_process:
        write_csv(out, table)
        log.info("%s: %d images (%d unreadable), %d runs", out, len(items), int(bad.sum()), len(infos))
    return out


# ---------------------------------------------------------------- the competition folder without prep


def predict_competition(cfg: PredictConfig) -> list[Path]:
    """The competition folder read directly (``test_root``), predicted by a bundle's or an
    experiment's runs, written as a workspace in the standard layout so ``submit`` runs on it:

    ``<work_dir>/data/<dataset>/``: label_map.csv, competition.csv (readable images),
    competition_order.csv (every id in submission order, ``status`` ok or why not), the image
    cache, prep_report.json (the fingerprint of the prep the runs were trained on: the images
    are decoded like that prep); ``<work_dir>/runs/<experiment>/<model>/fold<k>/``: config.yaml,
    competition.npz, DONE.
    """
    from data_prep.competition import read_competition_images

    src = run_source(cfg)
    if src.prep is None or src.prep.fingerprint is None:
        raise DataError(f"{src.label_map_path.parent}: no prep fingerprint ({schema.PREP_REPORT}); run prep first")
    items = read_competition_images(cfg.test_root, cfg.test_format)
    tta = TTA(cfg.tta_flip, tuple(cfg.tta_scales))
    infos = check_runs(src.runs, src.data_dir, src.label_map, src.label_map_path, src.prep, tta)
    work = Path(cfg.work_dir)
    wdata, wruns = work / "data" / src.dataset, work / "runs" / src.experiment
    check_workspace(wdata, [wruns / i.model_name / i.run_dir.name for i in infos])
    accelerator = make_accelerator(cfg)
    written: list[Path] = []
    with contextlib.ExitStack() as locks:
        lock_folders(locks, [work], accelerator, "predict test_root")
        if accelerator.is_main_process:
            written += _write_workspace(cfg, src, items, wdata)
        accelerator.wait_for_everyone()
        rows = schema.read_manifest(wdata, schema.COMPETITION) if _has_rows(wdata) else None
        if rows is None:
            raise DataError(f"{cfg.test_root}: none of the {len(items)} test images could be read")
        jobs = {i.run_dir: [Job(schema.COMPETITION, wdata, rows)] for i in infos}
        for info, _, out in iter_predictions(infos, jobs, cfg, accelerator, tta):
            run_out = wruns / info.model_name / info.run_dir.name
            path = run_out / schema.pred_file(schema.COMPETITION, tta.on)
            if accelerator.is_main_process:
                clear_done(run_out)
                write_yaml(run_out / schema.RUN_CONFIG, {**info.saved, "prep": src.prep.as_dict()})
                meta = prediction_meta(info, schema.COMPETITION, tta, src.prep, accelerator, experiment=src.experiment)
                save_predictions(path, rows["id"].to_numpy(), out["probs"], out["labels"], meta, cfg.probs_dtype,
                                 cfg.pred_topk)  # fmt: skip
                mark_done(run_out)
            written.append(path)
        accelerator.wait_for_everyone()
    return written


def _write_workspace(cfg: PredictConfig, src: RunSource, items: pd.DataFrame, wdata: Path) -> list[Path]:
    """The data half of a test_root workspace: the images cached like the runs' prep, the label map,
    the competition order (every id, ``status``), the manifest of the readable images, the prep report."""
    written: list[Path] = []
    shutil.rmtree(wdata / "images", ignore_errors=True)  # never mix images of another test folder
    rows, failed = cache_like_prep(items, wdata, src.prep, cfg.workers, cfg.progress)
    status = items["id"].map(lambda i: failed.get(i, "ok"))
    write_csv(wdata / schema.LABEL_MAP, src.label_map)
    write_csv(wdata / schema.COMPETITION_ORDER, pd.DataFrame({"id": items["id"], "status": status}))
    write_csv(schema.manifest_path(wdata, schema.COMPETITION), rows[schema.MANIFEST_COLUMNS])
    write_yaml(wdata / schema.PREP_CONFIG, {"image_size": src.prep.image_size, "resize_mode": src.prep.resize_mode})
    write_json(
        wdata / schema.PREP_REPORT,
        {
            "fingerprint": src.prep.fingerprint,
            WORKSPACE: True,
            "source": f"competition folder {cfg.test_root} decoded like prep {src.prep.fingerprint}"
            + (f" (bundle {cfg.bundle})" if cfg.bundle else ""),
            "prep": src.prep.as_dict(),
            "competition": {
                "ids": len(items),
                "readable": len(rows),
                "skipped": {k: int(v) for k, v in pd.Series(failed, dtype=object).value_counts().items()},
            },
        },
    )
    written += [wdata / schema.COMPETITION_ORDER, schema.manifest_path(wdata, schema.COMPETITION)]
    if failed:
        log.warning("%d of %d test images unreadable: empty answers (%s)", len(failed), len(items), wdata)
    return written


WORKSPACE = "workspace"  # prep_report.json key marking a data folder written by predict test_root=...


def check_workspace(wdata: Path, run_outs: list[Path]) -> None:
    """Refuse to write a workspace over a prepped data set or a trained run folder."""
    report = wdata / schema.PREP_REPORT
    if wdata.is_dir() and any(wdata.iterdir()) and not read_json(report).get(WORKSPACE):
        raise DataError(f"{wdata} holds a prepped data set, not a predict workspace: choose another work_dir")
    for d in run_outs:
        if (d / schema.RUN_BEST).is_file() or (d / schema.RUN_LAST).is_file():
            raise DataError(f"{d} is a trained run folder, not a predict workspace: choose another work_dir")


def _has_rows(data_dir: Path) -> bool:
    path = schema.manifest_path(data_dir, schema.COMPETITION)
    return path.is_file() and len(pd.read_csv(path, usecols=["id"])) > 0


def submit_command(cfg: PredictConfig, dataset: str, experiment: str) -> str:
    work = Path(cfg.work_dir)
    return (
        f"python -m pipeline submit dataset={dataset} experiment={experiment} "
        f"data_root={work / 'data'} runs_root={work / 'runs'} name=submission"
    )
