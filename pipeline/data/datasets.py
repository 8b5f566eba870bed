"""Datasets and loaders over the prep manifests.

Every item is the same shape: ``{"image": uint8 (3, H, W), "target": int, "id": int}`` where
``id`` is the row position in the manifest (integers gather across processes; the string ids are
looked up when predictions are written). Pixels stay uint8 through the loader and are normalised
late, on the device, by :func:`normalize` (a float normalise per item costs more than the
decode on a CPU).

Two input paths feed training (:func:`build_train_input`):

* ``per_item``: one ``__getitem__``, one transform call and one collate per image; the JPEG
  cache, and any policy (``strong`` needs it: albumentations works per image).
* ``batched``: the packed uint8 cache read one batch at a time (:class:`BatchedPackedDataset`,
  ``__getitems__``): one pass over the batch's rows in ascending order, every random parameter
  of the batch drawn at once, crops/flips (and on a CPU the colour jitter) by OpenCV's SIMD
  kernels straight into the (N, 3, H, W) batch; on a GPU the jitter is a batch tensor operation
  on the device (``TrainInput.device_transform``). ~10-15x the JPEG cache per core
  (bench/bench_input.py).

Randomness: every augmentation draws from a private generator seeded from ``(seed, epoch, row)``
(per item) or ``(seed, epoch, rows of the batch)`` (batched), set by :meth:`TrainInput.set_epoch`.
It never touches torch's global generator, so a prefetch thread cannot interleave with dropout,
the number of worker processes does not change what a row sees, and a resumed run equals an
uninterrupted one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import yaml
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from torchvision.transforms import v2

from common import schema
from common.errors import DataError
from pipeline.data.batch_augment import BatchAugment
from pipeline.data.transforms import (
    FastColorJitter,
    FastHorizontalFlip,
    FastRandomCrop,
    mix_seed,
)

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
class ItemDataError(DataError):
    """A bad data item (e.g. an undecodable cached image), raised inside a dataset.

    A DataLoader worker process re-raises an exception in the main process as
    ``type(e)("Caught ... in DataLoader worker process N.\\nOriginal Traceback ...")``, a
    14-line message the CLI would print whole. This class recognises that form and keeps only
    the original one-line message, so the CLI shows ``error: <file>: cannot decode ...``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_unwrap_worker_message(message, type(self)))


