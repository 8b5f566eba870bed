"""Datasets and loaders over the prep manifests.

Every item is the same shape: ``{"image": uint8 (3, H, W), "target": int, "id": int}`` where
``id`` is the row position in the manifest (integers gather across processes; the string ids are
looked up when predictions are written). Pixels stay uint8 through the loader and are normalised
late, on the device, by :func:`normalize` (a float normalise per item costs more than the
decode on a CPU).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import v2

from common import schema
from common.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FastColorJitter(torch.nn.Module):
    """Brightness, contrast and saturation jitter of a uint8 (3, H, W) image in one float pass.

    Each factor is drawn uniformly from ``[1 - strength, 1 + strength]``. torchvision's
    ``ColorJitter`` does the same three adjustments but ran at ~140 img/s on 64 px uint8
    images here (BENCHMARKS.md), slower than decoding; this runs at thousands.
    """

    def __init__(self, strength: float) -> None:
        super().__init__()
        self.strength = strength

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        b, c, s = (1 + (torch.rand(3) * 2 - 1) * self.strength).tolist()
        x = img.float()
        gray = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
        x = gray + (x - gray) * s
        mean = gray.mean()
        x = ((x - mean) * c + mean) * b
        return x.clamp_(0, 255).to(torch.uint8)


def build_train_transform(img_size: int, hflip: float = 0.5, color_jitter: float = 0.0) -> v2.Transform:
    """Seed 001: random crop of ``img_size`` from the cached image, random flip, colour jitter."""
    t = [v2.RandomCrop(img_size, pad_if_needed=True), v2.RandomHorizontalFlip(hflip)]
    if color_jitter > 0:
        t.append(FastColorJitter(color_jitter))
    return v2.Compose(t)


def build_eval_transform(img_size: int) -> v2.Transform:
    return v2.CenterCrop(img_size)


class ManifestDataset(Dataset):
    """Images of one manifest, decoded from the resized JPEG cache."""

    def __init__(self, data_dir: str | Path, rows: pd.DataFrame, transform: v2.Transform | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.rows = rows.reset_index(drop=True)
        self.paths = [str(self.data_dir / p) for p in self.rows["image"]]
        self.targets = torch.tensor(self.rows["label"].to_numpy(), dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        try:
            img = decode_image(read_file(self.paths[i]), mode=ImageReadMode.RGB)
        except RuntimeError as e:
            raise DataError(f"{self.paths[i]}: cannot decode cached image ({e}); rerun 'make prep'") from None
        if self.transform is not None:
            img = self.transform(img)
        return {"image": img, "target": self.targets[i], "id": i}


def build_dataset(
    data_dir: str | Path, rows: pd.DataFrame, transform: v2.Transform | None, cache: str = "jpeg"
) -> Dataset:
    """The dataset of ``rows`` read from the chosen cache (same items, same transforms)."""
    if cache == "jpeg":
        return ManifestDataset(data_dir, rows, transform)
    raise DataError(f"unknown cache '{cache}' (valid: jpeg)")


def normalize(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD, channels_last: bool = False) -> torch.Tensor:
    """uint8 (N, 3, H, W) on any device -> normalised float, optionally channels_last."""
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1) * 255
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1) * 255
    x = (images.float() - m) / s
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def fold_rows(data_dir: str | Path, folds_file: str | Path, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, validation rows) of a fold; fold -1 = holdout (train manifest vs val manifest)."""
    train = schema.read_manifest(data_dir, "train")
    if fold < 0:
        return train, schema.read_manifest(data_dir, "val")
    folds = schema.read_folds(folds_file)
    merged = train.merge(folds, on="id", how="left")
    if merged["fold"].isna().any():
        missing = merged.loc[merged["fold"].isna(), "id"].iloc[0]
        raise DataError(f"{folds_file}: id '{missing}' of the train manifest has no fold (rerun 'make folds')")
    if fold not in set(merged["fold"]):
        raise DataError(f"{folds_file}: no rows in fold {fold}")
    return merged[merged["fold"] != fold].drop(columns="fold"), merged[merged["fold"] == fold].drop(columns="fold")


def make_loader(ds: Dataset, batch_size: int, train: bool, num_workers: int = 0, seed: int = 0) -> DataLoader:
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
