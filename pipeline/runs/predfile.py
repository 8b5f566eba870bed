"""Prediction files (``<run>/<manifest>.npz``): the one format every stage after training reads.

Arrays:

* ``ids``    (N,) str: manifest ids, in manifest order;
* ``probs``  (N, C) float16 or float32: class probabilities (rows sum to 1);
* ``labels`` (N,) int64: the manifest's labels (class index, or a negative value of
  :mod:`common.schema`: NON_LANDMARK, OTHER_LANDMARK, UNLABELLED);
* ``meta``   0-d str: JSON with where the predictions come from (``manifest``, ``model``,
  ``fold``, ``tta``, ``prep_fingerprint``, ``label_map_sha``, ``num_classes`` ...). Files written
  before ``meta`` existed have none (``{}``).

float16 halves the disk use (a 100k x 1000 test set is 200 MB per run instead of 400 MB); its
3 significant digits are plenty for averaging and ranking. Pure numpy: the ensemble layer reads
these files without importing torch or the models. Written atomically.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from common.errors import DataError
from common.io import atomic_write


def save_predictions(
    path: str | Path,
    ids: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    meta: dict | None = None,
    dtype: str = "float32",
) -> None:
    """Write a prediction file atomically (refusing non-finite probabilities)."""
    probs = np.asarray(probs)
    if probs.ndim != 2 or len(probs) != len(ids) or len(labels) != len(ids):
        raise ValueError(f"predictions: {len(ids)} ids, probs {probs.shape}, {len(labels)} labels do not match")
    if not np.isfinite(probs).all():
        raise DataError(f"{path}: {int((~np.isfinite(probs)).any(axis=1).sum())} rows of non-finite probabilities")
    with atomic_write(path, "wb") as f:
        np.savez(
            f,
            ids=np.asarray(ids).astype(str),
            probs=probs.astype(dtype),
            labels=np.asarray(labels, dtype=np.int64),
            meta=np.array(json.dumps(meta or {}, sort_keys=True, default=str)),
        )


def load_predictions(path: str | Path, dtype: str | None = "float32") -> dict:
    """``{"ids", "probs", "labels", "meta"}`` of a prediction file; one DataError line if unreadable.

    ``dtype=None`` keeps the stored precision (float16 stays float16: half the memory).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prediction file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in ("ids", "probs", "labels")}
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        reason = f"{type(e).__name__}: {e}"
        raise DataError(f"{path}: unreadable prediction file ({reason}); rerun the stage that wrote it") from None
    if dtype is not None:
        out["probs"] = out["probs"].astype(dtype, copy=False)
    out["meta"] = meta
    return out