def _unwrap_worker_message(message: str, cls: type) -> str:
    if not message.startswith("Caught ") or "Traceback" not in message:
        return message
    where = re.match(r"Caught \w+ (in DataLoader worker process \d+)", message)
    prefixes = (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: ")
    for line in reversed(message.splitlines()):
        for prefix in prefixes:
            if line.startswith(prefix):
                return line[len(prefix) :] + (f" ({where.group(1)})" if where else "")
    return message.strip().splitlines()[-1]


def _decode_reason(e: Exception) -> str:
    """torchvision's decode errors start with the C++ source location: keep the reason only."""
    text = " ".join(str(e).split())
    return re.sub(r"^\w+, \S+\.cpp:\d+, ", "", text)


def build_train_transform(
    img_size: int, hflip: float = 0.5, color_jitter: float = 0.0, padding: int = 0
) -> v2.Transform:
    """Seed 001: random crop of ``img_size`` from the cached image, random flip, colour jitter.

    ``padding`` adds a zero border before the crop (CIFAR: 4, so a 32 px image still moves).
    Draws from torch's global generator (the ``default`` policy of :mod:`pipeline.data.augment` is the
    same transforms on a private generator). Pixel-identical to ``v2.RandomCrop(pad_if_needed=True)``
    + ``v2.RandomHorizontalFlip`` for the same torch seed, at a fraction of the per-image cost.
    """
    from torchvision.transforms import v2  # torchvision (~0.3 s) only on the per-item path

    t = [FastRandomCrop(img_size, padding), FastHorizontalFlip(hflip)]
    if color_jitter > 0:
        t.append(FastColorJitter(color_jitter))
    return v2.Compose(t)


def build_eval_transform(img_size: int) -> v2.Transform:
    """Centre crop of ``img_size`` (zero padding when the cached image is smaller)."""
    from torchvision.transforms import v2

    return v2.CenterCrop(img_size)


class _SeededItems:
    """Per-item reseeding: a transform with ``reseed`` is reseeded from ``(seed, epoch, i)``.

    ``epoch`` is a plain attribute set by :meth:`TrainInput.set_epoch` (deliberately not a
    ``set_epoch`` method: accelerate calls a dataset's ``set_epoch`` with its own counter, which
    restarts at 0 on resume).
    """

    transform: Callable | None
    seed: int | None
    epoch: int

    def _transform(self, img: torch.Tensor, i: int) -> torch.Tensor:
        if self.transform is None:
            return img
        if self.seed is not None and hasattr(self.transform, "reseed"):
            self.transform.reseed(mix_seed(self.seed, self.epoch, i))
        return self.transform(img)


class ManifestDataset(_SeededItems, Dataset):
    """Images of one manifest, decoded from the resized JPEG cache.

    ``seed``: reseed a reseedable transform per item from ``(seed, epoch, i)`` (training);
    ``None`` leaves the transform's random stream alone (evaluation, or torch's global RNG).
    """

    def __init__(
        self,
        data_dir: str | Path,
        rows: pd.DataFrame,
        transform: Callable | None = None,
        seed: int | None = None,
        ram_cache_mb: float = 0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.rows = rows.reset_index(drop=True)
        self.paths = [str(self.data_dir / p) for p in self.rows["image"]]
        self.targets = torch.tensor(self.rows["label"].to_numpy(), dtype=torch.long)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        # decoded images kept in this process up to the budget (the first epoch decodes, the
        # next ones read RAM); the transforms never write into their input, so items are unchanged
        self.ram_budget = int(ram_cache_mb * 2**20)
        self.ram: dict[int, torch.Tensor] = {}
        self.ram_bytes = 0

    def __len__(self) -> int:
        return len(self.rows)

    def _decode(self, i: int) -> torch.Tensor:
        img = self.ram.get(i)
        if img is not None:
            return img
        from torchvision.io import ImageReadMode, decode_image, read_file

        try:
            img = decode_image(read_file(self.paths[i]), mode=ImageReadMode.RGB)
        except RuntimeError as e:
            raise ItemDataError(
                f"{self.paths[i]}: cannot decode cached image ({_decode_reason(e)}); run 'make verify' "
                "(python -m data_prep verify --config ...): it re-encodes damaged cached images from the source"
            ) from None
        if self.ram_bytes + img.nbytes <= self.ram_budget:
            self.ram[i] = img
            self.ram_bytes += img.nbytes
        return img

    def __getitem__(self, i: int) -> dict:
        return {"image": self._transform(self._decode(i), i), "target": self.targets[i], "id": i}


class _PackedRows:
    """The packed uint8 cache (``packed_<size>.u8``, NHWC) rows of a manifest, opened lazily.

    The memory map is opened in each process that reads (a DataLoader worker gets the path, not
    the array: pickling a memmap would copy it). Opened copy-on-write (``mode="c"``): reads share
    the page cache, and torch can wrap it without a read-only warning; nothing is ever written.
    """

    def _open_packed(self, data_dir: str | Path, rows: pd.DataFrame, size: int | None) -> None:
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
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    def __len__(self) -> int:
        return len(self.rows)

    def _pixels(self) -> np.ndarray:
        if self._array is None:
            try:
                self._array = np.memmap(self.path, dtype=np.uint8, mode="c", shape=self.shape)
            except (OSError, ValueError) as e:
                raise ItemDataError(
                    f"{self.path}: cannot open the packed cache ({e}); rerun prep with packed=true"
                ) from None
        return self._array


class PackedDataset(_PackedRows, _SeededItems, Dataset):
    """Images of one manifest, read one at a time from the packed uint8 cache.

    Same items and transforms as :class:`ManifestDataset`: the packed array holds the decoded
    pixels of the same cached files. ``seed`` as there.
    """

    def __init__(
        self,
        data_dir: str | Path,
        rows: pd.DataFrame,
        transform: Callable | None = None,
        size: int | None = None,
        seed: int | None = None,
    ) -> None:
        self._open_packed(data_dir, rows, size)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def __getitem__(self, i: int) -> dict:
        # one copy out of the page cache straight into (3, H, W) order: a contiguous item makes
        # the collate a plain memcpy (stacking HWC-strided items costs more than this copy)
        img = torch.from_numpy(np.ascontiguousarray(self._pixels()[self.index[i]].transpose(2, 0, 1)))
        return {"image": self._transform(img, i), "target": self.targets[i], "id": i}


def _batch_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 batch; inside a DataLoader worker, allocated in shared memory.

    The worker hands a batch to the main process through shared memory; a tensor that already
    lives there is passed as a handle instead of being copied (what default_collate does too).
    """
    if torch.utils.data.get_worker_info() is not None:
        try:
            storage = torch.UntypedStorage._new_shared(int(np.prod(shape)))
            return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
        except (AttributeError, RuntimeError):  # private API moved: fall back to the copy
            pass
    return torch.empty(shape, dtype=torch.uint8)


class BatchedPackedDataset(_PackedRows, Dataset):
    """The packed cache read a whole batch at a time: ``__getitems__(indices)`` -> one batch dict.

    torch's DataLoader calls ``__getitems__`` with a batch's indices when a dataset has it; use
    :func:`batch_as_is` as ``collate_fn``. Each batch is one pass over its rows in ascending
    order (sequential reads of the memory map) straight into a uint8 (N, 3, S, S) tensor, with
    the per-image random crops/flips (and jitter, when ``augment.jitter`` > 0) of ``augment``
    drawn from a generator seeded from ``(seed, epoch, indices)``: the same batch of the same
    epoch always gets the same augmentation, in any process or thread. ``__getitem__(i)`` is the
    one-image batch squeezed (for tools that index items).
    """

    def __init__(
        self,
        data_dir: str | Path,
        rows: pd.DataFrame,
        augment: BatchAugment,
        seed: int = 0,
        size: int | None = None,
    ) -> None:
        self._open_packed(data_dir, rows, size)
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self._generator: torch.Generator | None = None

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_generator": None}

    def __getitems__(self, indices: list[int]) -> dict:
        idx = np.asarray(indices, dtype=np.int64)
        g = None
        if self.augment.random:
            if self._generator is None:
                self._generator = torch.Generator()
            g = self._generator
            g.manual_seed(mix_seed(self.seed, self.epoch, idx))
        _, h, w, _ = self.shape
        plan = self.augment.plan(len(idx), h, w, g)
        out = _batch_tensor((len(idx), 3, self.augment.size, self.augment.size))
        self.augment.render(self._pixels(), self.index[idx], plan, out)
        return {"image": out, "target": self.targets[idx], "id": torch.from_numpy(idx)}

    def __getitem__(self, i: int) -> dict:
        batch = self.__getitems__([i])
        return {"image": batch["image"][0], "target": batch["target"][0], "id": i}


def batch_as_is(batch: dict) -> dict:
    """``collate_fn`` of :class:`BatchedPackedDataset`: its ``__getitems__`` already made the batch."""
    return batch


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
    data_dir: str | Path,
    rows: pd.DataFrame,
    transform: Callable | None,
    cache: str = "jpeg",
    seed: int | None = None,
    ram_cache_mb: float = 0,
) -> Dataset:
    """The per-item dataset of ``rows`` read from the chosen cache (same items, same transforms).

    ``jpeg``: the resized file cache (``images/``, JPEG or lossless PNG); ``packed``: the uint8
    memory-mapped array written by prep with ``packed=true``. ``seed``: per-item reseeding of a
    reseedable transform (training, see :class:`ManifestDataset`). ``ram_cache_mb``: keep decoded
    JPEG-cache images in memory up to this budget (the packed cache is in the page cache already).
    """
    if cache == "jpeg":
        return ManifestDataset(data_dir, rows, transform, seed=seed, ram_cache_mb=ram_cache_mb)
    if cache == "packed":
        return PackedDataset(data_dir, rows, transform, seed=seed)
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


# ---------------------------------------------------------------------------------------------
# the training loop's interface


