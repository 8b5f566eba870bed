"""Finished run folders: what prep made their data, their recipe, their weights, and the checks.

A run folder (``runs/<experiment>/<model>/fold<k>/``, see :mod:`common.schema`) is read without
its weights (:class:`RunInfo`: recipe, prep identity, where the weights are) or loaded with them
(:class:`LoadedRun`). :func:`check_run` refuses a run of another label map or prep, and weights
that do not fit the recipe, with one line each. Used by predict, embed and export.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import yaml

from common import schema
from common.config import build_config
from common.errors import DataError, PipelineError
from pipeline.config import TrainConfig
from pipeline.tta import TTA, check_tta

log = logging.getLogger(__name__)

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


def read_json(path: Path) -> dict:
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
    report = read_json(data_dir / schema.PREP_REPORT)
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
