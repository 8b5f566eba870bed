"""Building a run: its rows, model, data input and the recipe's parts; resuming its state.

:func:`build_run` gathers everything one (model, fold) needs from the component factories
(:mod:`pipeline.data`, :mod:`pipeline.optim`, :mod:`pipeline.runs.model`), prepared by Accelerate.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from common import schema
from common.errors import ConfigError, DataError, PipelineError
from common.io import write_yaml
from pipeline.config import TrainConfig
from pipeline.data.datasets import fold_rows
from pipeline.data.loaders import build_eval_loader, build_train_input
from pipeline.data.mixup import build_mixer
from pipeline.optim.freeze import BackboneFreeze, freeze_batchnorm
from pipeline.optim.loss import build_loss
from pipeline.optim.optimizer import build_optimizer
from pipeline.optim.schedule import build_schedule
from pipeline.runs.checkpoints import load_checkpoint
from pipeline.runs.identity import ensure_fold_file
from pipeline.runs.model import build_model, init_weights_from
from pipeline.runs.scan import fold_dir_name
from pipeline.runtime import resolve_channels_last
from pipeline.train.engine import StepParts

log = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything one (model, fold) trains with, built once by :func:`build_run`."""

    cfg: TrainConfig
    model_name: str
    fold: int
    out: Path
    ident: dict
    label_map: pd.DataFrame
    rows: dict[str, pd.DataFrame]  # train, val, test (+ nonlandmark)
    model: torch.nn.Module
    parts: StepParts
    train_input: object  # pipeline.data.datasets.TrainInput
    loaders: dict  # val, test (+ nonlandmark): prepared eval loaders
    channels_last: bool
    info: dict = field(default_factory=dict)  # params, macs, input path
    freeze: BackboneFreeze | None = None  # freeze_epochs: the frozen warm-up
    stage: int = 0  # the progressive-resizing stage the inputs are built for

    @property
    def tag(self) -> str:
        return f"{self.model_name}/{fold_dir_name(self.fold)}"


@dataclass
class RunState:
    """What the epoch loop carries from epoch to epoch (and ``last.pt`` stores)."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"epoch": -1, "value": None})


def load_rows(cfg: TrainConfig, fold: int, label_map: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Train/val rows of the fold, test rows (and the non-landmark pool), checked against the label map."""
    data_dir = cfg.data_dir
    if fold >= 0:
        path = ensure_fold_file(cfg)
        schema.read_folds(path, cfg.k, schema.read_manifest(data_dir, "train")["id"])
    train, val = fold_rows(data_dir, schema.fold_file(cfg.folds_dir, cfg.dataset, cfg.k, cfg.fold_seed), fold)
    rows = {"train": train, "val": val, "test": schema.read_manifest(data_dir, "test")}
    if schema.manifest_path(data_dir, schema.NONLANDMARK).is_file():
        rows[schema.NONLANDMARK] = schema.read_manifest(data_dir, schema.NONLANDMARK)
    n = len(label_map)
    for split, df in rows.items():
        labels = df["label"].to_numpy()
        allowed = (labels >= 0) & (labels < n)
        if split in ("test", schema.NONLANDMARK):  # may hold rows without a known class
            allowed |= np.isin(labels, (schema.NON_LANDMARK, schema.OTHER_LANDMARK, schema.UNLABELLED))
        if not allowed.all():
            i = int((~allowed).nonzero()[0][0])
            raise DataError(
                f"{schema.manifest_path(data_dir, 'train' if split == 'val' and fold >= 0 else split)}: id "
                f"'{df['id'].iloc[i]}' has label {labels[i]}, outside 0..{n - 1} of {data_dir / schema.LABEL_MAP} "
                "(manifests and label map are from different preps: rerun 'make prep')"
            )
    return rows


def check_cached_images(data_dir: Path, manifests: list[str], cache: str) -> None:
    """Every cached image a fold reads exists and looks intact, checked before the first epoch
    (a bad test image would otherwise surface after the last one). Shallow: ~40 us per image."""
    from data_prep.verify import check_cache

    problems = check_cache(data_dir, list(dict.fromkeys(manifests)), cache)
    if problems:
        manifest, image_id, what = problems[0]
        raise DataError(
            f"{data_dir}: {len(problems)} cached image(s) damaged or missing (first: {manifest} id '{image_id}': "
            f"{what}); run 'make verify' (python -m data_prep verify --config ...) to re-encode them from the source"
        )


def _profile(model: torch.nn.Module, img_size: int) -> dict:
    from pipeline.models.profile import count_macs, count_params

    info = {"params": count_params(model), "trainable_params": count_params(model, trainable_only=True)}
    try:
        info["macs"] = count_macs(model, img_size)
    except Exception as e:  # noqa: BLE001 - a size report must never stop training
        log.debug("MACs not counted: %s", e)
    return info


