"""The contracts between stages: manifest columns, file names and the run-folder layout.

Change a file name or column here and every stage follows; tests pin these.

data/<dataset>/
    train.csv, val.csv, test.csv   MANIFEST_COLUMNS; ``image`` is relative to the dataset folder
    label_map.csv                  LABEL_MAP_COLUMNS (label = class index used by the models)
    images/                        resized JPEG cache
    prep_config.yaml, prep_report.json
folds/<dataset>_k<K>_s<seed>.csv   FOLD_COLUMNS
runs/<experiment>/<model>/fold<k>/ RUN_FILES (config, metrics, curves, checkpoints, predictions)
submissions/<name>.csv             SUBMISSION_COLUMNS (Kaggle landmark format)
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from common.errors import DataError

MANIFEST_COLUMNS = ["id", "image", "label", "landmark_id"]
LABEL_MAP_COLUMNS = ["label", "landmark_id", "name", "count"]
FOLD_COLUMNS = ["id", "fold"]
SUBMISSION_COLUMNS = ["id", "landmarks"]
SPLITS = ("train", "val", "test")

# Label values below 0 in manifests and prediction files (``label`` column / ``labels`` array).
# GAP (pipeline.metrics): NON_LANDMARK rows take a rank when predicted but are not in the
# denominator; OTHER_LANDMARK rows are in the denominator and can never be right; UNLABELLED rows
# are left out of every score (a real Kaggle test set has only those).
NON_LANDMARK = -1  # known: the image shows no landmark
UNKNOWN_LABEL = NON_LANDMARK  # older name of the same value
OTHER_LANDMARK = -2  # a landmark outside the label map (e.g. a test landmark not among the top-K)
UNLABELLED = -3  # no ground truth at all

# Extra manifests beside the splits (same MANIFEST_COLUMNS), written by prep when available:
COMPETITION = "competition"  # the competition's test set (prep ``test_root=DIR``); readable images only
COMPETITION_ORDER = "competition_order.csv"  # id, status: every sample_submission id in its order
NONLANDMARK = "nonlandmark"  # the pool of non-landmark images (label NON_LANDMARK), for training/post-processing
EXTRA_MANIFESTS = (COMPETITION, NONLANDMARK)

LABEL_MAP = "label_map.csv"
PREP_CONFIG = "prep_config.yaml"
PREP_REPORT = "prep_report.json"

# run folder: runs/<experiment>/<model>/fold<k>/
RUN_CONFIG = "config.yaml"
RUN_METRICS = "metrics.csv"
RUN_CURVES = "curves.png"
RUN_LAST = "last.pt"
RUN_BEST = "best.pt"
RUN_OOF = "oof.npz"  # ids (str), probs (N, C float16/32), labels (N int), meta (JSON); see pipeline.runs.predfile
RUN_TEST = "test.npz"  # the same for the test manifest
RUN_LOG = "train.log"
RUN_LOCK = ".lock"  # held (flock) by the process writing the folder; see common.lock
RUN_SUMMARY = "summary.json"
RUN_DONE = "DONE"  # marker written last: the fold finished and its predictions are complete


def manifest_path(data_dir: str | Path, split: str) -> Path:
    return Path(data_dir) / f"{split}.csv"


def pred_file(manifest: str, tta: bool = False, source: str = "") -> str:
    """Prediction file of a run folder for a manifest: ``oof`` (the fold's validation rows), ``test``,
    ``competition``, ``nonlandmark`` ...; ``<manifest>_tta.npz`` with test-time augmentation,
    ``<manifest>_knn.npz`` for the kNN-fused scores of the embed stage (``source="knn"``)."""
    return f"{manifest}{'_tta' if tta else ''}{'_' + source if source else ''}.npz"


def fold_file(folds_dir: str | Path, dataset: str, k: int, seed: int) -> Path:
    return Path(folds_dir) / f"{dataset}_k{k}_s{seed}.csv"


def model_dir(runs_root: str | Path, experiment: str, model: str) -> Path:
    """A model's folder of an experiment. ``timm:<name>`` becomes ``timm-<name>`` (a colon is invalid
    on Windows and awkward in shells and make); a folder of an older run with the colon is kept."""
    exp = Path(runs_root) / experiment
    safe = exp / model.replace(":", "-")
    return exp / model if ":" in model and not safe.exists() and (exp / model).exists() else safe


def run_dir(runs_root: str | Path, experiment: str, model: str, fold: int) -> Path:
    tag = "holdout" if fold < 0 else f"fold{fold}"
    return model_dir(runs_root, experiment, model) / tag


def _read_csv(path: Path, columns: list[str], what: str, int_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a contract CSV: text columns kept verbatim (an id "NA" stays "NA"), ``int_columns``
    converted exactly to int64 (never through float; a bad cell is one error naming its line)."""
    if not path.is_file():
        raise DataError(f"{what} not found: {path} (run the previous stage first, e.g. 'make prep')")
    text = {c: str for c in ("id", "image", "name", *int_columns)}
    try:
        df = pd.read_csv(path, dtype=text, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"{path}: not a readable CSV ({reason})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected {columns}")
    from common.ints import int64_column

    for col in int_columns:
        df[col] = int64_column(df[col], path, col)
    return df


