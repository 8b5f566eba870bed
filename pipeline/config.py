"""The training config (``train:`` section) and what every stage config shares (precision
choices, ``auto|true|false`` keys). The later stages' configs are :mod:`pipeline.config_stages`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from common.config import check_declared, opt
from common.errors import ConfigError

# Valid names are declared once, on the field (``opt(choices=...)``); the factories that build
# them by name read them from there (``common.config.choices_of``) and a test checks each
# factory's table has exactly these names.
CHECKPOINT_METRICS = ("top1", "gap", "loss")
PRECISIONS = ("auto", "no", "bf16", "fp16")
BALANCING = ("none", "sqrt", "inverse")


def _auto_bool(stage: str, key: str, value) -> str:
    """An ``auto | true | false`` key, normalised (YAML's booleans included) and checked."""
    v = str(value).lower()
    if v not in ("auto", "true", "false"):
        raise ConfigError(f"{stage}: {key} must be auto|true|false, got '{value}'")
    return v


@dataclass
class TrainConfig:
    """The training stage (``train:`` section). Defaults are seed 001's recipe."""

    # ---- data and where things go
    dataset: str = opt("synthetic", help="data set folder under data_root (prep's 'dataset')")
    data_root: str = opt("data", help="where prep wrote data/<dataset>/", recipe=False)
    folds_dir: str = opt("folds", help="where the fold files are", recipe=False)
    runs_root: str = opt("runs", help="run folders: <runs_root>/<experiment>/<model>/fold<k>/", recipe=False)
    experiment: str = opt("default", help="name of this set of runs (a folder under runs_root)", recipe=False)
    models: list[str] = opt(["resnet18"], help="registry names, or timm:<name> for any timm model", recipe=False)
    folds: list[int] = opt([0], help="folds to train; -1 = holdout (train manifest vs val manifest)", recipe=False)
    k: int = opt(5, help="number of folds of the fold file")
    fold_seed: int = opt(42, help="seed of the fold file")
    # ---- optimisation (seed 001: Adam 5e-4, betas 0.9/0.999, batch 64, 25 epochs, halve on drop)
    epochs: int = opt(25, help="epochs; raising it continues a finished fold", recipe=False, ge=1)
    batch_size: int = opt(64, help="images per optimizer step per process (DDP: per GPU)", ge=1)
    optimizer: str = opt("adam", help="adam | adamw | sgd", choices=("adam", "adamw", "sgd"))
    lr: float = opt(5e-4, help="peak learning rate", gt=0)
    beta1: float = opt(0.9, help="Adam/AdamW beta1", ge=0, le=1)
    beta2: float = opt(0.999, help="Adam/AdamW beta2", ge=0, le=1)
    momentum: float = opt(0.9, help="SGD momentum", ge=0)
    nesterov: bool = opt(True, help="SGD with Nesterov momentum")
    weight_decay: float = opt(0.0, help="weight decay (AdamW: decoupled; no decay on norms and biases)", ge=0)
    schedule: str = opt(
        "halve_on_drop",
        help="halve_on_drop (seed 001) | plateau | cosine | step | none",
        choices=("halve_on_drop", "plateau", "cosine", "step", "none"),
    )
    lr_factor: float = opt(0.5, help="LR multiplier of halve_on_drop, plateau and step", ge=0, le=1)
    plateau_patience: int = opt(2, help="plateau: epochs without improvement before the LR drops")
    plateau_metric: str = opt(
        "top1", help="plateau: the validation metric watched (top1 | gap | loss)", choices=CHECKPOINT_METRICS
    )
    step_epochs: int = opt(10, help="step: multiply the LR by lr_factor every this many epochs", ge=1)
    min_lr: float = opt(1e-6, help="floor of plateau and cosine", ge=0)
    warmup_epochs: float = opt(
        0.0, help="linear warm-up from warmup_lr to lr over this many epochs (any schedule)", ge=0
    )
    warmup_lr: float = opt(1e-6, help="LR at the start of the warm-up", ge=0)
    head_lr_mult: float = opt(1.0, help="LR of pool/neck/head = lr x this (the backbone: lr)", gt=0)
    layer_decay: float | None = opt(None, help="timm backbones: k layers below the top: lr x this^k", ge=0, le=1)
    accumulate: int = opt(1, help="gradient accumulation: optimizer step every N batches", ge=1)
    clip_grad: float | None = opt(None, help="clip the gradient norm to this value (none = off)", gt=0)
    ema: bool = opt(False, help="keep an EMA of the weights (timm ModelEmaV3); predictions use it")
    ema_decay: float = opt(0.999, help="EMA decay per optimizer step", ge=0, le=1)
    sync_bn: bool = opt(False, help="SyncBatchNorm under DDP (no effect in one process)")
    checkpoint_metric: str = opt("top1", help="best epoch by validation top1 | gap | loss", choices=CHECKPOINT_METRICS)
    # ---- loss
    loss: str = opt("ce", help="ce (cross-entropy; margin heads use it on their margin logits)", choices=("ce",))
    label_smoothing: float = opt(0.0, help="cross-entropy label smoothing", ge=0, le=1)
    # ---- model
    img_size: int = opt(224, help="training crop side (seed 001: random crop 224 from the 256 px cache)", ge=8)
    small_input: bool = opt(False, help="CIFAR 3x3 stem without max-pool")
    pretrained: str = opt("false", help="false | true (timm/torchvision weights, needs a cache offline) | PATH")
    init_from: str | None = opt(None, help="start from weights: a .pt file or a run folder (its best.pt)")
    freeze_backbone: bool = opt(False, help="train only the classifier (seed 003's fine-tuning run)")
    freeze_epochs: int = opt(0, help="train only pool/neck/head for the first N epochs, then everything", ge=0)
    bn_mode: str = opt(
        "train", help="backbone BatchNorm: train | frozen (stats, affine fixed)", choices=("train", "frozen")
    )
    stage_epochs: list[int] = opt([], help="progressive resizing: epochs of each early stage (then img_size)", ge=1)
    stage_img_sizes: list[int] = opt([], help="image side of each early stage (with stage_epochs)", ge=8)
    model_kwargs: dict = opt({}, help="extra keyword arguments of the model builder")
    model_overrides: dict = opt({}, help="per-model changes of any key, e.g. {simple_cnn: {lr: 0.002}}", recipe=False)
    # ---- head (issue: heads and retrieval)
    pool: str = opt("avg", help="global pooling: avg | gem (learnable p, init 3)", choices=("avg", "gem"))
    neck: str = opt(
        "none", help="embedding layer: none | linear (Linear-BN-PReLU of embedding_size)", choices=("none", "linear")
    )
    embedding_size: int = opt(512, help="width of the linear neck", ge=1)
    head: str = opt(
        "linear",
        help="classifier: linear | arcface | subcenter_arcface",
        choices=("linear", "arcface", "subcenter_arcface"),
    )
    arcface_s: float = opt(30.0, help="ArcFace scale s", gt=0)
    arcface_m: float = opt(0.3, help="ArcFace margin m (the largest margin with dynamic_margin)", ge=0)
    subcenters: int = opt(3, help="sub-center ArcFace: sub-centres per class", ge=1)
    dynamic_margin: bool = opt(False, help="per-class margins from class frequency (small classes: larger)")
    margin_min: float = opt(0.05, help="dynamic margins: margin of the largest class", ge=0)
    # ---- input and augmentation
    cache: str = opt(
        "jpeg", help="pixels from: jpeg (resized file cache) | packed (uint8 memmap)", choices=("jpeg", "packed")
    )
    augment: str = opt(
        "default",
        help="default (crop+flip+jitter, seed 001) | rrc (RandomResizedCrop) | strong",
        choices=("default", "rrc", "strong"),
    )
    rrc_scale: list[float] = opt([0.35, 1.0], help="rrc/strong: area range of RandomResizedCrop")
    crop_padding: int = opt(0, help="zero border before the random crop (CIFAR: 4)", ge=0)
    hflip: float = opt(0.5, help="horizontal flip probability", ge=0, le=1)
    color_jitter: float = opt(0.2, help="brightness/contrast/saturation jitter strength (0 = off)", ge=0)
    mixup: float = opt(0.0, help="mixup alpha (0 = off; timm Mixup)", ge=0)
    cutmix: float = opt(0.0, help="cutmix alpha (0 = off)", ge=0)
    mix_prob: float = opt(1.0, help="probability of mixing a batch when mixup/cutmix is on", ge=0, le=1)
    balanced_sampling: str = opt(
        "none", help="class-balanced sampling: none | sqrt (1/sqrt(n_c)) | inverse (1/n_c)", choices=BALANCING
    )
    input_path: str = opt(
        "auto",
        help="auto | batched (packed cache: one read per batch) | per_item",
        choices=("auto", "batched", "per_item"),
    )
    ram_cache_mb: float = opt(
        1024,
        help="keep decoded images of the JPEG cache in RAM up to this many MB each for train and val "
        "(0 = off): epochs after the first skip decoding; same pixels, same run (in-process loading)",
        recipe=False,
        ge=0,
    )
    prefetch: str = opt(
        "auto",
        help="prepare the next batch in a thread while the model runs: auto (on a GPU; off on a CPU, "
        "where the thread takes a core from the model: bench/bench_loop.py) | true | false",
        recipe=False,
    )
    num_workers: int = opt(0, help="DataLoader worker processes (recorded; a resume warns on a change)", recipe=False)
    # ---- speed, hardware, bookkeeping
    mixed_precision: str = opt(
        "auto", help="auto (bf16/fp16 on GPU, bf16 on CPUs with native bf16) | no | bf16 | fp16", choices=PRECISIONS
    )
    channels_last: str = opt("auto", help="auto | true | false")
    cpu: bool = opt(False, help="force the CPU even with a GPU")
    seed: int = opt(0, help="seed of weights, shuffling and augmentation")
    limit_train_batches: int | None = opt(None, help="cut epochs short (smoke tests)")
    keep_last: bool = opt(
        True,
        recipe=False,
        help="keep last.pt after a fold finishes (false saves its size; more epochs then need a retrain)",
    )
    compile: bool = opt(
        False, recipe=False, help="torch.compile the model in place (GPUs: faster steps after a warm-up)"
    )
    grad_checkpointing: bool = opt(
        False, recipe=False, help="recompute activations in the backward (timm models): less memory, ~30% slower"
    )
    pred_topk: int = opt(
        0,
        ge=0,
        recipe=False,
        help="classes kept per row in prediction files: 0 = all up to 1000 classes, else the 20 best; "
        "k > 0: that many (pipeline/scores.py)",
    )
    resume: bool = opt(True, help="continue from last.pt when present", recipe=False)
    progress: bool = opt(True, help="progress bars (only when the output is a terminal)", recipe=False)
    log_with: str = opt(
        "none",
        help="experiment tracking via Accelerate: none | tensorboard | wandb | mlflow",
        recipe=False,
        choices=("none", "tensorboard", "wandb", "mlflow"),
    )

    @property
    def data_dir(self) -> Path:
        """``<data_root>/<dataset>``: the folder prep wrote."""
        return Path(self.data_root) / self.dataset

    def validate(self) -> None:
        """The declared choices and bounds, then what the declarations cannot say."""
        check_declared(self)
        if not self.models:
            raise ConfigError("train: 'models' is empty")
        bad = [f for f in self.folds if not -1 <= f < self.k]
        if bad:
            raise ConfigError(f"train: fold(s) {bad} outside 0..{self.k - 1} (or -1 for holdout)")
        for name, over in self.model_overrides.items():
            if not isinstance(over, dict):
                raise ConfigError(f"train: model_overrides.{name} must be a mapping of keys to values")
            fixed = sorted({"models", "model_overrides", "mixed_precision", "cpu", "log_with"} & set(over))
            if fixed:  # one Accelerator (device, precision) serves every model of a run
                raise ConfigError(f"train: model_overrides.{name} cannot set {fixed}: they hold for the whole run")
        self.channels_last = _auto_bool("train", "channels_last", self.channels_last)
        self.prefetch = _auto_bool("train", "prefetch", self.prefetch)
        p = str(self.pretrained)
        self.pretrained = p.lower() if p.lower() in ("true", "false") else p
        if len(self.rrc_scale) != 2 or not 0 < self.rrc_scale[0] <= self.rrc_scale[1] <= 1:
            raise ConfigError(f"train: rrc_scale must be two numbers 0 < a <= b <= 1, got {self.rrc_scale}")
        if self.freeze_backbone and self.freeze_epochs:
            raise ConfigError("train: give freeze_backbone (always) or freeze_epochs (the first N epochs), not both")
        if len(self.stage_epochs) != len(self.stage_img_sizes):
            raise ConfigError(
                f"train: stage_epochs {self.stage_epochs} and stage_img_sizes {self.stage_img_sizes} "
                "need one entry per stage each"
            )

    @property
    def use_pretrained(self) -> bool | str:
        """False, True, or the path of a local weights file."""
        return {"false": False, "true": True}.get(self.pretrained, self.pretrained)

    @classmethod
    def recipe_keys(cls) -> list[str]:
        """Keys that change what a run computes (a run folder refuses a change of any of them)."""
        return [f.name for f in fields(cls) if f.metadata.get("recipe", True)]

    def for_model(self, name: str) -> TrainConfig:
        """This config with ``model_overrides[name]`` applied (typed and validated like the rest)."""
        from common.config import build_config

        over = self.model_overrides.get(name)
        if not over:
            return self
        values = {k: v for k, v in asdict(self).items() if k != "model_overrides"}
        return build_config(TrainConfig, {**values, **over}, f"train: model_overrides.{name}")


# ---- ensemble / submit (section ``ensemble:``; owned by pipeline/ensemble.py and pipeline/submit.py)
# ---- predict / embed (section ``predict:``; owned by pipeline/predict.py)
# ---- export (section ``export:``; owned by pipeline/export.py)
