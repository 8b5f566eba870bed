"""DataLoaders of a run: the training input (per item or batched from the packed cache, with its
device-side augmentation) and the evaluation loaders, seeded so that a resumed run draws the same
batches as an uninterrupted one."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from common.config import check_choice
from common.errors import ConfigError, DataError
from pipeline.config import BALANCING
from pipeline.data.augment import get_policy
from pipeline.data.batch_augment import BatchAugment, BatchColorJitter
from pipeline.data.datasets import (
    BatchedPackedDataset,
    batch_as_is,
    build_dataset,
    build_eval_transform,
)
from pipeline.data.transforms import (
    mix_seed,
    process_rank,
)

log = logging.getLogger(__name__)


INPUT_PATHS = ("auto", "batched", "per_item")


def make_loader(ds: Dataset, batch_size: int, train: bool, num_workers: int = 0, seed: int = 0) -> DataLoader:
    """A per-item DataLoader (shuffled from ``seed`` and dropping a short last batch when ``train``)."""
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(ds) > batch_size,
        num_workers=num_workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        generator=g if train else None,
    )


def _on_gpu(cfg) -> bool:
    return torch.cuda.is_available() and not cfg.cpu


def resolve_input_path(cfg) -> str:
    """``batched`` or ``per_item`` for ``cfg`` (``auto``: batched when the cache is packed and the
    policy has a batched form); a :class:`ConfigError` for a combination that cannot be batched."""
    policy = get_policy(cfg.augment)
    if cfg.input_path not in INPUT_PATHS:
        raise ConfigError(f"train: unknown input_path '{cfg.input_path}' (valid: {', '.join(INPUT_PATHS)})")
    if cfg.input_path == "per_item":
        return "per_item"
    if cfg.cache != "packed" or policy.batch is None:
        if cfg.input_path == "batched":
            why = (
                f"cache={cfg.cache} (batched reads need the packed cache: cache=packed)"
                if cfg.cache != "packed"
                else f"augment={cfg.augment} (a per-item policy)"
            )
            raise ConfigError(f"train: input_path=batched cannot run with {why}; use input_path=auto or per_item")
        return "per_item"
    return "batched"


def balanced_sampler(labels: np.ndarray, mode: str, generator: torch.Generator) -> WeightedRandomSampler | None:
    """Class-balanced sampling (``balanced_sampling``): ``len(labels)`` rows per epoch drawn with
    replacement, row weight ``1/n_c`` (``inverse``: every class equally often) or ``1/sqrt(n_c)``
    (``sqrt``: halfway); ``none``: None (plain shuffling). ``generator`` is reseeded every epoch."""
    if mode == "none":
        return None
    check_choice("train", "balanced_sampling", mode, BALANCING)
    counts = np.bincount(labels)[labels].astype(np.float64)
    weights = 1.0 / (counts if mode == "inverse" else np.sqrt(counts))
    return WeightedRandomSampler(torch.as_tensor(weights), len(labels), replacement=True, generator=generator)


@dataclass
class TrainInput:
    """What the training loop needs from the input side.

    ``loader`` goes to ``accelerator.prepare``; its batches are ``{"image": uint8 (N, 3, H, W),
    "target": long (N,), "id": long (N,) row positions}``. ``device_transform`` (or ``None``) is
    applied by the loop to the uint8 batch once it is on the training device (colour jitter on a
    GPU). ``path`` is ``batched`` or ``per_item``. Call :meth:`set_epoch` before every epoch.
    """

    loader: DataLoader
    device_transform: Callable[[torch.Tensor], torch.Tensor] | None
    path: str
    seed: int = 0
    _sampler_generator: torch.Generator | None = field(default=None, repr=False)
    _dataset: Dataset | None = field(default=None, repr=False)

    def set_epoch(self, epoch: int) -> None:
        """Reseed the shuffle order and every augmentation stream from ``(seed, epoch)``."""
        if self._sampler_generator is not None:
            self._sampler_generator.manual_seed(mix_seed(self.seed, epoch, "shuffle"))
        if self._dataset is not None:
            self._dataset.epoch = epoch  # read when the loader's iterator starts (workers get a copy)
        if self.device_transform is not None and hasattr(self.device_transform, "reseed"):
            self.device_transform.reseed(mix_seed(self.seed, epoch, process_rank(), "device"))


def build_train_input(
    data_dir: str | Path, rows: pd.DataFrame, cfg, jitter_on_device: bool | None = None
) -> TrainInput:
    """The training input of ``rows`` for ``cfg`` (policy ``augment``, ``input_path``, ``cache``).

    The batched path jitters colours in the loader on a CPU (overlapped by the prefetch thread)
    and on the device on a GPU (``jitter_on_device`` overrides that choice, for tests).
    Shuffling (or class-balanced sampling, :func:`balanced_sampler`): a private generator reseeded
    by ``set_epoch``; ``drop_last`` when there is more than one batch (as before).
    """
    if len(rows) == 0:
        raise DataError(f"{data_dir}: no training rows")
    policy = get_policy(cfg.augment)
    path = resolve_input_path(cfg)
    on_gpu = _on_gpu(cfg)
    device_tf = None
    if path == "batched":
        on_device = on_gpu if jitter_on_device is None else jitter_on_device
        if on_device and cfg.color_jitter > 0:
            device_tf = BatchColorJitter(cfg.color_jitter)
        ds = BatchedPackedDataset(data_dir, rows, policy.batch(cfg, device_tf is None), seed=cfg.seed)
        collate = batch_as_is
    else:
        ds = build_dataset(data_dir, rows, policy.item(cfg), cfg.cache, seed=cfg.seed, ram_cache_mb=cfg.ram_cache_mb)
        collate = None
    g = torch.Generator()
    sampler = balanced_sampler(rows["label"].to_numpy(), cfg.balanced_sampling, g)
    loader = DataLoader(
        ds,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=g if sampler is None else None,
        drop_last=len(ds) > cfg.batch_size,
        num_workers=cfg.num_workers,
        persistent_workers=False,  # workers must copy the dataset (its epoch) at every epoch start
        pin_memory=on_gpu,
        collate_fn=collate,
    )
    log.info("training input: %s path, augment=%s, cache=%s", path, cfg.augment, cfg.cache)
    train_input = TrainInput(loader, device_tf, path, cfg.seed, g, ds)
    train_input.set_epoch(0)
    return train_input


def build_eval_loader(
    data_dir: str | Path, rows: pd.DataFrame, cfg, batch_size: int | None = None, ram_cache: bool = False
) -> DataLoader:
    """Centre crop of ``cfg.img_size``, rows in order, every row once (no ``drop_last``).

    The packed cache is read a batch at a time (unless ``input_path=per_item``); the pixels are
    the same as ``build_eval_transform`` per item. ``ram_cache``: keep the decoded JPEG-cache
    images within ``cfg.ram_cache_mb`` (a loader read every epoch, i.e. validation).
    """
    bs = batch_size or cfg.batch_size
    if cfg.cache == "packed" and cfg.input_path != "per_item":
        ds = BatchedPackedDataset(data_dir, rows, BatchAugment(cfg.img_size, "center"), seed=cfg.seed)
        collate = batch_as_is
    else:
        budget = getattr(cfg, "ram_cache_mb", 0) if ram_cache else 0
        ds = build_dataset(data_dir, rows, build_eval_transform(cfg.img_size), cfg.cache, ram_cache_mb=budget)
        collate = None
    return DataLoader(
        ds,
        batch_size=bs,
        shuffle=False,
        drop_last=False,
        num_workers=cfg.num_workers,
        pin_memory=_on_gpu(cfg),
        collate_fn=collate,
    )
