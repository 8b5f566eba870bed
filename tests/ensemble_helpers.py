"""Hand-made data folders and run folders for the ensemble, post-processing and submit tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from common import schema
from common.config import build_config
from pipeline.config_stages import EnsembleConfig
from pipeline.runs.predfile import save_predictions

LANDMARKS = [1234, 56789, 77]
FINGERPRINT = "prep-fp-1"


def label_map(landmarks: list[int] = LANDMARKS) -> pd.DataFrame:
    n = len(landmarks)
    return pd.DataFrame({"label": range(n), "landmark_id": landmarks, "name": list("abcdefgh"[:n]), "count": [1] * n})


def write_data(root: Path, landmarks: list[int] = LANDMARKS, fingerprint: str | None = FINGERPRINT) -> Path:
    """``root/data/ds/`` with a label map and (unless None) a prep report with ``fingerprint``."""
    data = root / "data" / "ds"
    data.mkdir(parents=True, exist_ok=True)
    label_map(landmarks).to_csv(data / schema.LABEL_MAP, index=False)
    if fingerprint:
        (data / schema.PREP_REPORT).write_text(json.dumps({"fingerprint": fingerprint}))
    return data


def meta(num_classes: int = 3, fingerprint: str = FINGERPRINT, landmarks: list[int] = LANDMARKS, **over) -> dict:
    return {
        "prep_fingerprint": fingerprint,
        "label_map_sha": schema.label_map_sha(label_map(landmarks)),
        "num_classes": num_classes,
        **over,
    }


def run_dir(root: Path, model: str, fold: int, done: bool = True) -> Path:
    d = schema.run_dir(root / "runs", "exp", model, fold)
    d.mkdir(parents=True, exist_ok=True)
    if done:
        (d / schema.RUN_DONE).write_text("ok\n")
    return d


def write_pred(
    d: Path, manifest: str, ids, probs, labels, tta: bool = False, dtype: str = "float32", **meta_over
) -> Path:
    path = d / schema.pred_file(manifest, tta)
    probs = np.asarray(probs, dtype=np.float64)
    save_predictions(path, np.asarray(ids), probs, np.asarray(labels), meta(probs.shape[1], **meta_over), dtype=dtype)
    return path


def config(root: Path, **over) -> EnsembleConfig:
    """An EnsembleConfig over ``root`` (validated like a YAML section)."""
    values = dict(
        dataset="ds",
        data_root=str(root / "data"),
        runs_root=str(root / "runs"),
        experiment="exp",
        name="sub",
        submissions_dir=str(root / "submissions"),
    )
    return build_config(EnsembleConfig, {**values, **over}, "test")


def onehot_probs(pred, conf, num_classes: int = 3) -> np.ndarray:
    """Rows with ``conf`` on class ``pred`` and the rest spread evenly over the other classes."""
    pred, conf = np.asarray(pred), np.asarray(conf, dtype=float)
    out = np.repeat(((1 - conf) / (num_classes - 1))[:, None], num_classes, axis=1)
    out[np.arange(len(pred)), pred] = conf
    return out
