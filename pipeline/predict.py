"""Prediction stage: finished runs -> ``<run>/<manifest>[_tta].npz`` for any manifest, with TTA.

``python -m pipeline predict`` loads every finished (model, fold) of ``runs/<experiment>/``
(a ``DONE`` marker; ``models``/``folds`` filter them), ONE model in memory at a time, and
predicts each requested manifest of ``data/<dataset>/`` in manifest order under Accelerate
(CPU, one GPU or several processes: ``gather_for_metrics`` gives every row exactly once).
Files are written with :func:`pipeline.predfile.save_predictions` (float16 by default) and carry
where they come from in ``meta`` (model, fold, manifest, TTA, prep fingerprint, label map).

Three other inputs, same loop:

* ``images=DIR``: your own photos (no prep): decoded and resized exactly as prep does it
  (JPEG draft, resize, the cache's JPEG/PNG round trip), then the eval crop; writes a CSV of
  the top-k original landmark ids per image, the mean of every finished run's probabilities.
* ``test_root=DIR`` (with or without ``bundle=DIR``, see :mod:`pipeline.export`): the
  competition folder read directly; writes a workspace in the standard layout for ``submit``.

Nothing is written when a check fails (checked for every run before the first prediction):
a finished run without readable weights, weights that do not fit the recipe, a model of
another label map, or a manifest from another prep than the one the run was trained on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from accelerate import Accelerator
from torchvision.transforms.v2 import functional as TF

from common import schema
from common.config import build_config
from common.errors import ConfigError, DataError, PipelineError
from common.io import write_csv, write_json, write_text, write_yaml
from common.lock import folder_lock
from pipeline.config import PredictConfig, TrainConfig
from pipeline.data import build_dataset, fold_rows, make_loader, normalize
from pipeline.predfile import save_predictions

log = logging.getLogger(__name__)

OOF = "oof"  # pseudo-manifest: the fold's own validation rows (needs the train manifest and fold file)
DEFAULT_MANIFESTS = (schema.COMPETITION, schema.NONLANDMARK, "test")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DEFAULT_CACHE_FORMAT, DEFAULT_JPEG_QUALITY = "jpeg", 92  # PrepConfig's defaults


# ---------------------------------------------------------------- prep identity


@dataclass
class PrepIdentity:
    """What a model's input pixels depend on: the prep run and how it made the cached images.

    ``recorded`` is False when the run folder has no ``prep:`` block (runs of older versions)
    and the identity was read from the current data folder instead: then it cannot tell a
    changed prep apart, and the prep check only warns.
    """

    fingerprint: str | None = None
    label_map_sha: str | None = None
    image_size: int | None = None
    resize_mode: str | None = None
    cache_format: str | None = None
    jpeg_quality: int | None = None
    recorded: bool = True

    def as_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "recorded"}

    @classmethod
    def from_dict(cls, d: dict, recorded: bool = True) -> PrepIdentity:
        names = {f.name for f in dataclasses.fields(cls)} - {"recorded"}
        return cls(**{k: v for k, v in d.items() if k in names}, recorded=recorded)

    def decode_settings(self) -> tuple[int, str, str, int]:
        """(image_size, resize_mode, cache format, JPEG quality) to reproduce prep's cached pixels."""
        if self.image_size is None or self.resize_mode is None:
            raise DataError("the prep identity has no image_size/resize_mode: cannot decode images like prep")
        fmt = self.cache_format or DEFAULT_CACHE_FORMAT
        quality = int(self.jpeg_quality) if self.jpeg_quality is not None else DEFAULT_JPEG_QUALITY
        return int(self.image_size), str(self.resize_mode), fmt, quality


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _read_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def read_prep_identity(data_dir: str | Path) -> PrepIdentity:
    """The identity of the prep that wrote ``data_dir`` (report, config and label map)."""
    data_dir = Path(data_dir)
    report = _read_json(data_dir / schema.PREP_REPORT)
    prep_cfg = _read_yaml(data_dir / schema.PREP_CONFIG)
    cache = report.get("cache") or {}
    sha = None
    if (data_dir / schema.LABEL_MAP).is_file():
        sha = schema.label_map_sha(schema.read_label_map(data_dir))
    return PrepIdentity(
        fingerprint=report.get("fingerprint"),
        label_map_sha=sha,
        image_size=prep_cfg.get("image_size", cache.get("size")),
        resize_mode=prep_cfg.get("resize_mode", cache.get("mode")),
        cache_format=cache.get("format"),
        jpeg_quality=cache.get("quality"),
        recorded=True,
    )


