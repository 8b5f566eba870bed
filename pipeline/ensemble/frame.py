"""Answers to rows of a submission: ``id,landmarks`` with the original landmark ids."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from common.errors import DataError, PipelineError
from pipeline.metrics import top1

log = logging.getLogger(__name__)


def submission_frame(ids: np.ndarray, pred: np.ndarray, conf: np.ndarray, label_map: pd.DataFrame) -> pd.DataFrame:
    """Kaggle landmark format: ``id,landmarks`` with ``"<landmark_id> <confidence>"`` (original
    landmark ids) or an empty cell for a query without an answer (``pred < 0`` or NaN conf)."""
    pred, conf = np.asarray(pred), np.asarray(conf, dtype=np.float64)
    answered = (pred >= 0) & ~np.isnan(conf)
    if answered.any():
        c = conf[answered]
        if not (np.isfinite(c).all() and c.min() >= 0 and c.max() <= 1):
            raise PipelineError(f"submission: confidences outside [0, 1] (min {c.min()}, max {c.max()})")
        if pred[answered].max() >= len(label_map):
            raise DataError(f"submission: class {pred[answered].max()} but the label map has {len(label_map)} classes")
    lids = label_map["landmark_id"].to_numpy()
    cells = [f"{lids[p]} {c:.6f}" if a else "" for p, c, a in zip(pred, conf, answered)]
    return pd.DataFrame({"id": np.asarray(ids).astype(str), "landmarks": cells})


def submission(ids: np.ndarray, probs: np.ndarray, label_map: pd.DataFrame) -> pd.DataFrame:
    """The top-1 answer of every row of ``probs`` in the Kaggle format (no post-processing)."""
    if probs.shape[1] != len(label_map):
        raise DataError(f"predictions have {probs.shape[1]} classes but the label map has {len(label_map)}")
    return submission_frame(ids, *top1(probs), label_map)
