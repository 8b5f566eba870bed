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
records what made it (the experiment, the files read). ``name`` defaults to the experiment; a
``<name>.csv`` that another experiment wrote (or not submit: no ``<name>.json``) is never
replaced unless ``overwrite=true``. When the competition set is labelled (prep with a solution CSV), the
summary gives the GAP of the written file as Kaggle scores it: an unreadable image of a landmark
has an empty answer and still counts in the denominator M (its label is read again from the
solution file prep recorded).

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
from data_prep.competition import label_rows, read_solution
from pipeline.config_stages import EnsembleConfig
from pipeline.ensemble.blend import stream_ensemble
from pipeline.ensemble.frame import submission_frame
from pipeline.ensemble.inputs import Preds
from pipeline.ensemble.plan import final_answers, make_plan
from pipeline.metrics import NO_ANSWER, gap
from pipeline.runs.predfile import output_errors
from pipeline.runs.prep import read_json
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


def broken_labels(data_dir: Path, order: pd.DataFrame, label_map: pd.DataFrame) -> tuple[pd.Series, str]:
    """Labels of the unreadable competition rows, from the solution file prep read (recorded in
    ``prep_report.json``): on Kaggle a landmark row without an answer still counts in GAP's M.

    Returns the labels by id (UNLABELLED where unknown) and a note for the summary when the
    solution cannot be read again (its unreadable rows are then left out of the GAP)."""
    ids = order.loc[order["status"] != OK, "id"].reset_index(drop=True)
    unknown = pd.Series(schema.UNLABELLED, index=ids, dtype=np.int64)
    if ids.empty:
        return unknown, ""
    section = read_json(Path(data_dir) / schema.PREP_REPORT).get("competition") or {}
    solution = section.get("solution")
    if not solution:
        return unknown, ""
    try:
        sol = read_solution(solution)
    except PipelineError as e:
        return unknown, f"{len(ids)} unreadable row(s) not scored: their labels are in {solution} ({e})"
    label_of = {int(lid): int(c) for c, lid in zip(label_map["label"], label_map["landmark_id"])}
    return pd.Series(label_rows(ids, sol, label_of)["label"].to_numpy(), index=ids), ""


def _gap_of_file(path: Path, labels: pd.Series, label_map: pd.DataFrame) -> tuple[float, int]:
    """GAP of a written submission against ``labels`` (by id; UNLABELLED rows left out): an empty
    answer of a landmark row counts in M, as on Kaggle."""
    sub = pd.read_csv(path, dtype=str, keep_default_na=False)
    to_class = {str(lid): c for c, lid in enumerate(label_map["landmark_id"])}
    toks = sub["landmarks"].str.split()
    pred = np.array([to_class[t[0]] if t else NO_ANSWER for t in toks])
    conf = np.array([float(t[1]) if t else np.nan for t in toks])
    lab = labels.reindex(sub["id"]).fillna(schema.UNLABELLED).to_numpy(dtype=np.int64)
    return gap(pred, conf, lab), int((lab != schema.UNLABELLED).sum())


def check_coverage(comp: Preds, order: pd.DataFrame, data_dir: Path) -> None:
    """The predictions cover every readable id of the order file and no other id (one line)."""
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


def answer_frame(comp: Preds, order: pd.DataFrame, plan) -> pd.DataFrame:
    """``id,landmarks`` in the order file's order: the post-processed top-1 answer of every readable
    row, an empty cell for the unreadable ones."""
    pred, conf = final_answers(plan, schema.COMPETITION, comp)  # landmark-ness, then post-processing
    pos = pd.Series(np.arange(len(comp.ids)), index=comp.ids).reindex(order["id"]).to_numpy()
    answerable = (order["status"] == OK).to_numpy() & ~np.isnan(pos)
    idx = np.where(answerable, pos, 0).astype(np.int64)
    out_pred = np.where(answerable, pred[idx], NO_ANSWER)
    out_conf = np.where(answerable, conf[idx], np.nan)
    return submission_frame(order["id"].to_numpy(), out_pred, out_conf, plan.label_map)