def describe_prep_change(old: PrepIdentity, new: PrepIdentity) -> str:
    """``image_size 36 -> 40; label map ...`` or what else can explain a changed fingerprint."""
    names = {
        "image_size": "image_size",
        "resize_mode": "resize_mode",
        "label_map_sha": "label map",
        "cache_format": "cache format",
    }
    diffs = [
        f"{label} {getattr(old, key)} -> {getattr(new, key)}"
        for key, label in names.items()
        if getattr(old, key) is not None and getattr(new, key) is not None and getattr(old, key) != getattr(new, key)
    ]
    if diffs:
        return "; ".join(diffs)
    return "same image size, resize mode and label map: the source, selection or splits changed"


# ---------------------------------------------------------------- run folders


@dataclass
class RunInfo:
    """A finished run folder read without its weights: recipe, identity, where the weights are."""

    run_dir: Path
    cfg: TrainConfig
    model_name: str
    fold: int
    num_classes: int
    prep: PrepIdentity
    fused: bool
    saved: dict = field(repr=False)  # config.yaml as written by training (or export)

    @property
    def weights(self) -> Path:
        return self.run_dir / schema.RUN_BEST

    @property
    def tag(self) -> str:
        return f"{self.model_name}/{self.run_dir.name}"


@dataclass
class LoadedRun(RunInfo):
    """A run with its model built, weights loaded, in eval mode."""

    model: torch.nn.Module = field(default=None, repr=False)


def finished_runs(
    runs_root: str | Path, experiment: str, models: list[str] | None = None, folds: list[int] | None = None
) -> list[Path]:
    """Finished run folders (``DONE`` marker) of an experiment, by model then fold.

    A model named in ``models`` without any finished fold is an error (asked for, not there);
    unfinished folds found without a filter are logged and skipped.
    """
    exp = Path(runs_root) / experiment
    if not exp.is_dir():
        raise DataError(f"no runs of experiment '{experiment}' in {runs_root} (train first: {exp} not found)")
    names = list(models) if models else sorted(p.name for p in exp.iterdir() if p.is_dir() and _fold_dirs(p))
    out: list[Path] = []
    for name in names:
        dirs = _fold_dirs(exp / name)
        if folds:
            dirs = [d for d in dirs if _fold_of(d) in set(folds)]
        done = [d for d in dirs if (d / schema.RUN_DONE).is_file()]
        unfinished = sorted(d.name for d in dirs if d not in done)
        if models and not done:
            want = f" in folds {list(folds)}" if folds else ""
            present = sorted(p.name for p in exp.iterdir() if p.is_dir() and _fold_dirs(p))
            raise DataError(
                f"{exp}: model '{name}' has no finished fold{want} (runs of: {', '.join(present) or 'none'})"
            )
        if unfinished:
            log.warning("%s: skipping unfinished run(s) %s (no %s marker)", exp / name, unfinished, schema.RUN_DONE)
        out += done
    if not out:
        want = f" for models {list(models)}" if models else ""
        want += f" in folds {list(folds)}" if folds else ""
        raise DataError(f"{exp}: no finished runs{want} (a finished fold has a {schema.RUN_DONE} marker)")
    return out


def _fold_of(d: Path) -> int | None:
    if d.name == "holdout":
        return -1
    if d.name.startswith("fold") and d.name[4:].isdigit():
        return int(d.name[4:])
    return None


def _fold_dirs(model_dir: Path) -> list[Path]:
    dirs = [d for d in model_dir.iterdir() if d.is_dir() and _fold_of(d) is not None] if model_dir.is_dir() else []
    return sorted(dirs, key=_fold_of)


