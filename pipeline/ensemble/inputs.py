"""The ensemble's inputs: which prediction file of each run is read, and the checks every file
passes before anything is blended (classes, label map, prep, ids, labels, value range)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common import schema
from common.errors import DataError
from pipeline.metrics import score_all
from pipeline.runs.predfile import check_fresh, load_predictions, stale_weights
from pipeline.scores import TopK, accumulate

log = logging.getLogger(__name__)


RANGE_TOL = 1e-2  # float16 probabilities may exceed 1 by a rounding step


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
        self.test_fp = schema.prep_fingerprint(data_dir, "test_fingerprint")
        self.run_fp: tuple[str, Path] | None = None
        self.form: tuple[int | None, Path] | None = None  # (k of top-k files, None = dense; first file)
        self.rows: dict[str, tuple[np.ndarray, np.ndarray, Path]] = {}
        self.unverified = 0  # files of older runs: no weights identity recorded (warned once)

    def load(self, path: Path, manifest: str | None = None) -> dict:
        """Load a file (stored precision kept) and check it; ``manifest``: also its rows."""
        p = load_predictions(path, dtype=None)
        self.check(path, p)
        if manifest == schema.COMPETITION:
            self._same_test_set(path, p["meta"])
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
        self._same_weights(path, meta)
        self._same_form(path, probs)
        values = probs.val if isinstance(probs, TopK) else probs
        if len(values):
            lo, hi = float(values.min()), float(values.max())  # NaN propagates: caught below
            if not (lo >= -RANGE_TOL and hi <= 1 + RANGE_TOL):
                raise DataError(
                    f"{path}: probabilities must be finite and within [0, 1], found min {lo} max {hi} "
                    "(rerun the stage that wrote it)"
                )

    def _same_weights(self, path: Path, meta: dict) -> None:
        """A file predicted with an older ``best.pt`` of its run is refused; one without the
        record (older runs) is accepted with one warning for the whole stage."""
        check_fresh(path, meta)
        if stale_weights(path, meta) is None and (path.parent / schema.RUN_BEST).is_file():
            self.unverified += 1
            if self.unverified == 1:
                log.warning(
                    "%s records no weights identity (an older run): cannot tell whether it was predicted with "
                    "the current best.pt; 'make predict' rewrites it with the record (not warned again)",
                    path,
                )

    def _same_test_set(self, path: Path, meta: dict) -> None:
        """Competition predictions of another test set than the one prepped now are refused (the
        test set has its own identity: replacing it keeps the runs but not their predictions)."""
        have, now = meta.get("test_fingerprint"), self.test_fp
        if have and now and have != now:
            raise DataError(
                f"{path}: predictions of another competition test set ({have}; {self.prep_report} says {now}): "
                "the test set changed since: rerun 'make predict'"
            )

    def _same_form(self, path: Path, probs) -> None:
        """Files of one ensemble are all dense or all top-k of one k (a mix would rank unlike)."""
        k = probs.k if isinstance(probs, TopK) else None
        if self.form is None:
            self.form = (k, path)
        elif self.form[0] != k:
            form = {None: "dense (every class)"}
            raise DataError(
                f"{path}: {form.get(k, f'top-{k}')} predictions, but {self.form[1]} holds "
                f"{form.get(self.form[0], f'top-{self.form[0]}')}: re-predict them with one pred_topk"
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


def fold_average(paths: list[Path], checker: Checker, manifest: str) -> Preds:
    """The mean over a model's folds of one manifest, reading one file at a time (float32 sum;
    top-k files: the union of the folds' candidates, see :mod:`pipeline.scores`)."""
    acc: np.ndarray | None = None
    for path in paths:
        p = checker.load(path, manifest)
        if isinstance(p["probs"], TopK):
            ids, labels = p["ids"], p["labels"]
            acc = accumulate(acc, p["probs"], 1.0 / len(paths))
            continue
        if acc is None:
            acc = np.zeros(p["probs"].shape, dtype=np.float32)
            ids, labels = p["ids"], p["labels"]
        acc += p["probs"]
        del p
    if isinstance(acc, TopK):  # the exact union; the ensemble keeps the file's k at its end
        return Preds(ids, labels, acc, str(paths[0]))
    acc /= len(paths)
    return Preds(ids, labels, acc, str(paths[0]))


def score_row(model: str, fold: str, preds: Preds, **extra) -> dict:
    """A leaderboard row: the scores of ``preds`` (top-1, top-5, GAP, ...) and ``extra`` facts."""
    return {"model": model, "fold": fold, "n": len(preds.labels), **score_all(preds.probs, preds.labels), **extra}
