"""What an ensemble or submission will do, decided once before any file is written: the finished
runs (:func:`pipeline.runs.scan.scan`), their prediction files, the weights (given, or fitted and
chosen by cross-fitting: :func:`pipeline.ensemble.weights.select_weights`), the post-processing
variants with their tuning set, and landmark-ness (each query's similarity to its nearest training
photo, from the embed stage's ``nearest_<manifest>.npz``).

The stage applies landmark-ness through :func:`landmark_rows` (leaderboard rows of a manifest) and
:func:`final_answers` (what a CSV gets), which read the similarities of that manifest's ids."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from common import schema
from common.errors import ConfigError, DataError
from pipeline.config_stages import EnsembleConfig
from pipeline.ensemble.blend import blend, stream_ensemble
from pipeline.ensemble.inputs import Checker, Preds, pred_paths, score_row
from pipeline.ensemble.postprocess import PostProcess, TuningSet, fit_landmark, fit_postprocess
from pipeline.ensemble.weights import check_weights, crossfit, normalise, objective, select_weights
from pipeline.infer.retrieval import load_nearest, nearest_file
from pipeline.metrics import gap, score_all, top1
from pipeline.runs.scan import fold_label, scan
from pipeline.scores import concat

log = logging.getLogger(__name__)


OOF = "oof"


TEST = "test"


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
    landmark: PostProcess | None = None  # landmark-ness (needs each query's nearest-photo similarity)
    lm_report: dict = field(default_factory=dict)

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
    probs = concat([p["probs"] for p in parts])
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


def _check_workspace(cfg: EnsembleConfig, data_dir: Path) -> None:
    """A bundle workspace (``predict bundle=... test_root=...``) holds competition predictions only:
    say precisely which settings need what it lacks, instead of a hint that cannot be followed."""
    if not schema.prep_fingerprint(data_dir, "workspace"):
        return
    wanted = {"knn=true": cfg.knn, "fit_weights=true": cfg.fit_weights, f"penalty={cfg.penalty}": cfg.penalty_setting,
              f"landmarkness={cfg.landmarkness}": landmark_setting(cfg) is not None,
              "threshold=tune": cfg.threshold_setting == "tune"}  # fmt: skip
    asked = [k for k, on in wanted.items() if on]
    if asked:
        raise ConfigError(
            f"ensemble: {data_dir} is a bundle workspace (competition predictions only: no OOF rows, non-landmark "
            f"pool or train gallery), so {', '.join(asked)} cannot run here; run submit with them where you "
            "trained, and from the bundle submit the plain ensemble (weights=... as that run's <name>.json lists)"
        )


def make_plan(cfg: EnsembleConfig, need_oof: bool = True) -> Plan:
    """Find the runs, check them, resolve the weights and tune the post-processing.

    Reads the OOF files when ``need_oof`` or when fitting/tuning needs them, and the pool
    (``nonlandmark``) or competition predictions when tuning needs them. Writes nothing.
    """
    twice = sorted({m for m in cfg.models if cfg.models.count(m) > 1})
    if twice:  # a model counted twice would get two weights under one name
        raise ConfigError(f"ensemble: model(s) {', '.join(twice)} listed twice in 'models' ({','.join(cfg.models)})")
    data_dir = cfg.data_dir
    _check_workspace(cfg, data_dir)
    label_map = schema.read_label_map(data_dir)
    checker = Checker(data_dir, label_map)
    found = scan(cfg.runs_root, cfg.experiment, cfg.models or None)
    runs, missing = found.finished, found.missing
    names = list(runs)
    thr, pen = cfg.threshold_setting, cfg.penalty_setting
    tune_oof = cfg.tune_on == "oof+pool" and ("tune" in (thr, pen))
    tune_oof = tune_oof or landmark_setting(cfg) == "tune"
    need_oof = need_oof or cfg.fit_weights or tune_oof
    if cfg.weights:
        weights = dict(zip(cfg.models, normalise(cfg.weights)))
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
            plan.rows.append(score_row(name, "cv", o, weight=float(plan.weights[name])))
        del oofs, parts

    check_weights(plan.weights)
    variants = _variants(thr, pen)
    if variants:
        tuning = _tuning_set(plan, need_pool=pen is not None or (thr == "tune" and cfg.tune_on == "oof+pool"))
        for suffix, (t, p) in variants.items():
            plan.postprocess[suffix], plan.pp_report[suffix] = fit_postprocess(tuning, t, p)
            log.info("ensemble%s: %s", suffix, plan.postprocess[suffix].describe())
    if landmark_setting(cfg) is not None:
        _fit_landmark(plan)
    return plan


def _fit(plan: Plan, parts: list[np.ndarray], labels: np.ndarray) -> None:
    """Fit the weights on the OOF rows (:func:`select_weights`: the candidates, each cross-fitted
    on halves, the configured or best one kept, guarded by the best single member)."""
    cfg, names = plan.cfg, list(plan.runs)
    sel = select_weights(parts, labels, cfg.method, cfg.fit_metric, cfg.fit_seed, cfg.fit_method)
    equal_probs = blend(parts, np.full(len(names), 1 / len(names)), cfg.method)
    plan.weights = dict(zip(names, sel.weights))
    plan.fit = {
        "metric": cfg.fit_metric,
        "in_sample": sel.in_sample,
        "equal": objective(*top1(equal_probs), labels, cfg.fit_metric),
        "chosen": sel.chosen,
        "best_single": sel.best_single,
        "guarded": sel.guarded,
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
    for cand, scores in sel.crossfit.items():  # each method's CV: cross-fitted (rows it was not fitted on)
        w = dict(zip(names, sel.candidates[cand]))
        plan.rows.append({"model": f"fit:{cand}", "fold": "cv", "n": len(labels), **scores,
                          "weights": plan.weights_text(w), "chosen": cand == sel.chosen})  # fmt: skip
    if sel.half_weights:
        halves_w = sel.half_weights[sel.chosen]
        cf = crossfit(parts, labels, cfg.method, cfg.fit_metric, cfg.fit_seed, fitter=_replay(halves_w))
        plan.fit["crossfit"] = objective(*top1(cf["probs"]), labels, cfg.fit_metric)
        plan.fit["halves_in_sample"], plan.fit["halves_held_out"] = cf["in_sample"], cf["held_out"]
        plan.rows.append(
            {"model": "ensemble", "fold": "cv_crossfit", "n": len(labels), **score_all(cf["probs"], labels)}
        )
    log.info(
        "fitted weights (%s%s) %s: OOF %s %.4f in-sample, %s cross-fitted on halves; equal weights %.4f, "
        "best single member %.4f",
        sel.chosen,
        ", guard: the cross-validated choice fell below the best member" if sel.guarded else "",
        plan.weights_text(),
        cfg.fit_metric,
        sel.in_sample,
        f"{plan.fit['crossfit']:.4f}" if "crossfit" in plan.fit else "not",
        plan.fit["equal"],
        sel.best_single,
    )


def _replay(weights: list[np.ndarray]):
    """A fitter that returns the given per-half weights in turn (the cross-fit already made them)."""
    it = iter(weights)
    return lambda parts, labels: next(it)


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


# --------------------------------------------------------------------------- landmark-ness


LANDMARK = "+landmark"  # the leaderboard variant of landmark-ness


def landmark_setting(cfg: EnsembleConfig) -> float | str | None:
    """None (off), ``"tune"`` or the landmark-ness ``a`` (validated with the config)."""
    return EnsembleConfig._setting("landmarkness", cfg.landmarkness)


def similarity(plan: Plan, manifest: str, ids: np.ndarray) -> np.ndarray:
    """Each id's similarity to its nearest training photo (``nearest_<manifest>.npz`` of the embed
    stage): per model the mean over the folds that have the id (OOF: its one fold), then the
    models' weighted mean, with the ensemble's weights. One error line for a missing file or id."""
    out = np.zeros(len(ids))
    for name, dirs in plan.runs.items():
        frames = [pd.DataFrame(dict(zip(("id", "sim"), load_nearest(d / nearest_file(manifest))))) for d in dirs]
        per_id = pd.concat(frames).groupby("id")["sim"].mean()
        absent = ~pd.Index(ids).isin(per_id.index)
        if absent.any():
            raise DataError(
                f"{dirs[0] / nearest_file(manifest)}: no similarity for id '{ids[int(np.argmax(absent))]}' "
                f"of model '{name}' (run 'make embed' again)"
            )
        out += plan.weights[name] * per_id.loc[ids].to_numpy()
    return out


def _pool_similarity(plan: Plan) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The non-landmark pool's ensemble probabilities and similarities, or (None, None) without a
    pool (landmark-ness is then tuned on the OOF rows alone)."""
    try:
        pool = _tuning_set(plan, need_pool=True).pool_probs
        pool_ids = plan.checker.rows[schema.NONLANDMARK][0]
        return pool, similarity(plan, schema.NONLANDMARK, pool_ids)
    except DataError as e:
        log.info("landmark-ness: tuned without the non-landmark pool (%s)", e)
        return None, None


