"""Ensemble weight fitting and landmark-ness: what each method scores on finished runs, and what the
selection costs.

    .venv/bin/python bench/bench_ensemble_selection.py --runs-root R --data-root D --dataset S \\
        --experiments a,b [--knn both|off|on]
    .venv/bin/python bench/bench_ensemble_selection.py --timing [--rows 20000 --classes 1000 --models 5]

Runs mode, per experiment (and with/without the kNN-fused files): every member's CV (pooled OOF)
and test GAP/top-1; the equal-weight ensemble; ``fit_weights=true`` with each ``fit_method``
(``cv`` and each candidate alone: OOF in-sample, cross-fitted on halves, test); the tuned
per-class penalty and landmark-ness (CV, test). It reads prediction files only (the stage's
checks, :func:`pipeline.ensemble.plan.make_plan`), writes nothing. Timing mode: seconds of
:func:`select_weights` on random OOF rows of the given size (every candidate, cross-fitted).
Prints a table and a ``RESULT {json}`` line. Precision is that of the runs (bf16 on this CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from common.config import build_config  # noqa: E402
from common.errors import PipelineError  # noqa: E402
from pipeline.config_stages import EnsembleConfig
from pipeline.ensemble.blend import stream_ensemble  # noqa: E402
from pipeline.ensemble.plan import OOF, TEST, landmark_rows, make_plan, similarity  # noqa: E402
from pipeline.ensemble.postprocess import TuningSet, fit_landmark  # noqa: E402
from pipeline.ensemble.weights import CANDIDATES, select_weights  # noqa: E402
from pipeline.metrics import gap, score_all, top1  # noqa: E402

FIT_METHODS = ("cv", "coordinate", "greedy", "shrink0.5", "best")


def _scores(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    s = score_all(probs, labels)
    return s["gap"], s["top1"]


def _variant(base: dict, knn: bool, **over) -> list[dict]:
    """Rows of one ensemble configuration: members (once), the ensemble and its post-processing."""
    cfg = build_config(EnsembleConfig, {**base, "knn": knn, **over}, "bench")
    plan = make_plan(cfg)
    members: dict[str, tuple[float, float]] = {}

    def on_model(name, avg):
        members[name] = _scores(avg.probs, avg.labels)

    test = stream_ensemble(plan.paths(TEST), TEST, [plan.weights], cfg.method, plan.checker, on_model)[0]
    tag = {"experiment": cfg.experiment, "knn": knn}
    rows = []
    if not over:  # the members, once per experiment and source
        for r in plan.rows:
            if r["fold"] == "cv" and r["model"] in members:
                t_gap, t_top1 = members[r["model"]]
                rows.append({**tag, "what": r["model"], "cv_gap": r["gap"], "cv_top1": r["top1"], "test_gap": t_gap,
                             "test_top1": t_top1})  # fmt: skip
    name = "ensemble mean" if not over.get("fit_weights") else f"fit {over['fit_method']}"
    cv_gap, cv_top1 = _scores(plan.oof.probs, plan.oof.labels)
    t_gap, t_top1 = _scores(test.probs, test.labels)
    extra = {"weights": plan.weights_text()}
    if plan.fit:
        extra.update(chosen=plan.fit["chosen"], cv_crossfit=plan.fit.get("crossfit"), guarded=plan.fit["guarded"])
    if not over.get("penalty") and not over.get("landmarkness"):
        rows.append({**tag, "what": name, "cv_gap": cv_gap, "cv_top1": cv_top1, "test_gap": t_gap,
                     "test_top1": t_top1, **extra})  # fmt: skip
    for suffix, pp in plan.postprocess.items():
        rows.append({**tag, "what": f"mean{suffix} (tuned {pp.describe()})",
                     "cv_gap": gap(*pp(*top1(plan.oof.probs)), plan.oof.labels),
                     "test_gap": gap(*pp(*top1(test.probs)), test.labels)})  # fmt: skip
    if plan.landmark is not None:
        cv = next(r for r in plan.rows if r["model"] == "ensemble+landmark")
        (t,) = landmark_rows(plan, TEST, test, "test")
        pool = "OOF + pool" if plan.lm_report.get("with_pool") else "OOF only"
        rows.append({**tag, "what": f"mean+landmark ({plan.landmark.describe()}, tuned on {pool})",
                     "cv_gap": cv["gap"], "test_gap": t["gap"]})  # fmt: skip
        rows.append({**tag, **_landmark_without_pool(plan, test)})
    return rows


def _landmark_without_pool(plan, test) -> dict:
    """Landmark-ness tuned on the OOF rows alone (as without a non-landmark pool)."""
    pred, conf = top1(plan.oof.probs)
    sim = similarity(plan, OOF, plan.oof.ids)
    pp, _ = fit_landmark(TuningSet(pred, conf, plan.oof.labels), sim, None, "tune")
    t_gap = gap(*pp(*top1(test.probs), similarity(plan, TEST, test.ids)), test.labels)
    what = f"mean+landmark ({pp.describe() if pp.active else 'a 0'}, tuned on OOF only)"
    return {"what": what, "cv_gap": gap(*pp(pred, conf, sim), plan.oof.labels), "test_gap": t_gap}


def runs_mode(args: argparse.Namespace) -> list[dict]:
    rows = []
    for exp in args.experiments.split(","):
        base = {"dataset": args.dataset, "data_root": args.data_root, "runs_root": args.runs_root, "experiment": exp}
        for knn in {"off": [False], "on": [True], "both": [False, True]}[args.knn]:
            rows += _variant(base, knn)
            if len(make_plan(build_config(EnsembleConfig, {**base, "knn": knn}, "bench")).runs) > 1:
                for m in FIT_METHODS:
                    rows += _variant(base, knn, method="weighted", fit_weights=True, fit_method=m)
            rows += _variant(base, knn, penalty="tune")
            rows += _variant(base, knn, landmarkness="tune")
    return rows


def timing_mode(args: argparse.Namespace) -> list[dict]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, args.classes, args.rows)
    parts = []
    for _ in range(args.models):
        logits = rng.standard_normal((args.rows, args.classes)).astype(np.float32)
        logits[np.arange(args.rows), labels] += rng.uniform(1, 4)
        p = np.exp(logits - logits.max(1, keepdims=True))
        parts.append(p / p.sum(1, keepdims=True))
    t0, c0 = time.perf_counter(), time.process_time()
    sel = select_weights(parts, labels, "weighted", "gap", seed=0)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    return [{"rows": args.rows, "classes": args.classes, "models": args.models, "candidates": len(CANDIDATES),
             "wall_s": round(secs, 2), "cpu_s": round(cpu, 2), "chosen": sel.chosen}]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timing", action="store_true")
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--models", type=int, default=5)
    ap.add_argument("--runs-root", default="runs")
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--experiments", default="default")
    ap.add_argument("--knn", choices=("off", "on", "both"), default="both")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR, format="%(message)s")  # the checks warn per plan
    try:
        rows = timing_mode(args) if args.timing else runs_mode(args)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(f"{r[k]:.4f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys))
    precision = "float32 (numpy)" if args.timing else "bf16 (the runs')"
    print("RESULT", json.dumps({"precision": precision, "rows": rows}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
