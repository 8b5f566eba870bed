"""The competition submission: ``python -m pipeline submit --config ... [key=value ...]``.

Reads the ``competition`` predictions (``competition.npz``, or ``competition_tta.npz`` with
``tta: true``) of every finished run of the experiment, fold-averages them per model, ensembles
the models and post-processes the answers exactly like the ensemble stage (same
``ensemble:`` section: method, weights or fitted weights, threshold, penalty; see
:mod:`pipeline.ensemble.stage`), then writes ``submissions/<name>.csv``:

* one row per id of ``data/<dataset>/competition_order.csv``, in its order (the order of the
  competition's sample_submission.csv);
* ``landmarks`` = ``"<landmark_id> <confidence>"`` with the ORIGINAL landmark id, confidence
  in [0, 1] with 6 decimals, or empty: images prep could not read (status != ok) and answers
  the post-processing removed.

The file is validated (:mod:`pipeline.submit.validate`, against the order file's ids) before it
replaces the previous one, under the submissions folder's lock; a ``<name>.json`` beside it
records what made it. When the competition set is labelled (prep with a solution CSV), the
summary gives the GAP of the written file over its readable rows.

Fitting weights or tuning ``threshold``/``penalty`` reads the OOF and non-landmark pool
predictions too; with fixed values only the competition predictions are needed (an export
bundle's workspace has nothing else).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from common import schema
from common.errors import DataError, PipelineError
from common.io import atomic_path, write_json
from common.lock import folder_lock
from pipeline.config import EnsembleConfig
from pipeline.ensemble.blend import stream_ensemble
from pipeline.ensemble.frame import submission_frame
from pipeline.ensemble.plan import make_plan
from pipeline.metrics import NO_ANSWER, gap, top1
from pipeline.submit.validate import validate_submission

log = logging.getLogger(__name__)

OK = "ok"


def read_order(data_dir: str | Path) -> pd.DataFrame:
    """``competition_order.csv``: ``id, status`` of every sample-submission id, in its order."""
    path = Path(data_dir) / schema.COMPETITION_ORDER
    if not path.is_file():
        raise DataError(
            f"{path} not found: prep the competition's test set first (prep key test_root=<competition folder>)"
        )
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file") from None
    missing = [c for c in ("id", "status") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected id,status")
    dup = df["id"].duplicated()
    if dup.any():
        i = int(dup.to_numpy().argmax())
        raise DataError(f"{path}: line {i + 2}: id '{df['id'].iloc[i]}' appears twice")
    if df.empty:
        raise DataError(f"{path}: no ids")
    return df


def _gap_of_file(path: Path, labels: pd.Series, label_map: pd.DataFrame) -> tuple[float, int]:
    """GAP of a written submission against ``labels`` (by id; UNLABELLED rows left out)."""
    sub = pd.read_csv(path, dtype=str, keep_default_na=False)
    to_class = {str(lid): c for c, lid in enumerate(label_map["landmark_id"])}
    toks = sub["landmarks"].str.split()
    pred = np.array([to_class[t[0]] if t else NO_ANSWER for t in toks])
    conf = np.array([float(t[1]) if t else np.nan for t in toks])
    lab = labels.reindex(sub["id"]).fillna(schema.UNLABELLED).to_numpy(dtype=np.int64)
    return gap(pred, conf, lab), int((lab != schema.UNLABELLED).sum())


def run_submit(cfg: EnsembleConfig) -> dict:
    """Ensemble the competition predictions, write and validate ``submissions/<name>.csv``.

    Returns ``submission`` (path), ``rows``, ``answers``, ``empty``, ``unreadable``, ``gap``
    (None when the competition set is unlabelled), ``scored`` (rows in that GAP).
    """
    data_dir = cfg.data_dir
    order = read_order(data_dir)
    plan = make_plan(cfg, need_oof=False)
    comp = stream_ensemble(
        plan.paths(schema.COMPETITION, "run 'python -m pipeline predict manifests=competition' first"),
        schema.COMPETITION,
        [plan.weights],
        cfg.method,
        plan.checker,
    )[0]
    readable = order["status"] == OK
    known = set(order["id"])
    extra = [i for i in comp.ids if i not in known]
    if extra:
        raise DataError(
            f"{comp.source}: {len(extra)} id(s) not in {data_dir / schema.COMPETITION_ORDER} (first: '{extra[0]}'): "
            "predictions of another competition set"
        )
    have = set(comp.ids)
    lacking = order.loc[readable & ~order["id"].isin(have), "id"]
    if len(lacking):
        raise DataError(
            f"{comp.source}: {len(lacking)} readable id(s) of {schema.COMPETITION_ORDER} have no prediction "
            f"(first: '{lacking.iloc[0]}'): re-run 'python -m pipeline predict manifests=competition'"
        )
    unreadable_but_predicted = order.loc[~readable & order["id"].isin(have), "id"]
    if len(unreadable_but_predicted):
        log.warning(
            "%d id(s) marked unreadable in %s have predictions (first: '%s'); they get an empty answer",
            len(unreadable_but_predicted),
            schema.COMPETITION_ORDER,
            unreadable_but_predicted.iloc[0],
        )
    pred, conf = plan.final(*top1(comp.probs))
    pos = pd.Series(np.arange(len(comp.ids)), index=comp.ids).reindex(order["id"]).to_numpy()
    answerable = readable.to_numpy() & ~np.isnan(pos)
    idx = np.where(answerable, pos, 0).astype(np.int64)
    out_pred = np.where(answerable, pred[idx], NO_ANSWER)
    out_conf = np.where(answerable, conf[idx], np.nan)
    frame = submission_frame(order["id"].to_numpy(), out_pred, out_conf, plan.label_map)
    labels = pd.Series(comp.labels, index=comp.ids)
    labelled = bool((comp.labels != schema.UNLABELLED).any())
    del comp

    sub_dir = Path(cfg.submissions_dir)
    out = sub_dir / f"{cfg.name}.csv"
    with folder_lock(sub_dir, "submit"):
        with atomic_path(out) as tmp:
            frame.to_csv(tmp, index=False)
            problems, stats = validate_submission(tmp, order["id"].tolist(), name=str(out))
            if problems:
                more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
                raise PipelineError(f"the submission fails validation, not written: {problems[0]}{more}")
            score, scored = _gap_of_file(tmp, labels, plan.label_map) if labelled else (None, 0)
        result = {
            "submission": out,
            "rows": stats["rows"],
            "answers": stats["answers"],
            "empty": stats["empty"],
            "unreadable": int((~readable).sum()),
            "gap": score,
            "scored": scored,
            "tuned_on_it": cfg.tune_on == "competition" and bool(plan.postprocess),
            "postprocess": plan.final.describe(),
            "weights": {m: round(float(w), 4) for m, w in plan.weights.items()},
        }
        write_json(
            out.with_suffix(".json"),
            {
                "experiment": cfg.experiment,
                "dataset": cfg.dataset,
                "models": {m: len(d) for m, d in plan.runs.items()},
                "missing_models": plan.missing,
                "method": cfg.method,
                "tta": cfg.tta,
                "knn": cfg.knn,
                "threshold": plan.final.threshold,
                "penalty_strength": plan.final.strength,
                **{k: v for k, v in result.items() if k != "submission"},
            },
        )
    log.info("wrote %s (%d rows, %d empty)", out, stats["rows"], stats["empty"])
    return result


def main(cfg: EnsembleConfig) -> int:
    """CLI face: the submission, then a short summary."""
    r = run_submit(cfg)
    removed = r["empty"] - r["unreadable"]
    print(
        f"submission: {r['submission']}: valid, {r['rows']} rows, {r['answers']} answers, {r['empty']} empty "
        f"({r['unreadable']} unreadable images, {removed} left empty by post-processing)"
    )
    weights = " ".join(f"{m}:{w:g}" for m, w in r["weights"].items())
    print(f"ensemble: {cfg.method} ({weights}); post-processing: {r['postprocess']}")
    if r["gap"] is not None:
        note = " (post-processing tuned on this set: optimistic)" if r["tuned_on_it"] else ""
        print(f"GAP {r['gap']:.4f} over the {r['scored']} labelled readable rows{note}")
    return 0