def _fit_landmark(plan: Plan) -> None:
    """Tune (or set) landmark-ness on the OOF rows plus the pool where there is one; a CV row."""
    setting, oof = landmark_setting(plan.cfg), plan.oof
    if oof is None:
        if setting == "tune":
            raise DataError("landmarkness=tune needs the ensemble's OOF rows (no id is out-of-fold for every model)")
        plan.landmark = PostProcess(landmark=float(setting))
        return
    sim = similarity(plan, OOF, oof.ids)
    pool, pool_sim = _pool_similarity(plan) if setting == "tune" else (None, None)
    pred, conf = top1(oof.probs)
    data = TuningSet(pred, conf, oof.labels, pool, pool_in_tuning=True, seed=plan.cfg.fit_seed)
    plan.landmark, plan.lm_report = fit_landmark(data, sim, pool_sim, setting)
    plan.lm_report["with_pool"] = pool is not None
    facts = {k: plan.lm_report[k] for k in ("landmark", "tune_gap")}
    cv_gap = gap(*plan.landmark(pred, conf, sim), oof.labels)
    plan.rows.append({"model": f"ensemble{LANDMARK}", "fold": "cv", "n": len(oof.labels), "gap": cv_gap, **facts})
    log.info(
        "ensemble%s: %s (tuned on OOF%s)", LANDMARK, plan.landmark.describe(), " + pool" if pool is not None else ""
    )


def landmark_rows(plan: Plan, manifest: str, preds: Preds, fold: str) -> list[dict]:
    """The leaderboard row of landmark-ness on ``preds`` (e.g. the test ensemble), if configured."""
    if plan.landmark is None:
        return []
    pred, conf = plan.landmark(*top1(preds.probs), similarity(plan, manifest, preds.ids))
    facts = {k: plan.lm_report[k] for k in ("landmark", "tune_gap") if k in plan.lm_report}
    row = {"model": f"ensemble{LANDMARK}", "fold": fold, "n": len(preds.labels), "gap": gap(pred, conf, preds.labels)}
    return [{**row, **facts}]


def final_answers(plan: Plan, manifest: str, preds: Preds) -> tuple[np.ndarray, np.ndarray]:
    """The answers a CSV gets: landmark-ness (if configured), then every configured post-processing."""
    pred, conf = top1(preds.probs)
    if plan.landmark is not None:
        pred, conf = plan.landmark(pred, conf, similarity(plan, manifest, preds.ids))
    return plan.final(pred, conf)
