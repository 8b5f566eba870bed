"""Finished run folders: what prep made their data, their recipe, their weights, and the checks.

A run folder (``runs/<experiment>/<model>/fold<k>/``, see :mod:`common.schema`) is read without
its weights (:class:`RunInfo`: recipe, prep identity, where the weights are) or loaded with them
(:class:`LoadedRun`). :func:`check_run` refuses a run of another label map or prep, and weights
that do not fit the recipe, with one line each. Used by predict, embed and export.
"""

from __future__ import annotations

import dataclasses
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
from pipeline.runs.checkpoints import load_weights
from pipeline.runs.prep import PrepIdentity, describe_prep_change, read_prep_identity
from pipeline.runs.scan import fold_of

log = logging.getLogger(__name__)



# ---------------------------------------------------------------- prep identity


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
    fold = saved.get("fold", fold_of(run_dir))
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


def build_run_model(info: RunInfo, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The network the run trained (fused when the weights are), with fresh weights, in eval mode.

    Pretrained weights and ``init_from`` are never loaded: the run's own weights replace them.
    """
    from pipeline.runs.model import build_model

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
) -> torch.nn.Module:
    """The checks that keep a wrong prediction from being written (each one error line).

    Label map (number of classes, identity), prep (``current``: the data predicted; None = no
    prep-made manifest is read, e.g. your own photos), the weights (readable, the shape of the
    recipe's network). Uses no model
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
    return model


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
