"""Datasets and loaders over the prep manifests.

Every item is the same shape: ``{"image": uint8 (3, H, W), "target": int, "id": int}`` where
``id`` is the row position in the manifest (integers gather across processes; the string ids are
looked up when predictions are written). Pixels stay uint8 through the loader and are normalised
late, on the device, by :func:`normalize` (a float normalise per item costs more than the
decode on a CPU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
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
        gray = (x * _GRAY_WEIGHTS).sum(0)
        mean = gray.mean().item()
        # saturation, contrast, brightness in one affine map (same result, ~1.7x faster):
        # b * (c * (gray + s * (x - gray) - mean) + mean) = bcs * x + bc(1 - s) * gray + b(1 - c) * mean
        x.mul_(b * c * s).add_(gray.mul_(b * c * (1 - s)).add_(b * (1 - c) * mean))
        return x.clamp_(0, 255).to(torch.uint8)


_GRAY_WEIGHTS = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)


class FastRandomCrop(torch.nn.Module):
    """``v2.RandomCrop(size, pad_if_needed=True)`` on a (C, H, W) tensor, without v2's dispatch.

    Draws the same random numbers in the same order as torchvision, so a seeded run crops the
    same pixels; v2's per-call dispatch cost ~55 us per image here, this ~5 us. Images smaller
    than ``size`` go through torchvision (padding).
    """

    def __init__(self, size: int, padding: int = 0) -> None:
        super().__init__()
        self.size = size
        self.padding = padding  # zero border added first (CIFAR's pad-4-then-crop-32)
        self._padding = v2.RandomCrop(size, pad_if_needed=True)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self.padding:
            img = torch.nn.functional.pad(img, (self.padding,) * 4)
        h, w = img.shape[-2:]
        if h < self.size or w < self.size:
            return self._padding(img)
        top = int(torch.randint(0, h - self.size + 1, size=())) if h > self.size else 0
        left = int(torch.randint(0, w - self.size + 1, size=())) if w > self.size else 0
        return img[..., top : top + self.size, left : left + self.size]


class FastHorizontalFlip(torch.nn.Module):
    """``v2.RandomHorizontalFlip(p)`` on a tensor: same random draw, without v2's dispatch."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if torch.rand(1) >= self.p:
            return img
        return img.flip(-1)


def build_train_transform(
    img_size: int, hflip: float = 0.5, color_jitter: float = 0.0, padding: int = 0
) -> v2.Transform:
    """Seed 001: random crop of ``img_size`` from the cached image, random flip, colour jitter.

    ``padding`` adds a zero border before the crop (CIFAR: 4, so a 32 px image still moves).

    Pixel-identical to ``v2.RandomCrop(pad_if_needed=True)`` + ``v2.RandomHorizontalFlip`` for
    the same torch seed, at a fraction of the per-image cost (BENCHMARKS.md).
    """
    t = [FastRandomCrop(img_size, padding), FastHorizontalFlip(hflip)]
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


class PackedDataset(Dataset):
    """Images of one manifest, read from the packed uint8 cache (``packed_<size>.u8``, NHWC).

    Same items and transforms as :class:`ManifestDataset`: the packed array holds the decoded
    pixels of the same cached files. The memory map is opened lazily in each process (a
    DataLoader worker gets the path, not the array: pickling a memmap would copy it).
    """

    def __init__(
        self, data_dir: str | Path, rows: pd.DataFrame, transform: v2.Transform | None = None, size: int | None = None
    ) -> None:
        from data_prep.packed import packed_paths, read_index

        self.data_dir = Path(data_dir)
        self.size = size if size is not None else packed_size(data_dir)
        meta = read_index(self.data_dir, self.size)
        self.path = str(packed_paths(self.data_dir, self.size)[0])
        self.shape = tuple(meta["shape"])
        pos = {image_id: i for i, image_id in enumerate(meta["ids"])}
        self.rows = rows.reset_index(drop=True)
        missing = [i for i in self.rows["id"] if i not in pos]
        if missing:
            raise DataError(
                f"{self.path}: {len(missing)} manifest ids are not in the packed cache (first: {missing[0]!r}); "
                "rerun prep with packed=true"
            )
        self.index = np.array([pos[i] for i in self.rows["id"]], dtype=np.int64)
        self.targets = torch.tensor(self.rows["label"].to_numpy(), dtype=torch.long)
        self.transform = transform
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    def __len__(self) -> int:
        return len(self.rows)

    def _pixels(self) -> np.ndarray:
        if self._array is None:
            self._array = np.memmap(self.path, dtype=np.uint8, mode="r", shape=self.shape)
        return self._array

    def __getitem__(self, i: int) -> dict:
        # one copy out of the page cache straight into (3, H, W) order: a contiguous item makes
        # the collate a plain memcpy (stacking HWC-strided items costs more than this copy)
        img = torch.from_numpy(np.ascontiguousarray(self._pixels()[self.index[i]].transpose(2, 0, 1)))
        if self.transform is not None:
            img = self.transform(img)
        return {"image": img, "target": self.targets[i], "id": i}


def packed_size(data_dir: str | Path) -> int:
    """The side of the packed cache to read: the only one present, else prep's ``image_size``."""
    from data_prep.packed import packed_sizes

    sizes = packed_sizes(data_dir)
    if len(sizes) == 1:
        return sizes[0]
    if not sizes:
        raise DataError(f"no packed cache in {data_dir} (run prep with packed=true, or train with cache=jpeg)")
    cfg_path = Path(data_dir) / schema.PREP_CONFIG
    try:
        size = int(yaml.safe_load(cfg_path.read_text())["image_size"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        raise DataError(f"{data_dir}: packed caches of sizes {sizes} and no readable {cfg_path.name}") from None
    if size not in sizes:
        raise DataError(f"{data_dir}: no packed cache of the prepped size {size} (found {sizes})")
    return size


CACHES = ("jpeg", "packed")


def build_dataset(
    data_dir: str | Path, rows: pd.DataFrame, transform: v2.Transform | None, cache: str = "jpeg"
) -> Dataset:
    """The dataset of ``rows`` read from the chosen cache (same items, same transforms).

    ``jpeg``: the resized file cache (``images/``, JPEG or lossless PNG); ``packed``: the uint8
    memory-mapped array written by prep with ``packed=true``.
    """
    if cache == "jpeg":
        return ManifestDataset(data_dir, rows, transform)
    if cache == "packed":
        return PackedDataset(data_dir, rows, transform)
    raise DataError(f"unknown cache '{cache}' (valid: {', '.join(CACHES)})")


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
