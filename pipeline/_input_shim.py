"""TEMPORARY: the per-item input path behind the TrainInput interface, until pipeline.data has it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.data import build_dataset, build_eval_transform, build_train_transform, make_loader


@dataclass
class TrainInput:
    loader: object
    device_transform: object
    path: str
    seed: int
    generator: torch.Generator

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)


def build_train_input(data_dir, rows, cfg) -> TrainInput:
    tf = build_train_transform(cfg.img_size, cfg.hflip, cfg.color_jitter, cfg.crop_padding)
    loader = make_loader(build_dataset(data_dir, rows, tf, cfg.cache), cfg.batch_size, True, cfg.num_workers, cfg.seed)
    return TrainInput(loader, None, "per_item", cfg.seed, loader.generator)


def build_eval_loader(data_dir, rows, cfg, batch_size=None):
    ds = build_dataset(data_dir, rows, build_eval_transform(cfg.img_size), cfg.cache)
    return make_loader(ds, batch_size or cfg.batch_size, False, cfg.num_workers)


def build_mixer(cfg, num_classes):
    return None
