"""Class selection, subsampling and stratified splits (seed 001's recipe), as pure functions.

Seed 001: keep the 1000 most frequent landmarks, then a random fraction (0.1) of their images,
then split train/val/test. Sampling here is per class (``round(n * ratio)``, at least 1), so the
class balance of the selection is kept and counts are exactly reproducible from the seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from common.errors import DataError


def top_k_classes(rows: pd.DataFrame, k: int) -> pd.DataFrame:
    """Rows of the ``k`` most frequent landmark ids (ties broken by the smaller id)."""
    counts = rows["landmark_id"].value_counts()
    counts = counts.sort_index().sort_values(ascending=False, kind="stable")
    keep = set(counts.index[:k])
    return rows[rows["landmark_id"].isin(keep)]


def subsample(
    rows: pd.DataFrame, ratio: float, seed: int, min_per_class: int = 0, max_per_class: int | None = None
) -> pd.DataFrame:
    """Keep ``round(n_c * ratio)`` (>= 1) images of each class, then apply min/max per class."""
    rng = np.random.default_rng(seed)
    parts = []
    for _lid, grp in rows.groupby("landmark_id", sort=True):
        n = max(1, int(round(len(grp) * ratio)))
        if max_per_class is not None:
            n = min(n, max_per_class)
        if n < min_per_class:
            continue
        parts.append(grp.iloc[np.sort(rng.choice(len(grp), n, replace=False))])
    if not parts:
        raise DataError("selection left no classes (check top_k, sample_ratio and min_per_class)")
    return pd.concat(parts)


def stratified_split(rows: pd.DataFrame, val_frac: float, test_frac: float, seed: int) -> pd.Series:
    """Assign each row to train/val/test, stratified by class; returns a Series of split names.

    Per class of n images: ``n_test = round(n * test_frac)``, ``n_val = round(n * val_frac)``,
    but a class always keeps at least one training image (small classes give up val/test first).
    Rows that carry a ``split == "test"`` column (an official test set, e.g. CIFAR) stay test.
    """
    rng = np.random.default_rng(seed + 1)
    split = pd.Series("train", index=rows.index, dtype=object)
    fixed_test = rows.get("split")
    pool = rows if fixed_test is None else rows[fixed_test != "test"]
    if fixed_test is not None:
        split[fixed_test == "test"] = "test"
        test_frac_pool = 0.0
    else:
        test_frac_pool = test_frac
    for _lid, grp in pool.groupby("landmark_id", sort=True):
        n = len(grp)
        n_test = int(round(n * test_frac_pool))
        n_val = int(round(n * val_frac))
        while n_test + n_val > n - 1 and (n_test or n_val):
            if n_test >= n_val and n_test:
                n_test -= 1
            else:
                n_val -= 1
        perm = grp.index.to_numpy()[rng.permutation(n)]
        split[perm[:n_test]] = "test"
        split[perm[n_test : n_test + n_val]] = "val"
    return split


def label_map(rows: pd.DataFrame) -> pd.DataFrame:
    """Class index (``label``) for each kept landmark id, in ascending landmark-id order."""
    g = rows.groupby("landmark_id", sort=True)
    lm = pd.DataFrame(
        {"landmark_id": list(g.groups), "name": g["name"].first().to_numpy(), "count": g.size().to_numpy()}
    )
    lm.insert(0, "label", np.arange(len(lm)))
    return lm
