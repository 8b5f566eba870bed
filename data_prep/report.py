"""The prep report's checks and pictures: counts that must reconcile, the class-size histogram.

GLD v2 is long-tailed (tens of thousands of classes with 2-5 photos): the report bins the class
sizes of the source, of the selection and of its training split (``class_sizes``), because the
fold rule treats classes with fewer training images than the number of folds differently (see
:class:`data_prep.config.FoldsConfig`), and draws them in ``class_histogram.png``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from common.io import atomic_write
from data_prep.select import size_histogram

HISTOGRAM = "class_histogram.png"
BARS_UP_TO = 2000  # classes drawn one bar each (the defaults); above, a filled curve (a bar per class of 200k: minutes)
FOLD_RULE = (
    "folds: classes with at least k training images are stratified; classes with fewer are spread round-robin "
    "over the folds in a seeded order (one image per fold), so every training image gets one out-of-fold prediction"
)


def class_sizes(source: pd.Series, kept: pd.Series, train: pd.Series) -> dict:
    """``class_sizes`` section: classes per size bin of the source, the selection and its train split."""
    return {
        "source": size_histogram(source.value_counts().to_numpy()),
        "kept": size_histogram(kept.value_counts().to_numpy()),
        "train": size_histogram(train.value_counts().to_numpy()),
        "fold_rule": FOLD_RULE,
    }


def reason_counts(failed: dict[str, str]) -> dict[str, int]:
    return {k: int(v) for k, v in sorted(pd.Series(failed, dtype=object).value_counts().items())}


def check_counts(r: dict) -> None:
    """The report's counts must add up; a mismatch is a bug in this stage, not a data error."""
    nl, comp = r.get("nonlandmark"), r.get("competition")
    ok = (
        r["rows_in"] == r["rows_read"] + sum(r["skipped_reading"].values())
        and r["rows_after_sampling"] == r["rows_kept"] + sum(r["skipped_images"].values())
        and sum(r["splits"].values()) == r["rows_kept"] + (nl["test"] if nl else 0)
    )
    if comp:
        ok = ok and comp["ids"] == comp["readable"] + sum(comp["skipped"].values())
        ok = ok and sum(comp["labels"].values()) == comp["readable"]
    if nl:
        ok = ok and nl["images"] == nl["readable"] + sum(nl["skipped"].values()) == nl["test"] + nl["pool"] + sum(
            nl["skipped"].values()
        )
    if not ok:
        raise AssertionError(f"prep report counts do not reconcile: {r}")




def plot_histogram(lm: pd.DataFrame, path, title: str) -> None:
    """Images per class, classes sorted by size (log scale past :data:`BARS_UP_TO` classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = lm["count"].sort_values(ascending=False).to_numpy()
    fig, ax = plt.subplots(figsize=(6, 3))
    if len(counts) <= BARS_UP_TO:
        ax.bar(range(len(counts)), counts, width=1.0)
    else:
        ax.fill_between(np.arange(len(counts)), counts, step="post", linewidth=0)
        ax.set_yscale("log")
    ax.set_xlabel("class (sorted by size)")
    ax.set_ylabel("images")
    ax.set_title(f"{title}: images per class ({len(counts)} classes)")
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)
