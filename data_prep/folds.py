"""Fixed, seeded stratified K-fold files: every CV score in the project is computed on them.

``folds/<dataset>_k<K>_s<fold_seed>.csv`` with columns ``id,fold`` over the train manifest. Made
once; training takes ``fold=k`` and validates on the rows of that fold (out-of-fold predictions).
Classes with fewer than K training images are spread round-robin over folds (StratifiedKFold
refuses them), so every id gets exactly one fold.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from common import schema
from common.errors import DataError
from common.io import write_csv
from data_prep.config import FoldsConfig

log = logging.getLogger(__name__)


def make_folds(train: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """Assign a fold in ``[0, k)`` to every row of ``train`` (stratified by ``label``)."""
    fold = np.full(len(train), -1, dtype=int)
    labels = train["label"].to_numpy()
    counts = pd.Series(labels).value_counts()
    small = np.isin(labels, counts[counts < k].index)
    big_idx = np.flatnonzero(~small)
    if len(big_idx):
        skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for f, (_, val) in enumerate(skf.split(np.zeros(len(big_idx)), labels[big_idx])):
                fold[big_idx[val]] = f
    rng = np.random.default_rng(seed)
    start = 0
    for lab in sorted(set(labels[small])):
        idx = np.flatnonzero(small & (labels == lab))
        idx = idx[rng.permutation(len(idx))]
        fold[idx] = (start + np.arange(len(idx))) % k
        start += len(idx)
    return pd.DataFrame({"id": train["id"].to_numpy(), "fold": fold})


def run_folds(cfg: FoldsConfig) -> Path:
    """Write (or keep, when unchanged) the fold file of ``cfg``; returns its path."""
    data_dir = Path(cfg.data_root) / cfg.dataset
    train = schema.read_manifest(data_dir, "train")
    if (train["label"] < 0).any():  # train.csv is landmark-only; non-landmarks live in test.csv / nonlandmark.csv
        bad = train.loc[train["label"] < 0, "id"].iloc[0]
        raise DataError(f"{schema.manifest_path(data_dir, 'train')}: id '{bad}' has label < 0; folds need class labels")
    out = schema.fold_file(cfg.folds_dir, cfg.dataset, cfg.k, cfg.fold_seed)
    folds = make_folds(train, cfg.k, cfg.fold_seed)
    if out.is_file():
        old = schema.read_folds(out)
        if old.equals(folds):
            log.info("%s is up to date", out)
            return out
        log.warning("%s changes (the train manifest changed): CV scores made on the old file are not comparable", out)
    write_csv(out, folds)
    log.info("wrote %s: %d ids, fold sizes %s", out, len(folds), folds["fold"].value_counts().sort_index().tolist())
    return out
