"""Ensembling: fold averages per model, the model ensemble, post-processing, the leaderboard.

Reads prediction files only (never models; format: :mod:`pipeline.predfile`): per finished run
folder ``runs/<experiment>/<model>/fold<k>/`` its ``oof.npz`` (the fold's validation rows) and
``test.npz``, and what ``pipeline predict`` adds (``nonlandmark.npz``, ``competition.npz``,
``<manifest>_tta.npz``; names from :func:`common.schema.pred_file`).

* **Per model**, the folds' probabilities of a manifest are averaged, and its OOF rows are
  concatenated into one CV set.
* **The ensemble** (``method``): ``mean`` (equal weights), ``weighted`` (given weights, or
  weights fitted on the OOF rows: ``fit_weights``), ``geometric`` (``softmax(sum_m w_m log p_m)``,
  i.e. the normalised exp of the weighted mean log-probability; it rewards agreement: a class
  one model rules out stays low). Fitted weights come from a coordinate search on the simplex
  (:func:`fit_weights`), starting from equal weights, so they never score below equal weights
  on the rows they were fitted on. How optimistic that fitted CV is: 2-fold cross-fitting
  (fit on one half of the OOF rows, score on the other, both ways) gives an honest CV
  (leaderboard fold ``cv_crossfit``, next to the in-sample ``cv``).
* **Streaming**: a manifest's ensemble holds one prediction file in memory at a time plus
  float32 accumulators (the model's fold sum and the ensemble): 20 runs of a 100k x 1000 test
  set need about 1 GB (``bench/bench_ensemble_scale.py``).
* **TTA** (``tta: true``): ``<manifest>_tta.npz`` where a run has it; a run without it falls back
  to the plain file with one warning naming the files (mixing is allowed: TTA files are
  optional per run, and the warning says which ones lack it).
* **Checks** before anything is written (one error line each): every file's classes and
  label map (``meta`` ``num_classes``/``label_map_sha``) match ``data/<dataset>/label_map.csv``;
  its prep fingerprint matches ``prep_report.json`` and the other runs; files of one manifest
  cover the same ids with the same labels; probabilities are finite and within [0, 1]. A model
  listed in ``models`` without a finished fold is an error; with ``models`` empty, such a
  folder is warned about and shown on the leaderboard as missing.
* **Post-processing** against non-landmarks (``threshold``, ``penalty``): :mod:`pipeline.postprocess`,
  tuned on the OOF rows plus the non-landmark pool (or a labelled competition set), never on
  the internal test split, which reports the held-out effect (rows ``ensemble+penalty`` ...).

Outputs of the ensemble stage: the leaderboard (``runs/<experiment>/leaderboard.*``, under the
experiment's folder lock) and ``submissions/<name>.csv`` of the internal test ids. The
competition submission is :mod:`pipeline.submit`'s.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from common import schema
from common.errors import DataError, PipelineError
from common.io import write_csv
from common.lock import folder_lock
from pipeline.config import EnsembleConfig
from pipeline.leaderboard import run_info, write_leaderboard
from pipeline.metrics import gap, score_all, top1
from pipeline.postprocess import PostProcess, TuningSet, fit_postprocess
from pipeline.predfile import load_predictions

log = logging.getLogger(__name__)

EPS = 1e-7  # probability floor before the log of the geometric mean
RANGE_TOL = 1e-2  # float16 probabilities may exceed 1 by a rounding step
_CHUNK = 8192  # rows per block when blending (bounded temporaries)
OOF = "oof"
TEST = "test"


# --------------------------------------------------------------------------- finding runs


def _fold_key(d: Path) -> tuple:
    m = re.fullmatch(r"fold(\d+)", d.name)
    return (0, int(m.group(1)), "") if m else (1, 0, d.name)


def fold_label(d: Path) -> str:
    """``fold3`` -> ``"3"``; other run folder names (``holdout``) as they are."""
    return d.name.removeprefix("fold") if re.fullmatch(r"fold\d+", d.name) else d.name


def discover_runs(
    runs_root: str | Path, experiment: str, models: list[str] | None = None
) -> tuple[dict[str, list[Path]], dict[str, str]]:
    """``({model: finished fold dirs}, {model: what is missing})`` of an experiment.

    A model named in ``models`` without a finished fold is an error; with ``models`` empty, a
    model folder without one is warned about and returned as missing.
    """
    root = Path(runs_root) / experiment
    if not root.is_dir():
        raise DataError(f"no runs for experiment '{experiment}' under {root} (run 'make train' first)")
    names = models or sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    runs: dict[str, list[Path]] = {}
    missing: dict[str, str] = {}
    for name in names:
        folder = root / name
        started = sorted((d for d in folder.glob("*") if d.is_dir()), key=_fold_key)
        done = [d for d in started if (d / schema.RUN_DONE).is_file()]
        if done:
            runs[name] = done
        elif models:
            raise DataError(f"model '{name}' has no finished fold under {folder}")
        else:
            missing[name] = "no finished fold" + (
                f" ({len(started)} started, none has {schema.RUN_DONE})" if started else " (no run folder)"
            )
            log.warning("model '%s': %s under %s; left out of the ensemble", name, missing[name], folder)
    if not runs:
        raise DataError(f"no finished runs under {root}")
    return runs, missing


def finished_runs(runs_root: str | Path, experiment: str, models: list[str] | None = None) -> dict[str, list[Path]]:
    """``{model: [fold dirs with a DONE marker]}`` for an experiment (see :func:`discover_runs`)."""
    return discover_runs(runs_root, experiment, models)[0]


def pred_paths(
    runs: dict[str, list[Path]], manifest: str, tta: bool = False, hint: str = "", knn: bool = False
) -> dict[str, list[Path]]:
    """The prediction file of ``manifest`` in every run, checked to exist (one error naming the first
    missing one). With ``tta``, ``<manifest>_tta.npz`` where present, else the plain file (warned).
    With ``knn``, the kNN-fused ``<manifest>_knn.npz`` of the embed stage (required: no fallback,
    a mix of fused and plain scores would not rank alike)."""
    if knn:
        out = {name: [d / schema.pred_file(manifest, source="knn") for d in dirs] for name, dirs in runs.items()}
        absent = [p for paths in out.values() for p in paths if not p.is_file()]
        if absent:
            more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
            raise DataError(f"kNN prediction file not found: {absent[0]}{more}; run 'make embed' first")
        return out
    out: dict[str, list[Path]] = {}
    no_tta: list[Path] = []
    absent: list[Path] = []
    for name, dirs in runs.items():
        out[name] = []
        for d in dirs:
            path = d / schema.pred_file(manifest, tta)
            if tta and not path.is_file():
                no_tta.append(path)
                path = d / schema.pred_file(manifest)
            if not path.is_file():
                absent.append(path)
            out[name].append(path)
    if absent:
        more = f" (and {len(absent) - 1} more run(s))" if len(absent) > 1 else ""
        raise DataError(f"prediction file not found: {absent[0]}{more}{'; ' + hint if hint else ''}")
    if no_tta:
        log.warning(
            "tta: %d of %d runs have no %s (first: %s); they use %s without TTA",
            len(no_tta),
            sum(len(v) for v in out.values()),
            schema.pred_file(manifest, True),
            no_tta[0],
            schema.pred_file(manifest),
        )
    return out


# --------------------------------------------------------------------------- checks


@dataclass
class Preds:
    """Predictions of one manifest: ids, labels and (N, C) probabilities; ``source`` for messages."""

    ids: np.ndarray
    labels: np.ndarray
    probs: np.ndarray
    source: str = ""


class Checker:
    """The checks every prediction file passes before it is used (one error line each)."""

    def __init__(self, data_dir: str | Path, label_map: pd.DataFrame) -> None:
        self.label_map_path = Path(data_dir) / schema.LABEL_MAP
        self.num_classes = len(label_map)
        self.sha = schema.label_map_sha(label_map)
        self.prep_report = Path(data_dir) / schema.PREP_REPORT
        self.data_fp = schema.prep_fingerprint(data_dir)
        self.run_fp: tuple[str, Path] | None = None
        self.rows: dict[str, tuple[np.ndarray, np.ndarray, Path]] = {}

    def load(self, path: Path, manifest: str | None = None) -> dict:
        """Load a file (stored precision kept) and check it; ``manifest``: also its rows."""
        p = load_predictions(path, dtype=None)
        self.check(path, p)
        if manifest is not None:
            self.same_rows(manifest, path, p["ids"], p["labels"])
        return p

    def check(self, path: Path, p: dict) -> None:
        probs, meta = p["probs"], p["meta"]
        if probs.ndim != 2 or not len(p["ids"]) == len(probs) == len(p["labels"]):
            raise DataError(
                f"{path}: {len(p['ids'])} ids, probabilities of shape {probs.shape}, {len(p['labels'])} labels"
            )
        c = probs.shape[1]
        if c != self.num_classes or int(meta.get("num_classes", c)) != self.num_classes:
            raise DataError(
                f"{path}: {c} classes, but {self.label_map_path} has {self.num_classes}: "
                "a model trained on another label map (re-train, or ensemble it with its own data set)"
            )
        sha = meta.get("label_map_sha")
        if sha and sha != self.sha:
            raise DataError(
                f"{path}: made with label map {sha}, but {self.label_map_path} is {self.sha}: "
                "class i means another landmark (the data were prepped again; re-train or re-predict)"
            )
        fp = meta.get("prep_fingerprint")
        if fp:
            if self.data_fp and fp != self.data_fp:
                raise DataError(
                    f"{path}: predictions of prep {fp}, but {self.prep_report} says {self.data_fp}: "
                    "the data were prepped again since (re-run predict/train on this prep)"
                )
            if self.run_fp and fp != self.run_fp[0]:
                raise DataError(
                    f"{path}: predictions of prep {fp}, but {self.run_fp[1]} of prep {self.run_fp[0]}: "
                    "runs from different preps cannot be ensembled"
                )
            self.run_fp = self.run_fp or (fp, path)
        if len(probs):
            lo, hi = float(probs.min()), float(probs.max())  # NaN propagates: caught below
            if not (lo >= -RANGE_TOL and hi <= 1 + RANGE_TOL):
                raise DataError(
                    f"{path}: probabilities must be finite and within [0, 1], found min {lo} max {hi} "
                    "(rerun the stage that wrote it)"
                )

    def same_rows(self, manifest: str, path: Path, ids: np.ndarray, labels: np.ndarray) -> None:
        """Every file of a manifest covers the same ids, in the same order, with the same labels."""
        ref = self.rows.get(manifest)
        if ref is None:
            self.rows[manifest] = (ids, labels, path)
            return
        rids, rlabels, rpath = ref
        if len(ids) != len(rids):
            raise DataError(
                f"{path}: {len(ids)} rows, but {rpath} has {len(rids)}: prediction files cover different ids"
            )
        if not np.array_equal(ids, rids):
            i = int(np.flatnonzero(ids != rids)[0])
            raise DataError(
                f"{path}: row {i} is id '{ids[i]}', but '{rids[i]}' in {rpath}: prediction files cover different ids"
            )
        if not np.array_equal(labels, rlabels):
            i = int(np.flatnonzero(labels != rlabels)[0])
            raise DataError(
                f"{path}: id '{ids[i]}' has label {labels[i]}, but {rlabels[i]} in {rpath} (different preps?)"
            )


# --------------------------------------------------------------------------- combining


class Blender:
    """Accumulates the models' probabilities into the ensemble, one model at a time.

    ``mean``/``weighted``: ``sum_m w_m p_m``; ``geometric``: ``softmax(sum_m w_m log max(p_m, EPS))``.
    Weights are normalised by the caller (sum 1). Row blocks keep the temporaries small.
    """

    def __init__(self, method: str, shape: tuple[int, int]) -> None:
        if method not in EnsembleConfig.METHODS:
            raise PipelineError(f"unknown ensemble method '{method}' (valid: {', '.join(EnsembleConfig.METHODS)})")
        self.method = method
        self.acc = np.zeros(shape, dtype=np.float32)

    def add(self, probs: np.ndarray, weight: float) -> None:
        """Add one model's probabilities (left unchanged) with its weight."""
        if weight == 0:
            return
        for s in range(0, len(probs), _CHUNK):
            block = np.array(probs[s : s + _CHUNK], dtype=np.float32)
            if self.method == "geometric":
                np.log(np.maximum(block, EPS, out=block), out=block)
            block *= weight
            self.acc[s : s + _CHUNK] += block

    def result(self) -> np.ndarray:
        """The ensemble probabilities: finite, within [0, 1] (the accumulator is reused)."""
        acc = self.acc
        if self.method == "geometric":
            for s in range(0, len(acc), _CHUNK):
                block = acc[s : s + _CHUNK]
                block -= block.max(axis=1, keepdims=True)
                np.exp(block, out=block)
                block /= block.sum(axis=1, keepdims=True)
        np.clip(acc, 0.0, 1.0, out=acc)
        if len(acc) and not np.isfinite(acc.max()):
            raise PipelineError("ensemble: non-finite probabilities (please report: the inputs were checked)")
        return acc