def train_config_from_run(saved: dict, source: str = "run config") -> TrainConfig:
    """A run's saved config.yaml back into a :class:`TrainConfig`: known keys kept, extras ignored,
    keys missing in older files take the defaults."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return build_config(TrainConfig, {k: v for k, v in saved.items() if k in known}, source)


def read_run(run_dir: str | Path, data_dir: str | Path | None = None) -> RunInfo:
    """Read a run folder's ``config.yaml`` (no weights). ``data_dir`` supplies the prep identity
    of runs that did not record one (``recorded=False``)."""
    run_dir = Path(run_dir)
    path = run_dir / schema.RUN_CONFIG
    if not path.is_file():
        raise DataError(f"{run_dir}: no {schema.RUN_CONFIG} (the recipe of the run); retrain this fold")
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(saved, dict):
        raise DataError(f"{path}: expected a mapping of config keys")
    for key in ("model", "num_classes"):
        if key not in saved:
            raise DataError(f"{path}: key '{key}' missing (not a run folder written by training?)")
    cfg = train_config_from_run(saved, str(path))
    fold = saved.get("fold", _fold_of(run_dir))
    if isinstance(saved.get("prep"), dict):
        prep = PrepIdentity.from_dict(saved["prep"])
    elif data_dir is not None:
        prep = read_prep_identity(data_dir)
        prep.recorded = False
    else:
        prep = PrepIdentity(recorded=False)
    return RunInfo(
        run_dir=run_dir,
        cfg=cfg,
        model_name=str(saved["model"]),
        fold=int(fold),
        num_classes=int(saved["num_classes"]),
        prep=prep,
        fused=bool(saved.get("fused", False)),
        saved=saved,
    )


def load_weights(path: str | Path) -> dict:
    """The ``model`` state dict of a checkpoint; one :class:`DataError` line if absent or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path.parent}: finished ({schema.RUN_DONE}) but {path.name} is missing; retrain this fold")
    try:  # mmap: checking a large checkpoint does not read it all
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception:  # noqa: BLE001 - legacy (non-zip) files cannot be mapped; the plain load says why
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any failure to unpickle is one user-facing line
            reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0].split('. ')[0]}"
            raise DataError(f"{path}: unreadable weights ({reason}); retrain this fold") from None
    sd = state.get("model") if isinstance(state, dict) else None
    if not isinstance(sd, dict) or not sd:
        raise DataError(f"{path}: no 'model' weights in the checkpoint; retrain this fold")
    return sd


