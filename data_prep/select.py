"""Class selection, subsampling and stratified splits (seed 001's recipe), as pure functions.

Seed 001: keep the 1000 most frequent landmarks, then a random fraction (0.1) of their images,
then split train/val/test. Sampling here is per class (``round(n * ratio)``, at least 1), so the
class balance of the selection is kept and counts are exactly reproducible from the seed.

Everything is vectorised over rows (all of GLD v2: 4.1M rows, 203k classes): the only Python
loop left draws each class's random permutation in class order, which keeps the random stream
-- and so every manifest -- identical to the former per-class ``groupby`` code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from common.errors import DataError

ALL = "all"  # top_k=all: every class
# class-size bins of the prep report (images per class): GLD v2 has tens of thousands of classes of 2-5 photos
SIZE_BINS = ((1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 9), (10, 19), (20, 49), (50, 99), (100, 499), (500, 999))


def class_groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(order, starts, sizes)``: row positions grouped by ascending key (original order inside a
    group, as ``groupby(sort=True)`` iterates), where each group starts and how many rows it has."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(order) else np.zeros(0, dtype=np.int64)
    sizes = np.diff(np.r_[starts, len(order)])
    return order, starts, sizes


def group_permutations(rng: np.random.Generator | np.random.RandomState, sizes: np.ndarray) -> np.ndarray:
    """Concatenated ``rng.permutation(n)`` of every group size, drawn in order from one stream.

    Each group's aranges are shuffled in place (what ``permutation(int)`` does), so the draws are
    exactly those of one ``permutation`` call per group; only this loop is per class."""
    sizes = np.asarray(sizes, dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    out = np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(starts, sizes)
    for s, n in zip(starts.tolist(), sizes.tolist()):
        if n > 1 or isinstance(rng, np.random.Generator):
            rng.shuffle(out[s : s + n])
    return out


def top_k_classes(rows: pd.DataFrame, k: int | str, min_images: int = 0) -> pd.DataFrame:
    """Rows of the ``k`` most frequent landmark ids (ties broken by the smaller id; ``k="all"``:
    every class) among the classes with at least ``min_images`` rows."""
    counts = rows["landmark_id"].value_counts()
    if min_images > 1:
        counts = counts[counts >= min_images]
    if k != ALL:
        counts = counts.sort_index().sort_values(ascending=False, kind="stable").iloc[: int(k)]
    elif min_images <= 1:
        return rows
    return rows[rows["landmark_id"].isin(counts.index)]


def subsample(
    rows: pd.DataFrame, ratio: float, seed: int, min_per_class: int = 0, max_per_class: int | None = None
) -> pd.DataFrame:
    """Keep ``round(n_c * ratio)`` (>= 1) images of each class, then apply min/max per class.

    Classes in ascending landmark id; one ``rng.choice`` per kept class in that order (rows of a
    class keep their order). Classes after the last one sampled below its size take all their
    rows without drawing: the draws could not change what they keep."""
    rng = np.random.default_rng(seed)
    order, starts, sizes = class_groups(rows["landmark_id"].to_numpy())
    n = np.maximum(1, np.round(sizes * ratio).astype(np.int64))
    if max_per_class is not None:
        n = np.minimum(n, max_per_class)
    kept = np.flatnonzero(n >= min_per_class)
    if not len(kept):
        raise DataError("selection left no classes (check top_k, sample_ratio and min_per_class)")
    keep = np.zeros(len(order), dtype=bool)
    partial = kept[n[kept] < sizes[kept]]
    last = int(partial[-1]) if len(partial) else -1
    for c in kept[kept <= last].tolist():
        keep[starts[c] + rng.choice(int(sizes[c]), int(n[c]), replace=False)] = True
    whole = kept[kept > last]
    keep[np.repeat(starts[whole], sizes[whole]) + _offsets(sizes[whole])] = True
    return rows.iloc[order[keep]]


def _offsets(sizes: np.ndarray) -> np.ndarray:
    """``0..n-1`` for every group size, concatenated."""
    sizes = np.asarray(sizes, dtype=np.int64)
    return np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)


def _val_test_counts(n: np.ndarray, val_frac: float, test_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """Per class ``(n_test, n_val)``: rounded shares, a class always keeps one training image
    (the larger share gives up one image at a time, test first on a tie)."""
    n_test = np.round(n * test_frac).astype(np.int64)
    n_val = np.round(n * val_frac).astype(np.int64)
    while True:
        over = (n_test + n_val > n - 1) & ((n_test > 0) | (n_val > 0))
        if not over.any():
            return n_test, n_val
        from_test = over & (n_test >= n_val) & (n_test > 0)
        n_test = n_test - from_test
        n_val = n_val - (over & ~from_test)


def stratified_split(rows: pd.DataFrame, val_frac: float, test_frac: float, seed: int) -> pd.Series:
    """Assign each row to train/val/test, stratified by class; returns a Series of split names.

    Per class of n images: ``n_test = round(n * test_frac)``, ``n_val = round(n * val_frac)``,
    but a class always keeps at least one training image (small classes give up val/test first).
    Rows that carry a ``split == "test"`` column (an official test set, e.g. CIFAR) stay test.
    """
    rng = np.random.default_rng(seed + 1)
    code = np.zeros(len(rows), dtype=np.int8)  # 0 train, 1 val, 2 test
    fixed_test = rows.get("split")
    if fixed_test is not None:
        is_fixed = (fixed_test == "test").to_numpy()
        code[is_fixed] = 2
        pool, test_frac = np.flatnonzero(~is_fixed), 0.0
    else:
        pool = np.arange(len(rows))
    order, starts, sizes = class_groups(rows["landmark_id"].to_numpy()[pool])
    n_test, n_val = _val_test_counts(sizes, val_frac, test_frac)
    perm = group_permutations(rng, sizes)  # rank r of a class goes to its row perm[r]
    rank = np.arange(len(perm)) - np.repeat(starts, sizes)
    cls = np.repeat(np.arange(len(sizes)), sizes)
    target = pool[order[np.repeat(starts, sizes) + perm]]
    code[target] = np.where(rank < n_test[cls], 2, np.where(rank < n_test[cls] + n_val[cls], 1, 0))
    names = np.array(["train", "val", "test"], dtype=object)
    return pd.Series(names[code], index=rows.index, dtype=object)


def label_map(rows: pd.DataFrame) -> pd.DataFrame:
    """Class index (``label``) for each kept landmark id, in ascending landmark-id order."""
    g = rows.groupby("landmark_id", sort=True)
    lm = pd.DataFrame(
        {"landmark_id": list(g.groups), "name": g["name"].first().to_numpy(), "count": g.size().to_numpy()}
    )
    lm.insert(0, "label", np.arange(len(lm)))
    return lm


def size_histogram(sizes: pd.Series | np.ndarray) -> dict[str, int]:
    """Classes per size bin (``{"1": .., "2": .., "6-9": .., "1000+": ..}``; empty bins left out):
    the prep report's view of the long tail, which decides what the folds can do with it."""
    sizes = np.asarray(sizes, dtype=np.int64)
    out: dict[str, int] = {}
    for lo, hi in SIZE_BINS:
        n = int(((sizes >= lo) & (sizes <= hi)).sum())
        if n:
            out[str(lo) if lo == hi else f"{lo}-{hi}"] = n
    big = int((sizes > SIZE_BINS[-1][1]).sum())
    if big:
        out[f"{SIZE_BINS[-1][1] + 1}+"] = big
    return out