def read_manifest(data_dir: str | Path, split: str) -> pd.DataFrame:
    """Read and check a split manifest (columns, non-empty, exact int64 labels and landmark ids, unique ids)."""
    path = manifest_path(data_dir, split)
    df = _read_csv(path, MANIFEST_COLUMNS, f"{split} manifest", int_columns=("label", "landmark_id"))
    if df.empty:
        raise DataError(f"{path}: manifest has no rows")
    empty = df["id"].str.strip() == ""
    if empty.any():
        raise DataError(f"{path}: line {int(empty.to_numpy().nonzero()[0][0]) + 2}: empty id")
    if df["id"].duplicated().any():
        dup = df.loc[df["id"].duplicated(), "id"].iloc[0]
        raise DataError(f"{path}: duplicate id '{dup}'")
    return df


def read_label_map(data_dir: str | Path) -> pd.DataFrame:
    """Read and check the label map: labels 0..n-1 in order, each landmark id (exact int64) once."""
    path = Path(data_dir) / LABEL_MAP
    df = _read_csv(path, LABEL_MAP_COLUMNS, "label map", int_columns=("label", "landmark_id"))
    if df.empty:
        raise DataError(f"{path}: the class list is empty")
    if list(df["label"]) != list(range(len(df))):
        raise DataError(f"{path}: labels must be 0..{len(df) - 1} in order")
    dup = df["landmark_id"].duplicated()
    if dup.any():
        i = int(dup.to_numpy().nonzero()[0][0])
        first = int((df["landmark_id"] == df["landmark_id"].iloc[i]).to_numpy().nonzero()[0][0])
        raise DataError(
            f"{path}: line {i + 2}: landmark_id {df['landmark_id'].iloc[i]} appears twice (first on line {first + 2})"
        )
    return df


def read_folds(path: str | Path, k: int | None = None, train_ids: pd.Series | None = None) -> pd.DataFrame:
    """Read a fold file; with ``k``/``train_ids`` also check it (one error line naming the row).

    Checked: ids unique (a duplicated id would leak validation rows into training), folds are
    integers in ``0..k-1`` with no fold empty, and the ids are exactly the train manifest's.
    """
    path = Path(path)
    df = _read_csv(path, FOLD_COLUMNS, "fold file")
    if df.empty:
        raise DataError(f"{path}: fold file has no rows (rerun 'make folds')")
    dup = df["id"].duplicated()
    if dup.any():
        i = int(dup.to_numpy().nonzero()[0][0])
        raise DataError(f"{path}: line {i + 2}: id '{df['id'].iloc[i]}' appears twice (rerun 'make folds')")
    num = pd.to_numeric(df["fold"], errors="coerce")
    bad = num.isna() | (num != num.round())
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(f"{path}: line {i + 2}: fold {df['fold'].iloc[i]!r} is not an integer")
    df["fold"] = num.astype("int64")
    if k is not None:
        out = (df["fold"] < 0) | (df["fold"] >= k)
        if out.any():
            i = int(out.to_numpy().nonzero()[0][0])
            raise DataError(f"{path}: line {i + 2}: fold {df['fold'].iloc[i]} outside 0..{k - 1}")
        empty = sorted(set(range(k)) - set(df["fold"]))
        if empty:
            raise DataError(f"{path}: fold(s) {empty} have no rows (k={k})")
    if train_ids is not None:
        have, want = set(df["id"]), set(train_ids)
        if have != want:
            extra, missing = sorted(have - want), sorted(want - have)
            what = f"{len(missing)} train ids have no fold (first: {missing[0]!r})" if missing else ""
            what += ("; " if what and extra else "") + (
                f"{len(extra)} ids are not in the train manifest (first: {extra[0]!r})" if extra else ""
            )
            raise DataError(f"{path} does not match the train manifest: {what} (rerun 'make folds')")
    return df


def label_map_sha(label_map: pd.DataFrame) -> str:
    """Identity of a label map: the landmark ids in label order (what class index i means)."""
    import hashlib

    text = ",".join(str(v) for v in label_map["landmark_id"].tolist())
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def prep_fingerprint(data_dir: str | Path, key: str = "fingerprint") -> str | None:
    """The (training) fingerprint of the prep that wrote ``data_dir`` (``prep_report.json``), None
    if absent; ``key="test_fingerprint"``: the identity of its competition test set."""
    import json

    try:
        return json.loads((Path(data_dir) / PREP_REPORT).read_text()).get(key)
    except (OSError, ValueError):
        return None
