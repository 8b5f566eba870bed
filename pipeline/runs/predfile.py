"""Prediction files (``<run>/<manifest>.npz``): the one format every stage after training reads.

Arrays:

* ``ids``    (N,) str: manifest ids, in manifest order;
* ``probs``  (N, C) float16 or float32: class probabilities (rows sum to 1); or, above
  :data:`pipeline.scores.DENSE_MAX_CLASSES` classes (GLD v2's 81k), the top-k form:
  ``topk_idx`` (N, k) int32 and ``topk_val`` (N, k) with ``meta`` ``topk``/``num_classes``, read
  back as a :class:`pipeline.scores.TopK` (see there: nothing GAP or top-5 needs is lost);
* ``labels`` (N,) int64: the manifest's labels (class index, or a negative value of
  :mod:`common.schema`: NON_LANDMARK, OTHER_LANDMARK, UNLABELLED);
* ``meta``   0-d str: JSON with where the predictions come from (``manifest``, ``model``,
  ``fold``, ``tta``, ``prep_fingerprint``, ``label_map_sha``, ``num_classes``, ``weights_sha256``:
  the sha256 of the ``best.pt`` they were predicted with ...). Files written before ``meta``
  existed have none (``{}``).

float16 halves the disk use (a 100k x 1000 test set is 200 MB per run instead of 400 MB); its
3 significant digits are plenty for averaging and ranking. Pure numpy: the ensemble layer reads
these files without importing torch or the models. Written atomically.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from common import schema
from common.errors import DataError, PipelineError
from common.io import atomic_write
from pipeline.scores import TopK, choose_k, topk


def save_predictions(
    path: str | Path,
    ids: np.ndarray,
    probs: np.ndarray | TopK,
    labels: np.ndarray,
    meta: dict | None = None,
    dtype: str = "float32",
    k: int = 0,
) -> None:
    """Write a prediction file atomically (refusing non-finite scores).

    Dense (N, C) probabilities are stored as they are while :func:`~pipeline.scores.choose_k`
    says so (``k`` 0: up to 1000 classes), else as their top-k; :class:`TopK` scores are stored
    as top-k."""
    if not isinstance(probs, TopK):
        probs = np.asarray(probs)
        if probs.ndim != 2:
            raise ValueError(f"predictions: probs must be (N, C), got {probs.shape}")
        want = choose_k(probs.shape[1], k)
        if want is not None:
            probs = topk(probs, want)
    if len(probs) != len(ids) or len(labels) != len(ids):
        raise ValueError(f"predictions: {len(ids)} ids, probs {probs.shape}, {len(labels)} labels do not match")
    values = probs.val if isinstance(probs, TopK) else probs
    if not np.isfinite(values).all():
        raise DataError(f"{path}: {int((~np.isfinite(values)).any(axis=1).sum())} rows of non-finite probabilities")
    meta = dict(meta or {})
    arrays = {}
    if isinstance(probs, TopK):
        meta.update(topk=probs.k, num_classes=probs.num_classes)
        arrays = {"topk_idx": probs.idx.astype(np.int32), "topk_val": probs.val.astype(dtype)}
    else:
        arrays = {"probs": probs.astype(dtype)}
    with atomic_write(path, "wb") as f:
        np.savez(
            f,
            ids=np.asarray(ids).astype(str),
            labels=np.asarray(labels, dtype=np.int64),
            meta=np.array(json.dumps(meta, sort_keys=True, default=str)),
            **arrays,
        )


def load_predictions(path: str | Path, dtype: str | None = "float32") -> dict:
    """``{"ids", "probs", "labels", "meta"}`` of a prediction file; one DataError line if unreadable.

    ``probs`` is a dense array, or a :class:`~pipeline.scores.TopK` for a top-k file. ``dtype=None``
    keeps the stored precision (float16 stays float16: half the memory).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prediction file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in ("ids", "labels")}
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
            if "topk_idx" in z.files:
                out["probs"] = TopK(z["topk_idx"], z["topk_val"], int(meta["num_classes"]))
            else:
                out["probs"] = z["probs"]
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        reason = f"{type(e).__name__}: {e}"
        raise DataError(f"{path}: unreadable prediction file ({reason}); rerun the stage that wrote it") from None
    if dtype is not None:
        out["probs"] = out["probs"].astype(dtype, copy=False)
    out["meta"] = meta
    return out


# ---------------------------------------------------------------- the weights a file came from

WEIGHTS_KEY = "weights_sha256"  # meta key: sha256 of the best.pt the predictions were made with
_SHA_CACHE: dict[str, tuple[int, int, str]] = {}  # resolved path -> (mtime_ns, size, sha256)


def weights_sha(path: str | Path) -> str | None:
    """sha256 of a weights file, None when it is absent.

    Cached by path, mtime and size: a stage that writes or checks several files of one run hashes
    its ``best.pt`` once (a retrained ``best.pt`` is a new file: new mtime, hashed again)."""
    path = Path(path)
    try:
        st = path.stat()
        key = str(path.resolve())
        hit = _SHA_CACHE.get(key)
        if hit and hit[:2] == (st.st_mtime_ns, st.st_size):
            return hit[2]
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise DataError(
            f"{path}: unreadable weights ({e.strerror or e}); cannot tell if predictions are current"
        ) from None
    _SHA_CACHE[key] = (st.st_mtime_ns, st.st_size, digest)
    return digest


def stale_weights(path: str | Path, meta: dict) -> bool | None:
    """Whether prediction file ``path`` was made with weights other than its run's current ``best.pt``.

    None when it cannot be told: the file records no weights (older runs) or its folder has no
    ``best.pt`` (an export workspace, a hand-made folder)."""
    recorded = meta.get(WEIGHTS_KEY)
    current = weights_sha(Path(path).parent / schema.RUN_BEST)
    if current is None or not recorded:
        return None
    return recorded != current


def check_fresh(path: str | Path, meta: dict) -> None:
    """One :class:`DataError` line when ``path`` was predicted with an older ``best.pt`` of its run."""
    if stale_weights(path, meta):
        run = Path(path).parent
        raise DataError(f"{path}: stale: predicted with an older best.pt of run {run}; rerun 'make predict'")


# ---------------------------------------------------------------- one line for a folder that cannot be written

_WHY = {
    errno.EACCES: "permission denied (a read-only folder?)",
    errno.EPERM: "permission denied (a read-only folder?)",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "exists and is a file, not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOSPC: "disk full",
}


@contextlib.contextmanager
def output_errors(what: str) -> Iterator[None]:
    """An OSError while a stage writes its outputs becomes one :class:`PipelineError` line naming
    the path and why (a read-only run folder, a file where a folder should be ...), not a traceback.
    Writes are atomic, so nothing half-written is left behind."""
    try:
        yield
    except OSError as e:
        if e.errno not in _WHY:  # not a write problem (a read fails with its own message)
            raise
        raise PipelineError(f"{what}: cannot write {e.filename or '?'}: {_WHY[e.errno]}") from None
