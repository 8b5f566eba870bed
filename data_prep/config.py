"""Config dataclasses of the data stages (``prep:`` and ``folds:`` sections of an experiment)."""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import ConfigError, close_matches

SOURCES = ("synthetic", "gld_v2", "gld_v1", "imagefolder", "cifar10", "cifar100")


@dataclass
class PrepConfig:
    dataset: str = "synthetic"  # output folder name: <data_root>/<dataset>/
    source: str = "synthetic"  # one of SOURCES
    source_root: str | None = None  # raw data (default for synthetic: <data_root>/raw/<dataset>)
    data_root: str = "data"
    label_source: str = "train"  # gld_v2: "train" (train.csv) or "clean" (train_clean.csv)
    top_k: int = 1000  # keep the K most frequent classes (seed 001: 1000)
    sample_ratio: float = 0.1  # then keep this fraction of their images (seed 001: 0.1)
    min_per_class: int = 0  # drop classes with fewer images (after sampling)
    max_per_class: int | None = None  # cap images per class (after sampling)
    val_frac: float = 0.125
    test_frac: float = 0.125
    seed: int = 0
    image_size: int = 256  # cached image side (seed 001: 256, then random crop 224)
    resize_mode: str = "square"  # "square" (stretch to size x size) | "shorter" (shorter side, centre crop)
    jpeg_quality: int = 92
    image_format: str = "auto"  # file cache: "jpeg" | "png" (lossless) | "auto" (png for CIFAR, else jpeg)
    packed: bool = False  # also write packed_<size>.u8 (+ .json index): uint8 memmap for fast training input
    workers: int = 2  # threads decoding/resizing (PIL releases the GIL)
    # synthetic default only
    synth_classes: int = 40
    synth_max_per_class: int = 300
    synth_min_per_class: int = 4
    synth_tail: float = 1.1  # long-tail exponent of the class sizes
    synth_image_size: int = 128

    def validate(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"prep: unknown source '{self.source}' ({close_matches(self.source, SOURCES)})")
        if self.top_k <= 0:
            raise ConfigError(f"prep: top_k must be positive, got {self.top_k}")
        if not 0 < self.sample_ratio <= 1:
            raise ConfigError(f"prep: sample_ratio must be in (0, 1], got {self.sample_ratio}")
        if self.val_frac < 0 or self.test_frac < 0 or self.val_frac + self.test_frac >= 1:
            raise ConfigError(f"prep: val_frac + test_frac must be in [0, 1), got {self.val_frac} + {self.test_frac}")
        if self.resize_mode not in ("square", "shorter"):
            raise ConfigError(f"prep: resize_mode must be 'square' or 'shorter', got '{self.resize_mode}'")
        if self.label_source not in ("train", "clean"):
            raise ConfigError(f"prep: label_source must be 'train' or 'clean', got '{self.label_source}'")
        if self.image_format not in ("auto", "jpeg", "png"):
            raise ConfigError(f"prep: image_format must be 'auto', 'jpeg' or 'png', got '{self.image_format}'")
        if self.min_per_class < 0 or (self.max_per_class is not None and self.max_per_class < 1):
            raise ConfigError("prep: min_per_class must be >= 0 and max_per_class >= 1 (or none)")
        if self.max_per_class is not None and self.max_per_class < self.min_per_class:
            raise ConfigError(
                f"prep: max_per_class ({self.max_per_class}) is below min_per_class ({self.min_per_class})"
            )
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"prep: jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.image_size < 8:
            raise ConfigError(f"prep: image_size must be >= 8, got {self.image_size}")

    def cache_format(self) -> str:
        """The file cache format: lossless PNG for CIFAR (JPEG at 32 px is lossy), JPEG for photos."""
        if self.image_format != "auto":
            return self.image_format
        return "png" if self.source in ("cifar10", "cifar100") else "jpeg"


@dataclass
class FoldsConfig:
    dataset: str = "synthetic"
    data_root: str = "data"
    folds_dir: str = "folds"
    k: int = 5
    seed: int = 42

    def validate(self) -> None:
        if self.k < 2:
            raise ConfigError(f"folds: k must be >= 2, got {self.k}")