def blend(parts: list[np.ndarray], weights: np.ndarray, method: str) -> np.ndarray:
    """The ensemble of in-memory probability arrays (same rows), float32."""
    b = Blender(method, parts[0].shape)
    for p, w in zip(parts, weights):
        b.add(p, float(w))
    return b.result()


def fold_average(paths: list[Path], checker: Checker, manifest: str) -> Preds:
    """The mean over a model's folds of one manifest, reading one file at a time (float32 sum)."""
    acc: np.ndarray | None = None
    for path in paths:
        p = checker.load(path, manifest)
        if acc is None:
            acc = np.zeros(p["probs"].shape, dtype=np.float32)
            ids, labels = p["ids"], p["labels"]
        acc += p["probs"]
        del p
    acc /= len(paths)
    return Preds(ids, labels, acc, str(paths[0]))


def stream_ensemble(
    paths: dict[str, list[Path]],
    manifest: str,
    weightings: list[dict[str, float]],
    method: str,
    checker: Checker,
    on_model=None,
) -> list[Preds]:
    """One ensemble per entry of ``weightings`` (``{model: weight}``, summing to 1) of ``manifest``.

    Streams: per model one file at a time into its fold average, which is then added to every
    ensemble and dropped. ``on_model(name, preds)`` sees each model's fold average first.
    """
    blenders: list[Blender] = []
    first: Preds | None = None
    for name, files in paths.items():
        avg = fold_average(files, checker, manifest)
        if on_model is not None:
            on_model(name, avg)
        if first is None:
            first = Preds(avg.ids, avg.labels, np.empty((0, 0)), avg.source)
            blenders = [Blender(method, avg.probs.shape) for _ in weightings]
        for b, w in zip(blenders, weightings):
            b.add(avg.probs, w[name])
        del avg
    return [Preds(first.ids, first.labels, b.result(), first.source) for b in blenders]


