"""Fixed, seeded stratified K-fold files: every CV score in the project is computed on them.

``folds/<dataset>_k<K>_s<fold_seed>.csv`` with columns ``id,fold`` over the train manifest. Made
once; training takes ``fold=k`` and validates on the rows of that fold (out-of-fold predictions).

Class-size rule (see :class:`~data_prep.config.FoldsConfig`): classes with >= K training images
are stratified exactly as scikit-learn's ``StratifiedKFold(K, shuffle=True, random_state=seed)``
does; classes with fewer (GLD v2: most of them) are spread round-robin over the folds in a seeded
order, so every id gets exactly one fold and a small class never has two images in one fold.
Both are vectorised (all of GLD v2 in seconds): only the per-class shuffles loop, drawing from
the same random streams as before, so fold files stay byte-identical.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from common import schema
from common.errors import DataError
from common.io import write_csv
from data_prep.config import FoldsConfig
from data_prep.select import class_groups, group_permutations

log = logging.getLogger(__name__)


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``StratifiedKFold(k, shuffle=True, random_state=seed)``'s test fold of every row, without
    its per-class ``labels == c`` scan (O(rows x classes): hours at 80k classes).

    Same steps as scikit-learn: classes numbered by first appearance, per-fold allocation by
    round robin over the sorted labels, then per class ``arange(k).repeat(allocation)``
    shuffled by one ``RandomState(seed)`` in class order and laid on the class's rows in order.
    """
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    _, by_appearance = np.unique(first, return_inverse=True)
    encoded = by_appearance[inverse.reshape(-1)]
    n_classes = len(first)
    ordered = np.sort(encoded)
    allocation = np.asarray([np.bincount(ordered[i::k], minlength=n_classes) for i in range(k)])  # (k, classes)
    sizes = allocation.sum(axis=0)
    blocks = np.repeat(np.tile(np.arange(k), n_classes), allocation.T.reshape(-1))  # class-major fold blocks
    rng = np.random.RandomState(seed)
    for s, n in zip((np.cumsum(sizes) - sizes).tolist(), sizes.tolist()):
        rng.shuffle(blocks[s : s + n])
    fold = np.empty(len(labels), dtype=np.int64)
    fold[np.argsort(encoded, kind="stable")] = blocks
    return fold


def make_folds(train: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """Assign a fold in ``[0, k)`` to every row of ``train`` (stratified by ``label``; classes
    with fewer than ``k`` rows round-robin, see the module docstring)."""
    fold = np.full(len(train), -1, dtype=np.int64)
    labels = train["label"].to_numpy()
    uniq, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    small = (counts < k)[inverse.reshape(-1)]
    big_idx = np.flatnonzero(~small)
    if len(big_idx):
        fold[big_idx] = stratified_folds(labels[big_idx], k, seed)
    small_idx = np.flatnonzero(small)
    order, starts, sizes = class_groups(labels[small_idx])  # small classes in ascending label order
    perm = group_permutations(np.random.default_rng(seed), sizes)
    fold[small_idx[order[np.repeat(starts, sizes) + perm]]] = np.arange(len(small_idx)) % k
    return pd.DataFrame({"id": train["id"].to_numpy(), "fold": fold})


def check_folds(folds: pd.DataFrame, train: pd.DataFrame, k: int, path: Path) -> None:
    """Every fold must hold validation rows (training on fold f validates on them): refuse, in one
    line, a train manifest that leaves one empty; log how many classes took the round-robin rule."""
    sizes = np.bincount(folds["fold"].to_numpy(), minlength=k)
    counts = train["label"].value_counts()
    n_small, rows_small = int((counts < k).sum()), int(counts[counts < k].sum())
    if (sizes == 0).any():
        empty = ", ".join(str(f) for f in np.flatnonzero(sizes == 0))
        raise DataError(
            f"folds: {path}: k={k} leaves fold(s) {empty} empty: {len(train)} training images in {len(counts)} "
            f"classes ({n_small} with fewer than {k} images, spread one per fold); lower k or keep more images"
        )
    if n_small:
        log.info(
            "%d of %d classes (%d images) have fewer than k=%d training images: spread round-robin over the folds",
            n_small,
            len(counts),
            rows_small,
            k,
        )


def run_folds(cfg: FoldsConfig) -> Path:
    """Write (or keep, when unchanged) the fold file of ``cfg``; returns its path."""
    data_dir = Path(cfg.data_root) / cfg.dataset
    train = schema.read_manifest(data_dir, "train")
    if (train["label"] < 0).any():  # train.csv is landmark-only; non-landmarks live in test.csv / nonlandmark.csv
        bad = train.loc[train["label"] < 0, "id"].iloc[0]
        raise DataError(f"{schema.manifest_path(data_dir, 'train')}: id '{bad}' has label < 0; folds need class labels")
    out = schema.fold_file(cfg.folds_dir, cfg.dataset, cfg.k, cfg.fold_seed)
    folds = make_folds(train, cfg.k, cfg.fold_seed)
    check_folds(folds, train, cfg.k, schema.manifest_path(data_dir, "train"))
    if out.is_file():
        old = schema.read_folds(out)
        if old.equals(folds):
            log.info("%s is up to date", out)
            return out
        log.warning("%s changes (the train manifest changed): CV scores made on the old file are not comparable", out)
    write_csv(out, folds)
    log.info("wrote %s: %d ids, fold sizes %s", out, len(folds), folds["fold"].value_counts().sort_index().tolist())
    return out