def stage_at(cfg: TrainConfig, epoch: int) -> tuple[int, int]:
    """``(stage, img_size)`` of 0-based ``epoch``: the early stages of ``stage_epochs`` /
    ``stage_img_sizes`` in order, then ``img_size`` to the end (stage ``len(stage_epochs)``)."""
    end = 0
    for i, (n, size) in enumerate(zip(cfg.stage_epochs, cfg.stage_img_sizes)):
        end += n
        if epoch < end:
            return i, size
    return len(cfg.stage_epochs), cfg.img_size


def _build_inputs(run: Run, stage: int, accelerator: Accelerator) -> None:
    """The train input and the validation loader at the image side of ``stage``, prepared."""
    cfg = run.cfg
    size = ([*cfg.stage_img_sizes, cfg.img_size])[stage]
    stage_cfg = dataclasses.replace(cfg, img_size=size) if size != cfg.img_size else cfg
    old = [run.train_input.loader, run.loaders["val"]] if run.train_input is not None else []
    run.train_input = build_train_input(cfg.data_dir, run.rows["train"], stage_cfg)
    val = build_eval_loader(cfg.data_dir, run.rows["val"], stage_cfg, ram_cache=True)
    run.train_input.loader, run.loaders["val"] = accelerator.prepare(run.train_input.loader, val)
    registered = getattr(accelerator, "_dataloaders", [])  # let the last stage's loaders (RAM cache) go
    for loader in old:
        if loader in registered:
            registered.remove(loader)
    run.stage = stage
    if cfg.stage_epochs:
        log.info("%s: stage %d of %d, img_size %d", run.tag, stage + 1, len(cfg.stage_epochs) + 1, size)


def enter_stage(run: Run, epoch: int, accelerator: Accelerator) -> None:
    """Before ``epoch``: rebuild the inputs when it starts another stage (or a resume lands in one),
    and freeze or thaw the backbone (``freeze_epochs``)."""
    stage, _ = stage_at(run.cfg, epoch)
    if stage != run.stage:
        _build_inputs(run, stage, accelerator)
    if run.freeze is not None:
        frozen = run.freeze.set_epoch(epoch)
        if not frozen and epoch == run.freeze.epochs:
            log.info("%s: the backbone trains from epoch %d on (freeze_epochs=%d)", run.tag, epoch + 1, epoch)


def enter_final_stage(run: Run, accelerator: Accelerator) -> None:
    """After the epochs: the validation input at ``img_size``, so the out-of-fold predictions are
    made as predict makes test ones (also when a resume finds no epoch left to train)."""
    final = len(run.cfg.stage_epochs)
    if run.stage != final:
        _build_inputs(run, final, accelerator)


def _build_network(cfg: TrainConfig, model_name: str, counts: list[int], channels_last: bool,
                   accelerator: Accelerator) -> tuple[torch.nn.Module, list, dict]:  # fmt: skip
    """The model (init_from, SyncBatchNorm, frozen BatchNorm applied), its head modules and size."""
    from pipeline.models import check_input_size
    from pipeline.models.utils import head_modules

    for size in cfg.stage_img_sizes:
        check_input_size(model_name, size, cfg.small_input)
    set_seed(cfg.seed)  # weights are a function of the seed alone
    model = build_model(cfg, model_name, len(counts), channels_last, class_counts=counts)
    if cfg.init_from:
        init_weights_from(model, cfg.init_from, cfg.runs_root)
    info = _profile(model, cfg.img_size)
    if cfg.sync_bn and accelerator.num_processes > 1:
        if accelerator.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            log.info("%s: BatchNorm layers synchronised across %d processes", model_name, accelerator.num_processes)
        else:  # torch's SyncBatchNorm refuses CPU modules
            log.warning("sync_bn=true has no effect on %s (SyncBatchNorm needs GPUs)", accelerator.device)
    head = head_modules(model)
    if (cfg.bn_mode == "frozen" or cfg.freeze_epochs) and not (cfg.use_pretrained or cfg.init_from):
        log.warning("%s: bn_mode=frozen / freeze_epochs without pretrained weights or init_from: the backbone "
                    "starts from random weights", model_name)  # fmt: skip
    if cfg.bn_mode == "frozen":
        freeze_batchnorm(model, head)
    if cfg.grad_checkpointing:
        set_grad_checkpointing(model, model_name)
    return model, head, info


def set_grad_checkpointing(model: torch.nn.Module, name: str) -> None:
    """Turn on timm's gradient checkpointing in the (backbone of the) model; one line where none has it."""
    found = [m for m in model.modules() if hasattr(m, "set_grad_checkpointing")]
    if not found:
        raise ConfigError(f"train: grad_checkpointing=true: '{name}' has no set_grad_checkpointing (timm models do)")
    found[0].set_grad_checkpointing(True)


