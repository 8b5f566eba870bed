"""Config dataclasses of the training and ensembling stages (``train:`` / ``ensemble:`` sections)."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.config import opt
from common.errors import ConfigError


@dataclass
class TrainConfig:
    dataset: str = "synthetic"
    data_root: str = "data"
    folds_dir: str = "folds"
    runs_root: str = "runs"
    experiment: str = "default"
    models: list[str] = field(default_factory=lambda: ["resnet18"])
    folds: list[int] = field(default_factory=lambda: [0])  # -1 = holdout: train on train, validate on val
    k: int = 5
    fold_seed: int = 42
    # seed 001 recipe
    epochs: int = 25
    batch_size: int = 64
    lr: float = 5e-4
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    lr_rule: str = "halve_on_drop"  # seed 001: halve when val top-1 drops vs the previous epoch; or "none"
    lr_factor: float = 0.5
    # model
    img_size: int = 224  # random crop from the cached image (seed 001: 256 -> 224)
    small_input: bool = False  # CIFAR 3x3 stem
    pretrained: bool = False
    freeze_backbone: bool = False  # train only the classifier (seed 003's fine-tuning run)
    model_kwargs: dict = field(default_factory=dict)
    # per-model recipe changes, e.g. {simple_cnn: {lr: 0.002, epochs: 25}}; any key of this config
    model_overrides: dict = field(default_factory=dict)
    cache: str = "jpeg"  # where pixels come from: "jpeg" (resized JPEG cache) | "packed" (uint8 memmap)
    # augmentation (train only): random crop + flip always; jitter strength 0 = off
    crop_padding: int = 0  # zero border before the random crop (CIFAR: 4)
    hflip: float = 0.5
    color_jitter: float = 0.2
    # speed / hardware
    mixed_precision: str = "auto"  # auto (bf16/fp16 on GPU, bf16 on CPUs with native bf16) | no | bf16 | fp16
    channels_last: str = "auto"  # auto | true | false
    num_workers: int = 0
    cpu: bool = False  # force CPU even with a GPU
    seed: int = 0
    limit_train_batches: int | None = None  # debugging/smoke: cut epochs short
    resume: bool = True  # continue from last.pt when present
    progress: bool = True

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("train: 'models' is empty")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("train: epochs and batch_size must be >= 1")
        bad = [f for f in self.folds if not -1 <= f < self.k]
        if bad:
            raise ConfigError(f"train: fold(s) {bad} outside 0..{self.k - 1} (or -1 for holdout)")
        for name, over in self.model_overrides.items():
            if not isinstance(over, dict):
                raise ConfigError(f"train: model_overrides.{name} must be a mapping of keys to values")
            fixed = sorted({"models", "model_overrides", "mixed_precision", "cpu"} & set(over))
            if fixed:  # one Accelerator (device, precision) serves every model of a run
                raise ConfigError(f"train: model_overrides.{name} cannot set {fixed}: they hold for the whole run")
        if self.lr_rule not in ("halve_on_drop", "none"):
            raise ConfigError(f"train: lr_rule must be 'halve_on_drop' or 'none', got '{self.lr_rule}'")
        self.channels_last = str(self.channels_last).lower()
        if self.channels_last not in ("auto", "true", "false"):
            raise ConfigError(f"train: channels_last must be auto|true|false, got '{self.channels_last}'")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ConfigError(f"train: mixed_precision must be auto|no|bf16|fp16, got '{self.mixed_precision}'")


    def for_model(self, name: str) -> TrainConfig:
        """This config with ``model_overrides[name]`` applied (typed and validated like the rest)."""
        from dataclasses import asdict

        from common.config import build_config

        over = self.model_overrides.get(name)
        if not over:
            return self
        values = {k: v for k, v in asdict(self).items() if k != "model_overrides"}
        return build_config(TrainConfig, {**values, **over}, f"train: model_overrides.{name}")


# ---- ensemble / submit (section ``ensemble:``; owned by pipeline/ensemble.py and pipeline/submit.py)
@dataclass
class EnsembleConfig:
    dataset: str = opt("synthetic", help="data set folder under data_root")
    data_root: str = opt("data", help="where prep wrote data/<dataset>/")
    runs_root: str = opt("runs", help="where training wrote runs/<experiment>/")
    experiment: str = opt("default", help="which experiment's runs to ensemble")
    name: str = opt("default", help="submissions/<name>.csv")
    submissions_dir: str = opt("submissions", help="where submissions are written")
    models: list[str] = opt([], help="models to ensemble; empty = every model with finished folds")
    weights: list[float] = opt([], help="one weight per entry of 'models'; empty = equal")

    def validate(self) -> None:
        if self.weights and len(self.weights) != len(self.models):
            raise ConfigError("ensemble: 'weights' needs one value per entry of 'models'")


# ---- predict / embed (section ``predict:``; owned by pipeline/predict.py)
@dataclass
class PredictConfig:
    dataset: str = opt("synthetic", help="data set folder under data_root")
    data_root: str = opt("data", help="where prep wrote data/<dataset>/")
    runs_root: str = opt("runs", help="where training wrote runs/<experiment>/")
    experiment: str = opt("default", help="which experiment's finished runs predict")
    models: list[str] = opt([], help="models to predict with; empty = every model with finished folds")


# ---- export (section ``export:``; owned by pipeline/export.py)
@dataclass
class ExportConfig:
    dataset: str = opt("synthetic", help="data set folder under data_root (its label map goes into the bundle)")
    data_root: str = opt("data", help="where prep wrote data/<dataset>/")
    runs_root: str = opt("runs", help="where training wrote runs/<experiment>/")
    experiment: str = opt("default", help="the experiment to export")
    out_dir: str = opt("export", help="bundle folder: <out_dir>/<experiment>/")
