"""Config dataclasses of the data stages (``prep:`` and ``folds:`` sections of an experiment)."""

from __future__ import annotations

from dataclasses import dataclass

from common.config import opt
from common.errors import ConfigError, close_matches

SOURCES = ("synthetic", "gld_v2", "gld_v1", "imagefolder", "cifar10", "cifar100")
TEST_FORMATS = ("auto", "glr2020", "glr2019", "folder")  # data_prep.competition reads them
OFFICIAL_TEST_SPLIT = ("cifar10", "cifar100")  # sources whose own test set is the internal test split


def parse_top_k(value: object) -> int | str:
    """``top_k`` from YAML or the command line: a positive integer or ``all`` (kept as the int
    when a number, so the prep fingerprint of an existing config does not change)."""
    if isinstance(value, str) and value.strip().lower() == "all":
        return "all"
    try:
        k = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        k = float("nan")
    if not (k == k and k == int(k) and k > 0):
        raise ConfigError(f"prep: top_k must be a positive integer or 'all', got {value!r}")
    return int(k)


@dataclass
class PrepConfig:
    """The prep stage (``prep:`` section): raw source -> selection -> splits -> caches -> manifests."""

    # ---- where
    dataset: str = opt("synthetic", help="output folder name: <data_root>/<dataset>/")
    source: str = opt("synthetic", help="synthetic | gld_v2 | gld_v1 | imagefolder | cifar10 | cifar100")
    source_root: str | None = opt(None, help="raw data folder (synthetic default: <data_root>/raw/<dataset>)")
    data_root: str = opt("data", help="where data/<dataset>/ is written")
    label_source: str = opt("train", help="gld_v2 labels: train (train.csv) | clean (train_clean.csv)")
    # ---- selection and splits (seed 001: top 1000 classes, then 0.1 of their images)
    top_k: int | str = opt(1000, help="keep the K most frequent classes; all = every class (all of GLD v1/v2)")
    min_images: int = opt(
        0, help="keep only classes with at least N images in the source (before top_k and sampling; 0 = no limit)"
    )
    sample_ratio: float = opt(0.1, help="then keep this fraction of their images (per class, at least 1)")
    min_per_class: int = opt(0, help="drop classes with fewer images (after sampling)")
    max_per_class: int | None = opt(None, help="cap images per class (after sampling; none = no cap)")
    val_frac: float = opt(0.125, help="share of each class in val.csv")
    test_frac: float = opt(
        0.125, help="share of each class in test.csv (the internal test split; > 0, CIFAR: its own test set)"
    )
    seed: int = opt(0, help="seed of sampling, splits and the synthetic generator")
    # ---- image cache
    image_size: int = opt(256, help="cached image side (seed 001: 256, then random crop 224)")
    resize_mode: str = opt("square", help="square (stretch to size x size) | shorter (shorter side, centre crop)")
    jpeg_quality: int = opt(92, help="JPEG quality of the file cache")
    image_format: str = opt("auto", help="file cache: jpeg | png (lossless) | auto (png for CIFAR, else jpeg)")
    packed: bool = opt(False, help="also write packed_<size>.u8 (+ .json index): uint8 memmap of every manifest")
    workers: int = opt(2, help="threads decoding/resizing (PIL releases the GIL)")
    # ---- the competition's test set and non-landmarks (data_prep.competition)
    test_root: str | None = opt(
        None,
        help="the competition's test folder -> competition.csv + competition_order.csv "
        "(synthetic default: <source_root>/competition)",
    )
    test_format: str = opt("auto", help="layout of test_root: auto | glr2020 | glr2019 | folder")
    solution_csv: str | None = opt(
        None,
        help="labels of the test set (id,landmarks,Usage as recognition_solution_v2.1.csv); "
        "default: that file (or solution.csv) in test_root when present",
    )
    nonlandmark_root: str | None = opt(
        None,
        help="folder of images showing no landmark (recursive, id = file stem) "
        "(synthetic default: <source_root>/nonlandmark)",
    )
    nonlandmark_test_share: float = opt(
        0.5, help="share of the internal test split made of non-landmark images (the rest of them: nonlandmark.csv)"
    )
    # ---- synthetic default only (data_prep.synthetic)
    synth_classes: int = opt(40, help="synthetic: generated landmarks")
    synth_max_per_class: int = opt(300, help="synthetic: photos of the largest class")
    synth_min_per_class: int = opt(4, help="synthetic: photos of the smallest classes")
    synth_tail: float = opt(1.1, help="synthetic: long-tail exponent of the class sizes")
    synth_image_size: int = opt(128, help="synthetic: rendered image height")
    synth_nonlandmark: int | None = opt(
        None, help="synthetic: non-landmark scenes (none = auto: 0.17 x the landmark photos, at least 24; 0 = none)"
    )
    synth_competition: int | None = opt(
        None, help="synthetic: competition test images (none = auto: 0.12 x the landmark photos, at least 24; 0 = none)"
    )
    synth_competition_landmarks: float = opt(0.38, help="synthetic: share of competition test images with a landmark")

    def __post_init__(self) -> None:
        self.top_k = parse_top_k(self.top_k)

    def validate(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"prep: unknown source '{self.source}' ({close_matches(self.source, SOURCES)})")
        if self.min_images < 0:
            raise ConfigError(f"prep: min_images must be >= 0, got {self.min_images}")
        if not 0 < self.sample_ratio <= 1:
            raise ConfigError(f"prep: sample_ratio must be in (0, 1], got {self.sample_ratio}")
        if self.val_frac < 0 or self.test_frac < 0 or self.val_frac + self.test_frac >= 1:
            raise ConfigError(f"prep: val_frac + test_frac must be in [0, 1), got {self.val_frac} + {self.test_frac}")
        if self.test_frac == 0 and self.source not in OFFICIAL_TEST_SPLIT:
            raise ConfigError(
                "prep: test_frac=0 leaves no internal test split, which training evaluates after the last epoch "
                "(and the ensemble scores); use test_frac > 0, e.g. 0.1"
            )
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
        if self.test_format not in TEST_FORMATS:
            raise ConfigError(
                f"prep: unknown test_format '{self.test_format}' ({close_matches(self.test_format, TEST_FORMATS)})"
            )
        if not 0 <= self.nonlandmark_test_share < 1:
            raise ConfigError(f"prep: nonlandmark_test_share must be in [0, 1), got {self.nonlandmark_test_share}")
        for key in ("synth_nonlandmark", "synth_competition"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ConfigError(f"prep: {key} must be >= 0 (or none = auto), got {value}")
        if not 0 <= self.synth_competition_landmarks <= 1:
            raise ConfigError(
                f"prep: synth_competition_landmarks must be in [0, 1], got {self.synth_competition_landmarks}"
            )

    def cache_format(self) -> str:
        """The file cache format: lossless PNG for CIFAR (JPEG at 32 px is lossy), JPEG for photos."""
        if self.image_format != "auto":
            return self.image_format
        return "png" if self.source in ("cifar10", "cifar100") else "jpeg"


@dataclass
class FoldsConfig:
    """The folds stage (``folds:`` section): seeded stratified K-fold file over train.csv.

    Class-size rule (GLD v2: most classes have 2-5 photos): classes with at least ``k`` training
    images are split stratified (each fold gets its share); classes with fewer are spread over
    the folds round-robin in a seeded order, so every training image is in exactly one fold and
    gets one out-of-fold prediction, and no class has two images in one fold. (Train-only for
    small classes would leave them without OOF predictions and break the fold file's contract:
    every train id in 0..k-1.) A train manifest that leaves a fold empty is refused.
    """

    dataset: str = opt("synthetic", help="data set folder under data_root")
    data_root: str = opt("data", help="where prep wrote data/<dataset>/")
    folds_dir: str = opt("folds", help="where fold files go: <folds_dir>/<dataset>_k<K>_s<fold_seed>.csv")
    k: int = opt(5, help="number of folds")
    fold_seed: int = opt(42, help="seed of the fold assignment (the same key as train's fold_seed)")

    def validate(self) -> None:
        if self.k < 2:
            raise ConfigError(f"folds: k must be >= 2, got {self.k}")