def build_run(cfg: TrainConfig, model_name: str, fold: int, out: Path, accelerator: Accelerator, ident: dict) -> Run:
    """Data, model and the recipe's parts (optimizer, schedule, loss, mixup, EMA), prepared by Accelerate."""
    data_dir = cfg.data_dir
    label_map = schema.read_label_map(data_dir)
    rows = load_rows(cfg, fold, label_map)
    pool = [schema.NONLANDMARK] if schema.NONLANDMARK in rows else []
    check_cached_images(data_dir, ["train", "val", "test", *pool], cfg.cache)
    channels_last = resolve_channels_last(cfg.channels_last, cfg.cpu)
    counts = rows["train"]["label"].value_counts().reindex(range(len(label_map)), fill_value=0).tolist()
    if cfg.freeze_epochs and accelerator.num_processes > 1:  # DDP fixes the trained tensors when it wraps
        raise ConfigError("train: freeze_epochs needs one process (DDP cannot thaw a frozen backbone); use 0")
    model, head, info = _build_network(cfg, model_name, counts, channels_last, accelerator)
    optimizer = build_optimizer(model, cfg, head=head)
    freeze = BackboneFreeze(model, head, cfg.freeze_epochs) if cfg.freeze_epochs else None
    eval_names = [s for s in ("test", schema.NONLANDMARK) if s in rows]
    eval_loaders = [build_eval_loader(data_dir, rows[s], cfg) for s in eval_names]
    model, optimizer, *prepared = accelerator.prepare(model, optimizer, *eval_loaders)
    if cfg.compile:  # in place: the state dict keeps its keys (no _orig_mod.), checkpoints stay plain
        model.compile()
    run = Run(cfg, model_name, fold, out, ident, label_map, rows, model, None, None, dict(zip(eval_names, prepared)),
              channels_last, info, freeze, stage=-1)  # fmt: skip
    _build_inputs(run, 0, accelerator)
    train_loader = run.train_input.loader
    batches = len(train_loader) if cfg.limit_train_batches is None else min(len(train_loader), cfg.limit_train_batches)
    accelerator.gradient_accumulation_steps = cfg.accumulate
    schedule = build_schedule(optimizer, cfg, math.ceil(batches / cfg.accumulate))
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(accelerator.unwrap_model(model), decay=cfg.ema_decay)
    run.parts = StepParts(
        optimizer=optimizer,
        loss_fn=build_loss(cfg),
        schedule=schedule,
        mixer=build_mixer(cfg, len(label_map)),
        device_transform=run.train_input.device_transform,
        ema=ema,
        clip_grad=cfg.clip_grad,
        needs_target=bool(getattr(accelerator.unwrap_model(model), "needs_target", False)),
    )
    info["input_path"] = run.train_input.path
    return run


def _eval_model(run: Run, accelerator: Accelerator) -> torch.nn.Module:
    """The weights that are evaluated and saved as best: the EMA when it is on."""
    return run.parts.ema.module if run.parts.ema is not None else run.model


def _weights(run: Run, accelerator: Accelerator) -> dict:
    return accelerator.unwrap_model(_eval_model(run, accelerator)).state_dict()


def resume_state(run: Run, accelerator: Accelerator) -> RunState:
    """The state after the last finished epoch (``last.pt``), or a fresh one."""
    path = run.out / schema.RUN_LAST
    if not (run.cfg.resume and path.is_file()):
        return RunState()
    state = load_checkpoint(path, accelerator, run.model, run.parts.optimizer, run.parts.schedule)
    if run.parts.ema is not None:
        if "ema" not in state:
            raise PipelineError(f"{path} has no EMA weights: it was written without ema=true")
        run.parts.ema.module.load_state_dict(state["ema"])
    if accelerator.scaler is not None and "scaler" in state:  # fp16: the loss scale goes on where it was
        accelerator.scaler.load_state_dict(state["scaler"])
    best = state["best"]
    if "value" not in best:  # checkpoints written before checkpoint_metric existed
        best = {"epoch": best["epoch"], "value": best.get("val_top1")}
    log.info("%s: resuming after epoch %d", run.out, state["epoch"])
    return RunState(state["epoch"], state["history"], best)


def write_run_config(run: Run, accelerator: Accelerator) -> None:
    if accelerator.is_main_process:
        write_yaml(
            run.out / schema.RUN_CONFIG,
            {
                **asdict(run.cfg),
                "model": run.model_name,
                "fold": run.fold,
                "num_classes": len(run.label_map),
                "resolved_mixed_precision": accelerator.mixed_precision,
                "resolved_channels_last": run.channels_last,
                "device": str(accelerator.device),
                "processes": accelerator.num_processes,
                "threads": torch.get_num_threads(),
                "resolved_input_path": run.train_input.path,
                "prep": run.ident,
            },
        )
