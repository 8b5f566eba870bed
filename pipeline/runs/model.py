"""The network of a run, built from its recipe: training builds it, predict/embed/export rebuild it.

:func:`model_kwargs` is the adapter from a :class:`TrainConfig` to the keyword factory
:func:`pipeline.models.create_model` (as timm's ``optimizer_kwargs``); nothing below this module
needs the training config.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from common import schema
from common.errors import PipelineError
from pipeline.config import TrainConfig
from pipeline.models import check_input_size, create_model
from pipeline.runs.checkpoints import read_checkpoint

log = logging.getLogger(__name__)


HEAD_KEYS = ("pool", "neck", "embedding_size", "head", "arcface_s", "arcface_m", "subcenters", "dynamic_margin",
             "margin_min")  # fmt: skip


def _head_kwargs(cfg: TrainConfig) -> dict:
    """Head options for create_model; nothing when they are all defaults (today's plain models)."""
    defaults = TrainConfig()
    kw = {k: getattr(cfg, k) for k in HEAD_KEYS}
    return {} if all(kw[k] == getattr(defaults, k) for k in HEAD_KEYS) else kw


def build_model(
    cfg: TrainConfig,
    name: str,
    num_classes: int,
    channels_last: bool = False,
    class_counts: list[int] | None = None,
) -> torch.nn.Module:
    """The network of a run: backbone (registry or ``timm:<name>``), head options, freezing."""
    check_input_size(name, cfg.img_size, cfg.small_input)
    head = _head_kwargs(cfg)
    if head.get("dynamic_margin"):
        head["class_counts"] = class_counts
    model = create_model(
        name,
        num_classes=num_classes,
        pretrained=cfg.use_pretrained,
        small_input=cfg.small_input,
        **head,
        **cfg.model_kwargs,
    )
    if cfg.freeze_backbone:
        from pipeline.models.utils import freeze_backbone

        model = freeze_backbone(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def init_weights_from(model: torch.nn.Module, source: str, runs_root: str) -> list[str]:
    """Load ``source`` (a .pt file or a run folder: its best.pt) into ``model`` before training.

    Progressive resizing and fine-tuning start from another run's weights. Tensors whose shape
    differs (the classifier of another class count) are left at their fresh initialisation and
    named in the log; any other missing or extra key is one error line (not the same network).
    Returns the names of the re-initialised tensors.
    """
    path = Path(source)
    if path.is_dir():
        path = path / schema.RUN_BEST
    elif not path.exists() and (Path(runs_root) / source).is_dir():
        path = Path(runs_root) / source / schema.RUN_BEST
    state = read_checkpoint(path)
    weights = state.get("model", state.get("state_dict", state)) if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise PipelineError(f"init_from={source}: {path} holds no state dict")
    own = model.state_dict()
    skipped = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in weights]
    extra = [k for k in weights if k not in own]
    if missing or extra:
        first = (missing or extra)[0]
        raise PipelineError(
            f"init_from={source}: {path} is another network ({len(missing)} missing, {len(extra)} unexpected "
            f"tensors, first: '{first}')"
        )
    model.load_state_dict({k: v for k, v in weights.items() if k not in skipped}, strict=False)
    if skipped:
        log.info("init_from %s: re-initialised %s (shape differs: another class count)", path, ", ".join(skipped))
    else:
        log.info("init_from %s: all %d tensors loaded", path, len(weights))
    return skipped
