"""Ensembling: fold averages per model, the model ensemble, post-processing, the leaderboard.

Reads prediction files only (never models; format: :mod:`pipeline.runs.predfile`): per finished run
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
* **Post-processing** against non-landmarks (``threshold``, ``penalty``): :mod:`pipeline.ensemble.postprocess`,
  tuned on the OOF rows plus the non-landmark pool (or a labelled competition set), never on
  the internal test split, which reports the held-out effect (rows ``ensemble+penalty`` ...).

Outputs of the ensemble stage: the leaderboard (``runs/<experiment>/leaderboard.*``, under the
experiment's folder lock) and ``submissions/<name>_internal_test.csv``: the answers for the
internal test ids, which is not a submission (``<name>`` defaults to the experiment). The
competition submission, ``submissions/<name>.csv``, is :mod:`pipeline.submit.stage`'s.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError
from common.io import write_csv
from common.lock import folder_lock
from pipeline.config_stages import EnsembleConfig
from pipeline.ensemble.blend import stream_ensemble
from pipeline.ensemble.frame import submission_frame
from pipeline.ensemble.inputs import Preds, score_row
from pipeline.ensemble.plan import TEST, Plan, final_answers, landmark_rows, make_plan
from pipeline.metrics import gap, top1
from pipeline.report.leaderboard import run_info, write_leaderboard
from pipeline.runs.predfile import output_errors

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- finding runs


# --------------------------------------------------------------------------- checks


# --------------------------------------------------------------------------- combining


# --------------------------------------------------------------------------- fitting weights


# --------------------------------------------------------------------------- the plan


# --------------------------------------------------------------------------- outputs


def _pp_row(model: str, fold: str, labels: np.ndarray, pred: np.ndarray, conf: np.ndarray, **extra) -> dict:
    """A post-processed variant changes the answers only: GAP (top-1/top-5 are the ensemble's)."""
    return {"model": model, "fold": fold, "n": len(labels), "gap": gap(pred, conf, labels), **extra}


def run_ensemble(cfg: EnsembleConfig) -> dict:
    """The ensemble stage: leaderboard rows for every model, the ensemble and its variants, and
    ``submissions/<name>_internal_test.csv`` of the internal test ids (the configured post-processing
    applied; not a submission).

    Returns the output paths (``submission``, ``leaderboard``), the long ``rows`` and the ``info``.
    """
    root = Path(cfg.runs_root) / cfg.experiment
    if not root.is_dir():
        raise DataError(f"no runs for experiment '{cfg.experiment}' under {root} (run 'make train' first)")
    with output_errors("ensemble"), folder_lock(root, "ensemble"):
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
            rows.append(score_row("ensemble", "cv", plan.oof, **extra, **tune))

        def on_model(name: str, avg: Preds) -> None:
            rows.append(score_row(name, "test", avg, weight=float(plan.weights[name])))

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
            rows.append(score_row("ensemble", "test", test[0], **extra))
        if cfg.fit_weights:
            rows.append(score_row("ensemble-equal", "test", test[1], method=cfg.method))
        pred, conf = top1(test[0].probs)
        for suffix, pp in plan.postprocess.items():
            rep = plan.pp_report[suffix]
            facts = {"threshold": rep["threshold"], "penalty": rep["strength"], "tune_gap": rep["tune_gap"]}
            if plan.oof is not None:
                rows.append(_pp_row(f"ensemble{suffix}", "cv", plan.oof.labels, *pp(*top1(plan.oof.probs)), **facts))
            rows.append(_pp_row(f"ensemble{suffix}", "test", test[0].labels, *pp(pred, conf), **facts))
        rows += landmark_rows(plan, TEST, test[0], "test")
        frame = submission_frame(test[0].ids, *final_answers(plan, TEST, test[0]), plan.label_map)
        info = run_info(cfg.runs_root, cfg.experiment, names + list(plan.missing))
        for name, what in plan.missing.items():
            info.setdefault(name, {})["missing"] = what
        # the internal split's CSV: never submissions/<name>.csv, which `submit` writes for the competition
        sub_path = Path(cfg.submissions_dir) / f"{cfg.name}_internal_test.csv"
        write_csv(sub_path, frame)
        paths = write_leaderboard(root, rows, info, cfg.experiment)
    empty = int((frame["landmarks"] == "").sum())
    log.info("wrote %s (the internal test split, %d rows, %d empty) and %s", sub_path, len(frame), empty, paths["md"])
    return {"submission": sub_path, "leaderboard": paths["csv"], "rows": pd.DataFrame(rows), "info": info, "plan": plan}


def main(cfg: EnsembleConfig) -> int:
    """CLI face: ensemble, then where the outputs went and the headline numbers."""
    out = run_ensemble(cfg)
    plan: Plan = out["plan"]
    # the internal split's CSV is not a submission: the competition's is `make predict submit`'s
    print(f"internal test split answers (not a submission): {out['submission']}\nleaderboard: {out['leaderboard']}")
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