def run_submit(cfg: EnsembleConfig) -> dict:
    """Ensemble the competition predictions, write and validate ``submissions/<name>.csv``.

    Returns ``submission`` (path), ``rows``, ``answers``, ``empty``, ``unreadable``, ``gap``
    (None when the competition set is unlabelled), ``scored`` (rows in that GAP, unreadable
    landmark rows included), ``gap_note``.
    """
    out = submission_target(cfg)  # before the work: a refusal costs nothing
    data_dir = cfg.data_dir
    order = read_order(data_dir)
    plan = make_plan(cfg, need_oof=False)
    paths = plan.paths(schema.COMPETITION, "run 'python -m pipeline predict manifests=competition' first")
    comp = stream_ensemble(paths, schema.COMPETITION, [plan.weights], cfg.method, plan.checker)[0]
    check_coverage(comp, order, data_dir)
    frame = answer_frame(comp, order, plan)
    labelled = bool((comp.labels != schema.UNLABELLED).any())
    labels, note = broken_labels(data_dir, order, plan.label_map) if labelled else (pd.Series(dtype=np.int64), "")
    labels = pd.concat([pd.Series(comp.labels, index=comp.ids), labels])
    del comp
    with output_errors("submit"), folder_lock(out.parent, "submit"):
        submission_target(cfg)  # again under the lock: another submit may have written it since
        stats, score, scored = _write(out, frame, order, labels if labelled else None, plan.label_map)
        result = {
            "submission": out,
            **stats,
            "unreadable": int((order["status"] != OK).sum()),
            "gap": score,
            "scored": scored,
            "gap_note": note,
            "tuned_on_it": cfg.tune_on == "competition" and bool(plan.postprocess),
            "postprocess": "; ".join(x.describe() for x in (plan.landmark, plan.final) if x and x.active) or "none",
            "weights": {m: round(float(w), 4) for m, w in plan.weights.items()},
            # what was read: <manifest>_tta.npz where a run has it with tta=true, _knn.npz with knn=true
            "inputs": {m: sorted({p.name for p in ps}) for m, ps in paths.items()},
        }
        write_json(out.with_suffix(".json"), _record(cfg, plan, result))
    _answers_figure(out, frame, labels if labelled else None, plan, score)
    log.info("wrote %s (%d rows, %d empty)", out, stats["rows"], stats["empty"])
    return result


def _answers_figure(out: Path, frame: pd.DataFrame, labels, plan, score) -> None:
    """``<name>_answers.png``: confidences of landmarks vs non-landmarks and answers per class
    (best effort: a figure never fails a submission)."""
    from pipeline.report.plots_answers import plot_answers

    gap_text = f"competition GAP {score:.4f}" if score is not None else "unlabelled test set"
    try:
        plot_answers(frame, labels, len(plan.label_map), out.with_name(f"{out.stem}_answers.png"),
                     f"{out.name}: {gap_text}")  # fmt: skip
    except Exception as e:  # noqa: BLE001 - the CSV is written and validated already
        log.warning("%s: answers figure not written (%s)", out, e)


def submission_target(cfg: EnsembleConfig) -> Path:
    """``<submissions_dir>/<name>.csv``, refused in one line when it cannot or must not be written: the
    folder is a file, the CSV is a folder, or another experiment (or not submit) wrote it and
    ``overwrite`` is off (``<name>.json`` records the experiment of every submission)."""
    sub_dir = Path(cfg.submissions_dir)
    if sub_dir.exists() and not sub_dir.is_dir():
        raise PipelineError(f"submit: submissions_dir {sub_dir} is a file, not a folder")
    out = sub_dir / f"{cfg.name}.csv"
    if out.is_dir():
        raise PipelineError(f"submit: {out} is a folder, not a submission file: remove it or give another name=")
    if out.exists() and not cfg.overwrite:
        wrote = read_json(out.with_suffix(".json")).get("experiment")
        if wrote != cfg.experiment:
            who = f"experiment '{wrote}'" if wrote else f"something else than submit (no {out.stem}.json)"
            raise PipelineError(
                f"submit: {out} was written by {who}, this is experiment '{cfg.experiment}': not replaced; "
                "give another name=... or overwrite=true to replace it"
            )
    return out


def _write(out: Path, frame: pd.DataFrame, order: pd.DataFrame, labels: pd.Series | None, label_map: pd.DataFrame):
    """Write ``out`` atomically once it passes the validator; (counts, GAP or None, rows scored)."""
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False)
        problems, stats = validate_submission(tmp, order["id"].tolist(), name=str(out))
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise PipelineError(f"the submission fails validation, not written: {problems[0]}{more}")
        score, scored = _gap_of_file(tmp, labels, label_map) if labels is not None else (None, 0)
    return stats, score, scored


def _record(cfg: EnsembleConfig, plan, result: dict) -> dict:
    """``<name>.json``: what made the submission."""
    return {
        "experiment": cfg.experiment,  # submit never replaces a file of another experiment without overwrite=true
        "name": cfg.name,
        "dataset": cfg.dataset,
        "models": {m: len(d) for m, d in plan.runs.items()},
        "missing_models": plan.missing,
        "method": cfg.method,
        "tta": cfg.tta,
        "knn": cfg.knn,
        "threshold": plan.final.threshold,
        "penalty_strength": plan.final.strength,
        **{k: v for k, v in result.items() if k != "submission"},
    }


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
        print(f"GAP {r['gap']:.4f} over the {r['scored']} labelled rows, unreadable ones with an empty answer{note}")
        if r["gap_note"]:
            print(f"note: {r['gap_note']}")
    return 0