# --------------------------------------------------------------------------- fitting weights


def answers(parts: list[np.ndarray], weights: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """The ensemble's top-1 ``(pred, conf)`` of in-memory arrays, block by block."""
    n = len(parts[0])
    pred, conf = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.float64)
    for s in range(0, n, _CHUNK):
        pred[s : s + _CHUNK], conf[s : s + _CHUNK] = top1(blend([p[s : s + _CHUNK] for p in parts], weights, method))
    return pred, conf


def objective(pred: np.ndarray, conf: np.ndarray, labels: np.ndarray, metric: str) -> float:
    """What fitted weights maximise: GAP, or top-1 accuracy over the class-labelled rows."""
    if metric == "gap":
        g = gap(pred, conf, labels)
        return -1.0 if np.isnan(g) else g
    known = labels >= 0
    return float((pred[known] == labels[known]).mean()) if known.any() else -1.0


def _move(w: np.ndarray, i: int, v: float) -> np.ndarray:
    """``w`` with ``w[i] = v`` and the others rescaled to keep the sum 1 (equal if all were 0)."""
    out = w.copy()
    rest = 1.0 - w[i]
    others = np.arange(len(w)) != i
    out[others] = (w[others] * (1.0 - v) / rest) if rest > 1e-12 else (1.0 - v) / (len(w) - 1)
    out[i] = v
    return out


