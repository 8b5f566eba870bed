"""The optimizer of a run, built by name with keyword arguments (as timm's ``create_optimizer_v2``).

:func:`optimizer_kwargs` is the adapter from a :class:`TrainConfig` to the keyword factory
:func:`create_optimizer`; nothing else here reads the config. Seed 001's recipe is the default
(Adam, coupled L2 weight decay) and gives the same numbers as before this module existed.

Transfer learning trains the pretrained backbone slower than the fresh head: ``head_lr_mult``
puts the pool/neck/head parameters in groups at ``lr x head_lr_mult`` and ``layer_decay`` gives
each backbone layer of a timm model ``lr x layer_decay^(depth from the top)`` (timm's
``param_groups_layer_decay``). Each group carries its ratio as ``lr_scale`` (timm's convention):
the schedules set ``lr x lr_scale`` on every group, so the ratios hold through warm-up, cosine
and every LR drop. With both keys at their defaults the groups are exactly today's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from common.config import check_choice, choices_of
from common.errors import ConfigError
from pipeline.config import TrainConfig

log = logging.getLogger(__name__)

ParamGroups = list[dict]


def _adam(params, lr: float, weight_decay: float, betas: tuple, **_) -> torch.optim.Optimizer:
    # seed 001; coupled L2 weight decay as torch's Adam does it (0 by default)
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)


def _timm(opt: str) -> Callable[..., torch.optim.Optimizer]:
    def build(params, lr: float, weight_decay: float, betas: tuple, momentum: float, nesterov: bool):
        from timm.optim import create_optimizer_v2

        # given a model, timm groups the parameters: no weight decay on norms, biases and other
        # 1-d tensors, frozen ones (freeze_backbone) left out; given groups, it takes them as they are
        kw = {"betas": betas} if opt == "adamw" else {"momentum": momentum}
        name = ("nesterov" if nesterov else "momentum") if opt == "sgd" else opt
        return create_optimizer_v2(params, opt=name, lr=lr, weight_decay=weight_decay, **kw)

    return build


# valid names: TrainConfig.optimizer's declared choices (tests/test_recipes.py checks they match)
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": _adam,
    "adamw": _timm("adamw"),  # decoupled weight decay, none on norms/biases
    "sgd": _timm("sgd"),  # momentum, Nesterov when nesterov=True
}


def optimizer_kwargs(cfg: TrainConfig) -> dict:
    """The keyword arguments of :func:`create_optimizer` from a training config (timm's adapter)."""
    return {
        "opt": cfg.optimizer,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "betas": (cfg.beta1, cfg.beta2),
        "momentum": cfg.momentum,
        "nesterov": cfg.nesterov,
        "head_lr_mult": cfg.head_lr_mult,
        "layer_decay": cfg.layer_decay,
    }


def _layer_scales(model: nn.Module, layer_decay: float) -> dict[int, float]:
    """``id(param) -> layer_decay^(depth from the top)`` over the timm backbone's layers."""
    from timm.optim import param_groups_layer_decay

    core = getattr(model, "backbone", model)  # a HeadedModel's timm backbone, else the model
    if not callable(getattr(core, "group_matcher", None)):
        raise ConfigError(
            f"train: layer_decay needs a timm backbone with layers (group_matcher); {type(core).__name__} has none "
            "(use head_lr_mult, or layer_decay=none)"
        )
    groups = param_groups_layer_decay(core, weight_decay=0.0, layer_decay=layer_decay)
    return {id(p): g["lr_scale"] for g in groups for p in g["params"]}


def param_groups(
    model: nn.Module,
    weight_decay: float,
    decay_1d: bool,
    head: Iterable[nn.Module] = (),
    head_lr_mult: float = 1.0,
    layer_decay: float | None = None,
) -> ParamGroups:
    """Trainable parameters grouped by ``(lr_scale, weight decay)``; each group has ``lr_scale``.

    Head parameters get ``head_lr_mult``; backbone ones their layer's scale (1 without
    ``layer_decay``). ``decay_1d=False``: no weight decay on biases and norms (timm's rule, and
    the names in the model's ``no_weight_decay()``).
    """
    head_ids = {id(p) for m in head for p in m.parameters()}
    layer = _layer_scales(model, layer_decay) if layer_decay is not None else {}
    skip = set(model.no_weight_decay()) if callable(getattr(model, "no_weight_decay", None)) else set()
    groups: dict[tuple[float, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = head_lr_mult if id(p) in head_ids else layer.get(id(p), 1.0)
        wd = 0.0 if not decay_1d and (p.ndim <= 1 or name in skip) else weight_decay
        groups.setdefault((scale, wd), {"params": [], "lr_scale": scale, "weight_decay": wd})["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def create_optimizer(
    model: nn.Module,
    opt: str = "adam",
    lr: float = 5e-4,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    momentum: float = 0.9,
    nesterov: bool = True,
    head_lr_mult: float = 1.0,
    layer_decay: float | None = None,
    head: Iterable[nn.Module] = (),
) -> torch.optim.Optimizer:
    """Optimizer ``opt`` over ``model``'s trainable parameters; ``head``: the modules trained at
    ``lr x head_lr_mult`` (a model's pool, neck and classifier). Every group's ``lr`` starts at
    ``lr x lr_scale``."""
    check_choice("train", "optimizer", opt, choices_of(TrainConfig, "optimizer"))
    head = list(head)
    if head_lr_mult != 1.0 and not head:
        raise ConfigError("train: head_lr_mult needs the model's head modules (none were given)")
    build = OPTIMIZERS[opt]
    kw = {"lr": lr, "weight_decay": weight_decay, "betas": betas, "momentum": momentum, "nesterov": nesterov}
    if head_lr_mult == 1.0 and layer_decay is None:  # today's groups, exactly
        params = [p for p in model.parameters() if p.requires_grad] if opt == "adam" else model
        return build(params, **kw)
    # Adam's L2 decays every tensor (seed 001); AdamW and SGD spare biases and norms, as timm does
    groups = param_groups(model, weight_decay, opt == "adam", head, head_lr_mult, layer_decay)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    log.info("optimizer groups (lr_scale: tensors): %s",
             ", ".join(f"{g['lr_scale']:.3g}: {len(g['params'])}" for g in groups))  # fmt: skip
    return build(groups, **kw)


def build_optimizer(model: nn.Module, cfg: TrainConfig, head: Iterable[nn.Module] = ()) -> torch.optim.Optimizer:
    """:func:`create_optimizer` with the config's keywords (``head``: see there)."""
    return create_optimizer(model, head=head, **optimizer_kwargs(cfg))