def build_run_model(info: RunInfo, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The network the run trained (fused when the weights are), with fresh weights, in eval mode.

    Pretrained weights and ``init_from`` are never loaded: the run's own weights replace them.
    """
    from pipeline.train import build_model

    cfg = dataclasses.replace(info.cfg, pretrained="false", init_from=None)
    # dynamic margins are a buffer of the checkpoint (and unused in eval): any counts build the net
    counts = [1] * info.num_classes if cfg.dynamic_margin else None
    with torch.device(device):
        model = build_model(cfg, info.model_name, info.num_classes, class_counts=counts)
        model.eval()
        if info.fused:
            if not hasattr(model, "reparameterize"):
                raise DataError(f"{info.run_dir}: fused weights, but '{info.model_name}' has no reparameterize()")
            with torch.no_grad():
                model.reparameterize()
    return model


def check_state_dict(model: torch.nn.Module, sd: dict, where: str | Path) -> None:
    """One error line naming the first key whose presence or shape differs from the recipe's network."""
    expected = model.state_dict()
    for key, t in expected.items():
        if key not in sd:
            raise DataError(f"{where}: weights do not fit the recipe: key '{key}' missing in the checkpoint")
        have, need = tuple(getattr(sd[key], "shape", ())), tuple(getattr(t, "shape", ()))
        if have != need:
            raise DataError(
                f"{where}: weights do not fit the recipe: '{key}' has shape {have}, the network needs {need}"
            )
    extra = [k for k in sd if k not in expected]
    if extra:
        raise DataError(f"{where}: weights do not fit the recipe: unexpected key '{extra[0]}' in the checkpoint")


def _shape_model(info: RunInfo) -> torch.nn.Module:
    """The recipe's network for shape checks: on the meta device (no memory) when it builds there."""
    try:
        return build_run_model(info, "meta")
    except PipelineError:
        raise
    except Exception:  # noqa: BLE001 - some builders initialise with ops meta tensors lack
        return build_run_model(info, "cpu")


def check_run(
    info: RunInfo,
    label_map: pd.DataFrame,
    label_map_path: Path,
    current: PrepIdentity | None = None,
    tta: TTA | None = None,
) -> None:
    """The checks that keep a wrong prediction from being written (each one error line).

    Label map (number of classes, identity), prep (``current``: the data predicted; None = no
    prep-made manifest is read, e.g. your own photos), the weights (readable, the shape of the
    recipe's network), and the TTA sizes against the model's minimum input. Uses no model
    memory (a network on the meta device, memory-mapped weights).
    """
    sha = schema.label_map_sha(label_map)
    if info.num_classes != len(label_map) or (info.prep.label_map_sha and info.prep.label_map_sha != sha):
        raise DataError(
            f"{info.run_dir}: trained on another label map ({info.num_classes} classes, sha "
            f"{info.prep.label_map_sha or '?'}) than {label_map_path} ({len(label_map)} classes, sha {sha})"
        )
    if current is not None:
        if current.fingerprint is None:
            raise DataError(f"{label_map_path.parent}: no prep fingerprint ({schema.PREP_REPORT}); run prep first")
        if info.prep.recorded and info.prep.fingerprint != current.fingerprint:
            raise DataError(
                f"{info.run_dir}: trained on another prep of {label_map_path.parent} (fingerprint "
                f"{info.prep.fingerprint} -> {current.fingerprint}: {describe_prep_change(info.prep, current)}); "
                "predict the data it was trained on, or retrain"
            )
    sd = load_weights(info.weights)
    model = _shape_model(info)
    check_state_dict(model, sd, info.weights)
    if tta is not None:
        check_tta(tta, info, model)


def load_run(
    run_dir: str | Path | RunInfo, device: str | torch.device = "cpu", data_dir: str | Path | None = None
) -> LoadedRun:
    """A finished run ready to predict: its network with ``best.pt``'s weights (EMA ones when EMA
    was on), in eval mode on ``device``, plus its TrainConfig and recorded prep identity."""
    info = run_dir if isinstance(run_dir, RunInfo) else read_run(run_dir, data_dir)
    sd = load_weights(info.weights)
    model = build_run_model(info, "cpu")
    check_state_dict(model, sd, info.weights)
    model.load_state_dict(sd)
    del sd
    model.to(device).eval()
    return LoadedRun(**{f.name: getattr(info, f.name) for f in dataclasses.fields(RunInfo)}, model=model)


# ---------------------------------------------------------------- TTA and the loop


@dataclass(frozen=True)
class TTA:
    """Test-time augmentation: views averaged in probability space.

    A scale ``s`` shows the same field of view at ``s`` times the pixels: the cached image is
    resized by ``s`` and centre-cropped to ``round(s * img_size)`` (``s = 1`` is the plain eval
    crop). ``flip`` adds the mirrored image of every scale.
    """

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    @property
    def on(self) -> bool:
        return self.flip or tuple(self.scales) != (1.0,)

    @property
    def n_views(self) -> int:
        return len(self.scales) * (2 if self.flip else 1)

    def crop_sizes(self, img_size: int) -> list[int]:
        return [round(s * img_size) for s in self.scales]

    def as_dict(self) -> dict:
        return {"flip": self.flip, "scales": list(self.scales)}

    def views(self, images: torch.Tensor, img_size: int) -> Iterator[torch.Tensor]:
        """uint8 (N, 3, H, W) cached images -> each view's uint8 input batch."""
        h, w = images.shape[-2:]
        for s in self.scales:
            if s == 1.0:
                x = TF.center_crop(images, [img_size, img_size])
            else:
                x = TF.resize(images, [round(s * h), round(s * w)], antialias=True)
                x = TF.center_crop(x, [round(s * img_size)] * 2)
            yield x
            if self.flip:
                yield x.flip(-1)


def check_tta(tta: TTA, info: RunInfo, model: torch.nn.Module) -> None:
    """One error line when a TTA scale makes inputs smaller than the model accepts."""
    need = getattr(model, "min_size", None)
    if need is None:
        return
    for s, side in zip(tta.scales, tta.crop_sizes(info.cfg.img_size)):
        if side < need:
            raise ConfigError(
                f"predict: tta_scales {s} gives {side}x{side} inputs (img_size {info.cfg.img_size}) but "
                f"'{info.model_name}' needs at least {need}x{need}"
            )


def _softmax(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).float().softmax(dim=1)


@torch.no_grad()
def predict_loader(
    model: torch.nn.Module,
    loader,
    accelerator,
    img_size: int,
    tta: TTA = TTA(),
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


def _run_cache(info: RunInfo, data_dir: Path, rows: pd.DataFrame) -> str:
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
    if cfg.images:
        return [predict_images(cfg)]
    if cfg.test_root:
        return predict_competition(cfg)
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
            jobs[info.run_dir].append(Job(m, data_dir, r, _run_cache(info, data_dir, r)))
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
        from pipeline.export import read_bundle

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
    data_dir = Path(cfg.data_root) / cfg.dataset
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


def predict_images(cfg: PredictConfig) -> Path:
    """Your own photos (``images=DIR``, no prep) -> a CSV of the top-k landmarks per image.

    Every finished run predicts (one at a time); the CSV holds the mean of their probabilities.
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
    accelerator = make_accelerator(cfg)
    groups: dict[tuple, list[RunInfo]] = {}  # runs that see the same pixels share one decode
    for info in infos:
        groups.setdefault(decode_identity(info, src.prep).decode_settings(), []).append(info)
    total = np.zeros((len(items), len(src.label_map)), dtype=np.float64)
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
            for _, _, res in iter_predictions(members, jobs, cfg, accelerator, tta):
                total[pos] += res["probs"]
    finally:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
    probs = total / len(infos)
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
            shutil.rmtree(wdata / "images", ignore_errors=True)  # never mix images of another test folder
            rows, failed = cache_like_prep(items, wdata, src.prep, cfg.workers, cfg.progress)
            status = items["id"].map(lambda i: failed.get(i, "ok"))
            write_csv(wdata / schema.LABEL_MAP, src.label_map)
            write_csv(wdata / schema.COMPETITION_ORDER, pd.DataFrame({"id": items["id"], "status": status}))
            write_csv(schema.manifest_path(wdata, schema.COMPETITION), rows[schema.MANIFEST_COLUMNS])
            write_yaml(
                wdata / schema.PREP_CONFIG, {"image_size": src.prep.image_size, "resize_mode": src.prep.resize_mode}
            )
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
        accelerator.wait_for_everyone()
        rows = schema.read_manifest(wdata, schema.COMPETITION) if _has_rows(wdata) else None
        if rows is None:
            raise DataError(f"{cfg.test_root}: none of the {len(items)} test images could be read")
        jobs = {i.run_dir: [Job(schema.COMPETITION, wdata, rows)] for i in infos}
        for info, _, out in iter_predictions(infos, jobs, cfg, accelerator, tta):
            run_out = wruns / info.model_name / info.run_dir.name
            path = run_out / schema.pred_file(schema.COMPETITION, tta.on)
            if accelerator.is_main_process:
                (run_out / schema.RUN_DONE).unlink(missing_ok=True)
                write_yaml(run_out / schema.RUN_CONFIG, {**info.saved, "prep": src.prep.as_dict()})
                meta = prediction_meta(info, schema.COMPETITION, tta, src.prep, accelerator, experiment=src.experiment)
                save_predictions(path, rows["id"].to_numpy(), out["probs"], out["labels"], meta, cfg.probs_dtype)
                write_text(run_out / schema.RUN_DONE, "ok\n")
            written.append(path)
        accelerator.wait_for_everyone()
    return written


WORKSPACE = "workspace"  # prep_report.json key marking a data folder written by predict test_root=...


def check_workspace(wdata: Path, run_outs: list[Path]) -> None:
    """Refuse to write a workspace over a prepped data set or a trained run folder."""
    report = wdata / schema.PREP_REPORT
    if wdata.is_dir() and any(wdata.iterdir()) and not _read_json(report).get(WORKSPACE):
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


def main(cfg: PredictConfig) -> int:
    """CLI face: predict, then one line per file written (main process)."""
    from accelerate import PartialState

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
