"""Training augmentation policies by name, in two forms: per item and per batch.

A policy is one :class:`Policy` row in :data:`POLICIES` (``augment:`` in the train config):

* ``default``: seed 001's random crop of ``img_size`` (after ``crop_padding``), horizontal flip,
  colour jitter. The per-item form is pixel-identical to the project's earlier transforms for
  the same random stream.
* ``rrc``: RandomResizedCrop(``img_size``, scale=``rrc_scale``, ratio 3/4..4/3) + flip + jitter.
* ``strong``: the kind of policy the Google Landmark winners trained with (albumentations):
  RandomResizedCrop, shift-scale-rotate (Affine), flip, colour jitter, JPEG re-compression and
  one coarse dropout hole. Per item only.

The per-item form (:class:`ItemPipeline`, :class:`AlbumentationsItems`) transforms one uint8
(3, H, W) tensor; the batched form (:class:`BatchAugment`) draws every random parameter of a
batch at once and renders the batch straight out of the packed uint8 array (crops, flips and
the colour jitter as one 3x4 colour matrix per image, by OpenCV), or leaves the jitter to a
batch tensor operation on the training device (:class:`BatchColorJitter`, :func:`apply_jitter`).
Both forms draw the same distribution of augmentations.

Randomness never comes from torch's or numpy's global generators: every form draws from its
own ``torch.Generator`` that the data layer reseeds from ``(seed, epoch, rows)`` (see
:func:`mix_seed`), so a background thread or a worker process cannot shift the main thread's
random stream (dropout), and a resumed run equals an uninterrupted one.

The item transforms are in :mod:`pipeline.data.transforms`, the batched form in
:mod:`pipeline.data.batch_augment`, Mixup/CutMix in :mod:`pipeline.data.mixup`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from common.errors import ConfigError
from pipeline.data.batch_augment import (
    BatchAugment,
)
from pipeline.data.transforms import (
    AlbumentationsItems,
    FastColorJitter,
    FastHorizontalFlip,
    FastRandomCrop,
    FastRandomResizedCrop,
    ItemPipeline,
    ItemTransform,
    strong_compose,
)

if TYPE_CHECKING:
    from pipeline.config import TrainConfig

# ---------------------------------------------------------------------------------------------
# per-item transforms (uint8 (3, H, W) tensor in, uint8 out)


# ---------------------------------------------------------------------------------------------
# batched form: draw the parameters of a whole batch, render crops/flips from the packed array




# ---------------------------------------------------------------------------------------------
# the policies


@dataclass(frozen=True)
class Policy:
    """One augmentation policy: its per-item builder and (when it has one) its batched builder."""

    name: str
    help: str
    item: Callable[[TrainConfig], ItemTransform]
    batch: Callable[[TrainConfig, bool], BatchAugment] | None = None  # (cfg, jitter_in_loader)


POLICIES: dict[str, Policy] = {}


def register_policy(policy: Policy) -> Policy:
    """Add a policy to :data:`POLICIES` (a duplicate name is an error)."""
    if policy.name in POLICIES:
        raise ValueError(f"augmentation policy '{policy.name}' is already registered")
    POLICIES[policy.name] = policy
    return policy


def get_policy(name: str) -> Policy:
    """The policy called ``name``; a :class:`ConfigError` listing the valid names otherwise."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ConfigError(f"train: unknown augment '{name}' (valid: {', '.join(POLICIES)})") from None


def _jitter_op(cfg: TrainConfig) -> list[torch.nn.Module]:
    return [FastColorJitter(cfg.color_jitter)] if cfg.color_jitter > 0 else []


def _default_item(cfg: TrainConfig) -> ItemTransform:
    return ItemPipeline(
        [FastRandomCrop(cfg.img_size, cfg.crop_padding), FastHorizontalFlip(cfg.hflip), *_jitter_op(cfg)]
    )


def _default_batch(cfg: TrainConfig, jitter_in_loader: bool) -> BatchAugment:
    jitter = cfg.color_jitter if jitter_in_loader else 0.0
    return BatchAugment(cfg.img_size, "crop", cfg.crop_padding, cfg.hflip, jitter)


def _rrc_item(cfg: TrainConfig) -> ItemTransform:
    return ItemPipeline(
        [
            FastRandomResizedCrop(cfg.img_size, tuple(cfg.rrc_scale)),
            FastHorizontalFlip(cfg.hflip),
            *_jitter_op(cfg),
        ]
    )


def _rrc_batch(cfg: TrainConfig, jitter_in_loader: bool) -> BatchAugment:
    jitter = cfg.color_jitter if jitter_in_loader else 0.0
    return BatchAugment(cfg.img_size, "rrc", 0, cfg.hflip, jitter, scale=tuple(cfg.rrc_scale))


def _strong_item(cfg: TrainConfig) -> ItemTransform:
    return AlbumentationsItems(strong_compose(cfg.img_size, cfg.rrc_scale, cfg.hflip, cfg.color_jitter))


register_policy(
    Policy(
        "default",
        "random crop img_size (after crop_padding) + flip + colour jitter (seed 001)",
        _default_item,
        _default_batch,
    )
)
register_policy(
    Policy(
        "rrc",
        "RandomResizedCrop(img_size, scale=rrc_scale) + flip + colour jitter (crop_padding unused)",
        _rrc_item,
        _rrc_batch,
    )
)
register_policy(
    Policy(
        "strong",
        "albumentations: RandomResizedCrop, shift-scale-rotate, flip, jitter, JPEG, coarse dropout (per item)",
        _strong_item,
    )
)


# ---------------------------------------------------------------------------------------------
# mixup / cutmix


