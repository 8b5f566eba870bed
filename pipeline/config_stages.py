"""Config dataclasses of the stages after training: ``predict:`` (predict, embed), ``ensemble:``
(ensemble, submit) and ``export:``. The training config is :mod:`pipeline.config`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from common.config import check_declared, opt
from common.errors import ConfigError
from pipeline.config import PRECISIONS, _auto_bool


@dataclass
class EnsembleConfig:
    """The ensemble and submit stages (``ensemble:`` section); see pipeline/ensemble.py."""

    dataset: str = opt("synthetic", help="data set folder under data_root")
    data_root: str = opt("data", help="where prep wrote data/<dataset>/")
    runs_root: str = opt("runs", help="where training wrote runs/<experiment>/")
    experiment: str = opt("default", help="which experiment's runs to ensemble")
    name: str = opt("{experiment}", help="submissions/<name>.csv, a plain file name; {experiment}: the experiment")
    submissions_dir: str = opt("submissions", help="where submissions are written")
    overwrite: bool = opt(False, help="submit: replace submissions/<name>.csv even when another experiment wrote it")
    models: list[str] = opt([], help="models to ensemble; empty = every model with finished folds")
    method: str = opt(
        "mean",
        help="mean (equal weights) | weighted (given or fitted weights) | geometric (weighted log-mean)",
        choices=("mean", "weighted", "geometric"),
    )
    weights: list[float] = opt([], help="one weight >= 0 per entry of 'models' (weighted/geometric); empty = equal")
    fit_weights: bool = opt(False, help="fit the weights on the out-of-fold predictions (weighted/geometric)")
    fit_metric: str = opt("gap", help="what fitted weights maximise on OOF: gap | top1", choices=("gap", "top1"))
    fit_seed: int = opt(0, help="seed of the OOF half split that measures how optimistic the fitted CV is")
    fit_method: str = opt(
        "cv", help="cv (the best on cross-fitted OOF) | equal | best | greedy | shrink0.75/0.5/0.25 | coordinate",
        choices=("cv", "equal", "best", "greedy", "shrink0.75", "shrink0.5", "shrink0.25", "coordinate"),
    )  # fmt: skip
    tta: bool = opt(False, help="read <manifest>_tta.npz where present (else the plain file, with a warning)")
    knn: bool = opt(False, help="read the kNN-fused <manifest>_knn.npz of the embed stage (make embed)")
    threshold: str = opt("none", help="none | tune | a confidence in [0, 1]: lower answers are left empty")
    penalty: str = opt(
        "none", help="none | tune | a strength in [0, 1]: lower the confidence of classes non-landmarks fall into"
    )
    landmarkness: str = opt("none", help="none | tune | a in [0, 1]: conf * (top-1 train-photo similarity)^(16 a)")
    tune_on: str = opt(
        "oof+pool",
        help="tune threshold/penalty on: oof+pool | competition (when labelled)",
        choices=("oof+pool", "competition"),
    )

    @property
    def data_dir(self) -> Path:
        """``<data_root>/<dataset>``: the folder prep wrote."""
        return Path(self.data_root) / self.dataset

    def validate(self) -> None:
        check_declared(self)
        self.name = self.name.replace("{experiment}", self.experiment)
        if self.name in ("", ".", "..") or "/" in self.name or "\0" in self.name or len(self.name.encode()) > 200:
            raise ConfigError(f"ensemble: name '{self.name[:60]}' must be one plain file name (no '/', 1-200 bytes)")
        if self.knn and self.tta:  # make embed fuses the plain predictions: there is no TTA'd kNN file
            raise ConfigError("ensemble: knn=true reads make embed's kNN files, made without TTA: not with tta=true")
        if self.weights:
            if len(self.weights) != len(self.models):
                raise ConfigError(
                    f"ensemble: 'weights' needs one value per entry of 'models' (got {len(self.weights)} weight(s) "
                    f"for models {self.models or '[] (all found)'}); e.g. models=resnet18,simple_cnn weights=0.8,0.2"
                )
            if not all(math.isfinite(w) and w >= 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ConfigError(f"ensemble: weights must be finite, >= 0 and not all 0, got {self.weights}")
        if self.method == "mean" and (self.weights or self.fit_weights):
            raise ConfigError("ensemble: method 'mean' uses equal weights; use method=weighted (or geometric)")
        if self.method == "weighted" and not (self.weights or self.fit_weights):
            raise ConfigError("ensemble: method 'weighted' needs 'weights' or fit_weights=true")
        if self.weights and self.fit_weights:
            raise ConfigError("ensemble: give 'weights' or fit_weights=true, not both")
        for key in ("threshold", "penalty", "landmarkness"):  # parsed now: a bad value is one error at load time
            self._setting(key, getattr(self, key))

    @staticmethod
    def _setting(key: str, value: str) -> float | str | None:
        v = str(value).strip().lower()
        if v in ("none", "off", "false", ""):
            return None
        if v == "tune":
            return "tune"
        try:
            f = float(v)
        except ValueError:
            f = float("nan")
        if not 0 <= f <= 1:
            raise ConfigError(f"ensemble: {key} must be none, tune or a number in [0, 1], got '{value}'")
        return f

    @property
    def threshold_setting(self) -> float | str | None:
        """None (off), ``"tune"`` or the confidence below which answers are left empty."""
        return self._setting("threshold", self.threshold)

    @property
    def penalty_setting(self) -> float | str | None:
        """None (off), ``"tune"`` or the strength of the per-class non-landmark penalty."""
        return self._setting("penalty", self.penalty)


@dataclass
class PredictConfig:
    dataset: str = opt("synthetic", help="data set folder under data_root")
    data_root: str = opt("data", help="where prep wrote data/<dataset>/")
    runs_root: str = opt("runs", help="where training wrote runs/<experiment>/")
    experiment: str = opt("default", help="which experiment's finished runs predict")
    models: list[str] = opt([], help="models to predict with; empty = every model with finished folds")
    folds: list[int] = opt([], help="folds to predict with; empty = every finished fold (-1 = holdout)")
    manifests: list[str] = opt(
        [],
        help="what to predict: test | competition | nonlandmark | oof (the fold's validation rows) | any "
        "data/<dataset>/<name>.csv; empty = every one of competition, nonlandmark, test that exists",
    )
    folds_dir: str = opt("folds", help="where the fold files are (only 'oof' needs them)")
    tta_flip: bool = opt(False, help="test-time augmentation: also predict the mirrored image")
    tta_scales: list[float] = opt(
        [1.0], help="TTA scales: s = the same view at s x the pixels (cached image resized by s, centre crop)"
    )
    batch_size: int = opt(64, help="images per forward pass per process", ge=1)
    num_workers: int = opt(0, help="DataLoader worker processes", ge=0)
    mixed_precision: str = opt(
        "auto", help="auto (bf16/fp16 on GPU, bf16 on CPUs with native bf16) | no | bf16 | fp16", choices=PRECISIONS
    )
    channels_last: str = opt("auto", help="auto | true | false")
    cpu: bool = opt(False, help="force the CPU even with a GPU")
    pred_topk: int = opt(
        0,
        ge=0,
        help="classes kept per row in prediction files: 0 = all up to 1000 classes, else the 20 best; "
        "k > 0: that many (pipeline/scores.py)",
    )
    probs_dtype: str = opt(
        "float16", help="stored probabilities (float16: half the disk)", choices=("float16", "float32")
    )
    progress: bool = opt(True, help="progress bar (only when stderr is a terminal)")
    images: str | None = opt(None, help="a folder of your own photos (recursive; id = file stem): top-k CSV")
    out: str | None = opt(None, help="images=DIR: the CSV (default runs_root/<experiment>/predictions_<dir>.csv)")
    top_k: int = opt(5, help="images=DIR: landmarks per image in the CSV", ge=1)
    bundle: str | None = opt(None, help="an export bundle folder: predict with its runs instead of runs_root")
    test_root: str | None = opt(None, help="the competition folder, read directly (no prep); writes a workspace")
    test_format: str = opt("auto", help="test_root layout", choices=("auto", "glr2020", "glr2019", "folder"))
    work_dir: str = opt("work", help="test_root: workspace <work_dir>/data/<dataset>/ + <work_dir>/runs/<experiment>/")
    workers: int = opt(2, help="threads decoding and resizing images (images=DIR, test_root=DIR)", ge=1)
    # embed stage: embeddings + kNN re-ranking
    knn: bool = opt(True, help="embed: also write kNN-fused predictions (<manifest>_knn.npz)")
    knn_k: int = opt(10, help="embed: neighbours per query", ge=1)
    knn_power: float = opt(1.0, help="embed: a neighbour votes sim^power for its class")
    knn_alpha: float = opt(1.0, help="embed: fused = clf_prob^alpha * knn_score^beta (when not tuned)")
    knn_beta: float = opt(1.0, help="embed: see knn_alpha")
    knn_tune: bool = opt(True, help="embed: tune alpha/beta for GAP on the OOF rows + the non-landmark pool")
    knn_compute_dtype: str = opt(
        "float32", help="embed: similarity products in float32 (exact) | bfloat16", choices=("float32", "bfloat16")
    )

    @property
    def data_dir(self) -> Path:
        """``<data_root>/<dataset>``: the folder prep wrote."""
        return Path(self.data_root) / self.dataset

    def validate(self) -> None:
        check_declared(self)
        if not self.tta_scales or not all(math.isfinite(s) and s > 0 for s in self.tta_scales):
            raise ConfigError(f"predict: tta_scales must be numbers > 0, got {self.tta_scales}")
        if len(set(self.tta_scales)) != len(self.tta_scales):
            raise ConfigError(f"predict: tta_scales has a repeated scale: {self.tta_scales}")
        self.channels_last = _auto_bool("predict", "channels_last", self.channels_last)
        if self.images and self.test_root:
            raise ConfigError("predict: give images=DIR (your photos) or test_root=DIR (the competition), not both")
        if self.bundle and not (self.images or self.test_root):
            raise ConfigError("predict: bundle=DIR needs test_root=DIR (the competition folder) or images=DIR")

    @property
    def tta(self) -> bool:
        """True when any test-time augmentation is on (the output files get the ``_tta`` suffix)."""
        return self.tta_flip or list(self.tta_scales) != [1.0]


@dataclass
class ExportConfig:
    dataset: str = opt("synthetic", help="data set folder under data_root (its label map goes into the bundle)")
    data_root: str = opt("data", help="where prep wrote data/<dataset>/")
    runs_root: str = opt("runs", help="where training wrote runs/<experiment>/")
    experiment: str = opt("default", help="the experiment to export")
    out_dir: str = opt("export", help="bundle folder: <out_dir>/<experiment>/")
    models: list[str] = opt([], help="models to export; empty = every model with finished folds")
    folds: list[int] = opt([], help="folds to export; empty = every finished fold")
    fuse: bool = opt(True, help="save re-parameterised (fused) weights of models that have reparameterize()")
    wheel: bool = opt(True, help="build the project's wheel into the bundle (offline: pip wheel --no-index)")

    @property
    def data_dir(self) -> Path:
        """``<data_root>/<dataset>``: the folder prep wrote."""
        return Path(self.data_root) / self.dataset
