"""What drives a submission's GAP, in one figure beside it (``<name>_answers.png``).

GAP ranks every answer by its confidence across all test photos, and most competition photos show
no landmark: the score depends on the non-landmarks' answers ranking below the landmarks'. The left
panel shows the two confidence distributions (labelled test sets) or the one of every answer; the
right one how the answers spread over the classes, against the uniform share (the chance line): a
model that answers one class for half the test set shows it there at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common.schema import NON_LANDMARK, OTHER_LANDMARK
from pipeline.report.plots_base import new_figure, save

SHOWN_CLASSES = 12


def plot_answers(
    frame: pd.DataFrame, labels: pd.Series | None, num_classes: int, path: str | Path, title: str
) -> Path:
    """``frame``: the submission (``id, landmarks`` = ``"<landmark_id> <conf>"`` or empty);
    ``labels``: class per id (NON_LANDMARK, OTHER_LANDMARK...) when the test set is labelled."""
    cells = frame["landmarks"].fillna("").astype(str)
    answered = cells != ""
    parts = cells[answered].str.split(" ", n=1, expand=True)
    lid, conf = parts[0], parts[1].astype(float).to_numpy()
    fig = new_figure(10.0, 3.6)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.15]})
    bins = np.linspace(0, 1, 21)
    if labels is not None:
        y = labels.reindex(frame.loc[answered, "id"]).to_numpy()
        land, non = (y >= 0) | (y == OTHER_LANDMARK), y == NON_LANDMARK
        left.hist(conf[land], bins=bins, histtype="step", lw=1.8, color="C0", label=f"landmark photos ({land.sum()})")
        left.hist(conf[non], bins=bins, histtype="step", lw=1.8, color="C3", label=f"non-landmarks ({non.sum()})")
        left.legend(fontsize=8, frameon=False, loc="upper center", ncols=2)
        left.set_title("confidence of the answers: GAP wants red left of blue", fontsize=9)
    else:
        left.hist(conf, bins=bins, histtype="step", lw=1.8, color="C0", label=f"all answers ({len(conf)})")
        left.legend(fontsize=8, frameon=False)
        left.set_title("confidence of the answers (unlabelled test set)", fontsize=9)
    left.set_ylim(top=left.get_ylim()[1] * 1.3)  # room for the legend above the bars
    left.set_xlabel("confidence")
    left.set_ylabel("answers")
    _class_shares(right, lid, len(frame), num_classes)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def _class_shares(ax, lid: pd.Series, rows: int, num_classes: int) -> None:
    counts = lid.value_counts()
    shown = counts.iloc[:SHOWN_CLASSES]
    share = shown.to_numpy() / max(rows, 1)
    ax.bar(np.arange(len(shown)), share, color="C0", alpha=0.8)
    ax.axhline(1 / max(num_classes, 1), color="0.3", ls="--", lw=1, label=f"uniform share (1/{num_classes})")
    ax.set_xticks(np.arange(len(shown)), [str(x) for x in shown.index], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("share of all test photos")
    ax.set_xlabel("predicted landmark id")
    top = f"{int(shown.iloc[0])} of {rows}" if len(shown) else "none"
    ax.set_title(f"answers per class: the most frequent gets {top} ({len(counts)} classes used)", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