def fit_weights(
    parts: list[np.ndarray],
    labels: np.ndarray,
    method: str,
    metric: str = "gap",
    step: float = 0.05,
    max_passes: int = 10,
) -> tuple[np.ndarray, float]:
    """Weights (>= 0, sum 1) maximising ``metric`` of the ensemble on these rows, and that score.

    Coordinate search on the simplex: for each model in turn, try its weight on a grid of
    ``step`` (the others rescaled), keep the best strict improvement; repeat until a pass
    changes nothing. Starts from equal weights, so the result is never worse than them here.
    """
    m = len(parts)
    w = np.full(m, 1.0 / m)
    best = objective(*answers(parts, w, method), labels, metric)
    if m == 1:
        return w, best
    grid = np.linspace(0.0, 1.0, int(round(1 / step)) + 1)
    for _ in range(max_passes):
        changed = False
        for i in range(m):
            for v in grid:
                cand = _move(w, i, float(v))
                if np.allclose(cand, w):
                    continue
                s = objective(*answers(parts, cand, method), labels, metric)
                if s > best + 1e-12:
                    best, w, changed = s, cand, True
        if not changed:
            break
    return w, best


def crossfit(parts: list[np.ndarray], labels: np.ndarray, method: str, metric: str, seed: int) -> dict:
    """Honest CV of fitted weights: fit on one half of the rows, score the other, both ways.

    Returns the cross-fitted ensemble probabilities (each row blended with the weights of the
    half it was NOT in), and the in-sample and held-out objective of each half.
    """
    n = len(labels)
    perm = np.random.default_rng(seed).permutation(n)
    halves = (np.sort(perm[: n // 2]), np.sort(perm[n // 2 :]))
    probs = np.empty((n, parts[0].shape[1]), dtype=np.float32)
    report = {"in_sample": [], "held_out": [], "weights": []}
    for a, b in (halves, halves[::-1]):
        w, score_in = fit_weights([p[a] for p in parts], labels[a], method, metric)
        probs[b] = blend([p[b] for p in parts], w, method)
        report["in_sample"].append(score_in)
        report["held_out"].append(objective(*top1(probs[b]), labels[b], metric))
        report["weights"].append(w)
    report["probs"] = probs
    return report


# --------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """Everything resolved from the OOF rows (and the pool) before a manifest is ensembled."""

    cfg: EnsembleConfig
    label_map: pd.DataFrame
    checker: Checker
    runs: dict[str, list[Path]]
    missing: dict[str, str]
    weights: dict[str, float]
    rows: list[dict] = field(default_factory=list)  # leaderboard rows from the OOF files
    oof: Preds | None = None  # the ensemble's CV set (ids common to every model)
    fit: dict = field(default_factory=dict)
    postprocess: dict[str, PostProcess] = field(default_factory=dict)  # variant -> what it applies
    pp_report: dict[str, dict] = field(default_factory=dict)

    def paths(self, manifest: str, hint: str = "") -> dict[str, list[Path]]:
        return pred_paths(self.runs, manifest, self.cfg.tta, hint, self.cfg.knn)

    @property
    def final(self) -> PostProcess:
        """The post-processing the CSV gets: every configured part."""
        return self.postprocess[max(self.postprocess, key=len)] if self.postprocess else PostProcess()

    def weights_text(self, w: dict[str, float] | None = None) -> str:
        return " ".join(f"{m}:{v:.3f}" for m, v in (w or self.weights).items())


def _model_oof(name: str, files: list[Path], dirs: list[Path], checker: Checker) -> tuple[Preds, list[dict]]:
    """A model's OOF rows (folds concatenated, stored precision) and one leaderboard row per fold."""
    parts, rows = [], []
    for path, d in zip(files, dirs):
        p = checker.load(path)
        rows.append({"model": name, "fold": fold_label(d), "n": len(p["labels"]), **score_all(p["probs"], p["labels"])})
        parts.append(p)
    ids = np.concatenate([p["ids"] for p in parts])
    dup = pd.Series(ids).duplicated()
    if dup.any():
        raise DataError(
            f"model '{name}': id '{ids[int(dup.to_numpy().argmax())]}' is out-of-fold in two folds "
            "(runs made with different fold files?)"
        )
    probs = np.concatenate([p["probs"] for p in parts])
    return Preds(ids, np.concatenate([p["labels"] for p in parts]), probs, str(files[0])), rows


def _align(oofs: dict[str, Preds]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Ids out-of-fold for every model (in the first model's order), their labels, each model's rows."""
    names = list(oofs)
    common = set(oofs[names[0]].ids)
    for n in names[1:]:
        common &= set(oofs[n].ids)
    first = oofs[names[0]]
    keep = np.array([i for i in first.ids if i in common], dtype=first.ids.dtype)
    parts, labels = [], None
    for n in names:
        o = oofs[n]
        pos = pd.Series(np.arange(len(o.ids)), index=o.ids)[keep].to_numpy()
        lab = o.labels[pos]
        if labels is not None and not np.array_equal(lab, labels):
            i = int(np.flatnonzero(lab != labels)[0])
            raise DataError(f"{o.source}: id '{keep[i]}' has label {lab[i]}, but {labels[i]} in {first.source}")
        labels = lab
        parts.append(o.probs[pos])
    return keep, labels, parts


def _variants(threshold, penalty) -> dict[str, tuple]:
    """Leaderboard variants of the configured post-processing: name suffix -> (threshold, penalty)."""
    out = {}
    if threshold is not None:
        out["+threshold"] = (threshold, None)
    if penalty is not None:
        out["+penalty"] = (None, penalty)
    if threshold is not None and penalty is not None:
        out["+penalty+threshold"] = (threshold, penalty)
    return out


def make_plan(cfg: EnsembleConfig, need_oof: bool = True) -> Plan:
    """Find the runs, check them, resolve the weights and tune the post-processing.

    Reads the OOF files when ``need_oof`` or when fitting/tuning needs them, and the pool
    (``nonlandmark``) or competition predictions when tuning needs them. Writes nothing.
    """
    data_dir = Path(cfg.data_root) / cfg.dataset
    label_map = schema.read_label_map(data_dir)
    checker = Checker(data_dir, label_map)
    runs, missing = discover_runs(cfg.runs_root, cfg.experiment, cfg.models or None)
    names = list(runs)
    thr, pen = cfg.threshold_setting, cfg.penalty_setting
    tune_oof = cfg.tune_on == "oof+pool" and ("tune" in (thr, pen))
    need_oof = need_oof or cfg.fit_weights or tune_oof
    if cfg.weights:
        w = np.asarray(cfg.weights, dtype=float)
        weights = dict(zip(cfg.models, w / w.sum()))
    else:
        weights = {n: 1.0 / len(names) for n in names}
    plan = Plan(cfg, label_map, checker, runs, missing, weights)

    if need_oof:
        files = plan.paths(OOF, "out-of-fold predictions are written by training")
        oofs = {}
        for name in names:
            oofs[name], fold_rows = _model_oof(name, files[name], runs[name], checker)
            plan.rows += fold_rows
        ids, labels, parts = _align(oofs)
        if not len(ids) and (cfg.fit_weights or tune_oof):
            raise DataError(
                f"{cfg.experiment}: no id is out-of-fold for every model (different folds?): nothing to fit on"
            )
        if cfg.fit_weights:
            _fit(plan, parts, labels)
        if len(ids):
            probs = blend(parts, np.array([plan.weights[n] for n in names]), cfg.method)
            plan.oof = Preds(ids, labels, probs, "oof")
        else:
            log.warning("no id is out-of-fold for every model (different folds?): no ensemble CV")
        for name in names:
            o = oofs[name]
            plan.rows.append(_row(name, "cv", o, weight=float(plan.weights[name])))
        del oofs, parts

    variants = _variants(thr, pen)
    if variants:
        tuning = _tuning_set(plan, need_pool=pen is not None or (thr == "tune" and cfg.tune_on == "oof+pool"))
        for suffix, (t, p) in variants.items():
            plan.postprocess[suffix], plan.pp_report[suffix] = fit_postprocess(tuning, t, p)
            log.info("ensemble%s: %s", suffix, plan.postprocess[suffix].describe())
    return plan


def _fit(plan: Plan, parts: list[np.ndarray], labels: np.ndarray) -> None:
    """Fit the weights on all OOF rows; measure their optimism by cross-fitting halves."""
    cfg, names = plan.cfg, list(plan.runs)
    w, in_sample = fit_weights(parts, labels, cfg.method, cfg.fit_metric)
    equal_probs = blend(parts, np.full(len(names), 1 / len(names)), cfg.method)
    plan.weights = dict(zip(names, w))
    plan.fit = {
        "metric": cfg.fit_metric,
        "in_sample": in_sample,
        "equal": objective(*top1(equal_probs), labels, cfg.fit_metric),
    }
    plan.rows.append(
        {
            "model": "ensemble-equal",
            "fold": "cv",
            "n": len(labels),
            **score_all(equal_probs, labels),
            "method": cfg.method,
        }
    )
    del equal_probs
    if len(labels) >= 4 and len(names) > 1:
        cf = crossfit(parts, labels, cfg.method, cfg.fit_metric, cfg.fit_seed)
        plan.fit["crossfit"] = objective(*top1(cf["probs"]), labels, cfg.fit_metric)
        plan.fit["halves_in_sample"], plan.fit["halves_held_out"] = cf["in_sample"], cf["held_out"]
        plan.rows.append(
            {"model": "ensemble", "fold": "cv_crossfit", "n": len(labels), **score_all(cf["probs"], labels)}
        )
    log.info(
        "fitted weights %s: OOF %s %.4f in-sample, %s cross-fitted on halves; equal weights %.4f",
        plan.weights_text(),
        cfg.fit_metric,
        in_sample,
        f"{plan.fit['crossfit']:.4f}" if "crossfit" in plan.fit else "not",
        plan.fit["equal"],
    )


def _tuning_set(plan: Plan, need_pool: bool) -> TuningSet:
    """The answers post-processing is tuned on (OOF rows, or the labelled competition set) and the
    non-landmark pool's ensemble probabilities (for the per-class penalty)."""
    cfg = plan.cfg
    weights = [plan.weights]
    if cfg.tune_on == "competition":
        comp = stream_ensemble(
            plan.paths(schema.COMPETITION, "run 'python -m pipeline predict manifests=competition'"),
            schema.COMPETITION,
            weights,
            cfg.method,
            plan.checker,
        )[0]
        if (comp.labels == schema.UNLABELLED).all():
            raise DataError(
                "tune_on=competition needs a labelled competition set (prep with a solution CSV); "
                "use tune_on=oof+pool or fixed values"
            )
        pred, conf, labels = *top1(comp.probs), comp.labels
        del comp
    elif plan.oof is not None:
        pred, conf, labels = *top1(plan.oof.probs), plan.oof.labels
    else:  # fixed values only: nothing to tune, no report
        pred, conf, labels = np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64)
    pool = None
    if need_pool:
        pool = stream_ensemble(
            plan.paths(
                schema.NONLANDMARK,
                "the penalty and tuning need the non-landmark pool: run 'python -m pipeline predict "
                "manifests=nonlandmark' (prep writes the pool when it has non-landmark images)",
            ),
            schema.NONLANDMARK,
            weights,
            cfg.method,
            plan.checker,
        )[0].probs
    return TuningSet(pred, conf, labels, pool, pool_in_tuning=cfg.tune_on == "oof+pool", seed=cfg.fit_seed)


# --------------------------------------------------------------------------- outputs


def submission_frame(ids: np.ndarray, pred: np.ndarray, conf: np.ndarray, label_map: pd.DataFrame) -> pd.DataFrame:
    """Kaggle landmark format: ``id,landmarks`` with ``"<landmark_id> <confidence>"`` (original
    landmark ids) or an empty cell for a query without an answer (``pred < 0`` or NaN conf)."""
    pred, conf = np.asarray(pred), np.asarray(conf, dtype=np.float64)
    answered = (pred >= 0) & ~np.isnan(conf)
    if answered.any():
        c = conf[answered]
        if not (np.isfinite(c).all() and c.min() >= 0 and c.max() <= 1):
            raise PipelineError(f"submission: confidences outside [0, 1] (min {c.min()}, max {c.max()})")
        if pred[answered].max() >= len(label_map):
            raise DataError(f"submission: class {pred[answered].max()} but the label map has {len(label_map)} classes")
    lids = label_map["landmark_id"].to_numpy()
    cells = [f"{lids[p]} {c:.6f}" if a else "" for p, c, a in zip(pred, conf, answered)]
    return pd.DataFrame({"id": np.asarray(ids).astype(str), "landmarks": cells})


def submission(ids: np.ndarray, probs: np.ndarray, label_map: pd.DataFrame) -> pd.DataFrame:
    """The top-1 answer of every row of ``probs`` in the Kaggle format (no post-processing)."""
    if probs.shape[1] != len(label_map):
        raise DataError(f"predictions have {probs.shape[1]} classes but the label map has {len(label_map)}")
    return submission_frame(ids, *top1(probs), label_map)


def _row(model: str, fold: str, preds: Preds, **extra) -> dict:
    return {"model": model, "fold": fold, "n": len(preds.labels), **score_all(preds.probs, preds.labels), **extra}


def _pp_row(model: str, fold: str, labels: np.ndarray, pred: np.ndarray, conf: np.ndarray, **extra) -> dict:
    """A post-processed variant changes the answers only: GAP (top-1/top-5 are the ensemble's)."""
    return {"model": model, "fold": fold, "n": len(labels), "gap": gap(pred, conf, labels), **extra}


def run_ensemble(cfg: EnsembleConfig) -> dict:
    """The ensemble stage: leaderboard rows for every model, the ensemble and its variants, and
    ``submissions/<name>.csv`` of the internal test ids (the configured post-processing applied).

    Returns the output paths (``submission``, ``leaderboard``), the long ``rows`` and the ``info``.
    """
    root = Path(cfg.runs_root) / cfg.experiment
    if not root.is_dir():
        raise DataError(f"no runs for experiment '{cfg.experiment}' under {root} (run 'make train' first)")
    with folder_lock(root, "ensemble"):
        plan = make_plan(cfg)
        names = list(plan.runs)
        rows = list(plan.rows)
        show = len(names) > 1 or bool(plan.postprocess) or cfg.fit_weights
        extra = {"method": cfg.method, "weights": plan.weights_text()}
        if plan.fit:
            extra.update({f"fit_{k}": plan.fit[k] for k in ("in_sample", "crossfit", "equal") if k in plan.fit})
        report = next(iter(plan.pp_report.values()), {})
        if show and plan.oof is not None:
            tune = {"tune_gap": report["tune_gap_before"]} if report else {}
            rows.append(_row("ensemble", "cv", plan.oof, **extra, **tune))

        def on_model(name: str, avg: Preds) -> None:
            rows.append(_row(name, "test", avg, weight=float(plan.weights[name])))

        weightings = [plan.weights] + ([{n: 1 / len(names) for n in names}] if cfg.fit_weights else [])
        test = stream_ensemble(
            plan.paths(TEST, "test predictions are written by training and by 'python -m pipeline predict'"),
            TEST,
            weightings,
            cfg.method,
            plan.checker,
            on_model,
        )
        if show:
            rows.append(_row("ensemble", "test", test[0], **extra))
        if cfg.fit_weights:
            rows.append(_row("ensemble-equal", "test", test[1], method=cfg.method))
        pred, conf = top1(test[0].probs)
        for suffix, pp in plan.postprocess.items():
            rep = plan.pp_report[suffix]
            facts = {"threshold": rep["threshold"], "penalty": rep["strength"], "tune_gap": rep["tune_gap"]}
            if plan.oof is not None:
                rows.append(_pp_row(f"ensemble{suffix}", "cv", plan.oof.labels, *pp(*top1(plan.oof.probs)), **facts))
            rows.append(_pp_row(f"ensemble{suffix}", "test", test[0].labels, *pp(pred, conf), **facts))
        final = plan.final
        frame = submission_frame(test[0].ids, *final(pred, conf), plan.label_map)
        info = run_info(cfg.runs_root, cfg.experiment, names + list(plan.missing))
        for name, what in plan.missing.items():
            info.setdefault(name, {})["missing"] = what
        # the internal split's CSV: never submissions/<name>.csv, which `submit` writes for the competition
        sub_path = Path(cfg.submissions_dir) / f"{cfg.name}_internal_test.csv"
        write_csv(sub_path, frame)
        paths = write_leaderboard(root, rows, info, cfg.experiment)
    empty = int((frame["landmarks"] == "").sum())
    log.info("wrote %s (%d rows, %d empty) and %s", sub_path, len(frame), empty, paths["md"])
    return {"submission": sub_path, "leaderboard": paths["csv"], "rows": pd.DataFrame(rows), "info": info, "plan": plan}


def main(cfg: EnsembleConfig) -> int:
    """CLI face: ensemble, then where the outputs went and the headline numbers."""
    out = run_ensemble(cfg)
    plan: Plan = out["plan"]
    print(f"submission: {out['submission']}\nleaderboard: {out['leaderboard']}")
    if plan.fit:
        f = plan.fit
        cf = f"{f['crossfit']:.4f} cross-fitted on halves (honest), " if "crossfit" in f else ""
        print(
            f"fitted weights {plan.weights_text()}: OOF {f['metric']} {f['in_sample']:.4f} in-sample, {cf}"
            f"{f['equal']:.4f} with equal weights"
        )
    rows = out["rows"]
    for model in ["ensemble"] + [f"ensemble{s}" for s in plan.postprocess]:
        r = rows[(rows["model"] == model) & (rows["fold"] == "test")]
        if len(r):
            print(f"{model}: test GAP {r['gap'].iloc[0]:.4f}")
    return 0
