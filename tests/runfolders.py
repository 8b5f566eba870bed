"""Hand-made run folders (``runs/<experiment>/<model>/fold<k>/``) for the leaderboard, compare and
analysis tests: the files training writes (config.yaml, metrics.csv, summary.json, oof.npz,
test.npz, DONE) with realistic contents, generated in milliseconds without training."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import yaml

from common import schema
from pipeline.metrics import score_all
from pipeline.runs.predfile import save_predictions


def synthetic_probs(rng: np.random.Generator, labels: np.ndarray, n_classes: int, skill: float) -> np.ndarray:
    """Softmax of noise plus ``skill`` on the true class (labels < 0: noise only)."""
    logits = rng.normal(size=(len(labels), n_classes))
    known = labels >= 0
    logits[np.flatnonzero(known), labels[known]] += skill
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def history(epochs: int, skill: float, rng: np.random.Generator) -> pd.DataFrame:
    """metrics.csv rows that look like a real run: rising scores, falling loss, halved LR."""
    e = np.arange(1, epochs + 1)
    top1 = np.clip(0.25 + (0.1 * skill) * (1 - np.exp(-e / 3)) + rng.normal(0, 0.01, epochs), 0, 1)
    return pd.DataFrame(
        {
            "epoch": e,
            "lr": 5e-4 * 0.5 ** np.floor(e / 4),
            "train_loss": 2.2 * np.exp(-e / 5) + 0.2,
            "val_loss": 2.0 * np.exp(-e / 6) + 0.5 + rng.normal(0, 0.02, epochs),
            "val_top1": top1,
            "val_top5": np.clip(top1 + 0.2, 0, 1),
            "val_gap": np.clip(top1 - 0.05, 0, 1),
            "seconds": np.full(epochs, 12.5),
        }
    )


def write_run(
    runs_root,
    experiment: str,
    model: str,
    fold: int,
    oof: tuple[np.ndarray, np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    epochs: int = 6,
    summary: dict | None = None,
    config: dict | None = None,
    hist: pd.DataFrame | None = None,
    done: bool = True,
):
    """One run folder: ``oof``/``test`` = (ids, probs, labels); summary/config override the defaults."""
    d = schema.run_dir(runs_root, experiment, model, fold)
    d.mkdir(parents=True, exist_ok=True)
    ids, probs, labels = oof
    save_predictions(d / schema.RUN_OOF, ids, probs, labels, {"model": model, "fold": fold})
    if test is not None:
        save_predictions(d / schema.RUN_TEST, *test, {"model": model, "fold": fold})
    if hist is not None:
        hist.to_csv(d / schema.RUN_METRICS, index=False)
    scores = score_all(probs, labels)
    base = {
        "model": model,
        "fold": fold,
        "best_epoch": epochs,
        **{f"val_{k}": v for k, v in scores.items()},
        "val_loss": 1.0,
        "epochs": epochs,
        "seconds": 12.5 * epochs,
        "train_images": 100,
        "val_images": len(labels),
    }
    (d / schema.RUN_SUMMARY).write_text(json.dumps({**base, **(summary or {})}))
    cfg = {"epochs": epochs, "img_size": 32, "resolved_mixed_precision": "bf16", "device": "cpu", "processes": 1}
    (d / schema.RUN_CONFIG).write_text(yaml.safe_dump({**cfg, **(config or {})}))
    if done:
        (d / schema.RUN_DONE).write_text("ok\n")
    return d


def fake_experiment(
    runs_root,
    experiment: str,
    skills: dict[str, float],
    folds=(0, 1, 2),
    n_classes: int = 8,
    n_per_fold: int = 40,
    n_test: int = 50,
    epochs: int = 6,
    seed: int = 0,
    summary: dict | None = None,
) -> list[dict]:
    """Run folders for every (model, fold) and the long leaderboard rows the ensemble stage would
    score from them (fold rows, pooled ``cv``, fold-averaged ``test``)."""
    rng = np.random.default_rng(seed)
    labels = {f: rng.integers(0, n_classes, n_per_fold) for f in folds}
    test_labels = rng.integers(0, n_classes, n_test)
    test_ids = np.array([f"t{i}" for i in range(n_test)])
    rows = []
    for model, skill in skills.items():
        oofs, tests = [], []
        for f in folds:
            ids = np.array([f"f{f}_{i}" for i in range(n_per_fold)])
            p = synthetic_probs(rng, labels[f], n_classes, skill + rng.normal(0, 0.15))
            t = synthetic_probs(rng, test_labels, n_classes, 0.6 * skill)  # folds average: keep test honest
            write_run(
                runs_root,
                experiment,
                model,
                f,
                (ids, p, labels[f]),
                (test_ids, t, test_labels),
                epochs,
                summary=summary,
                hist=history(epochs, skill, rng),
            )
            rows.append({"model": model, "fold": str(f), "n": n_per_fold, **score_all(p, labels[f])})
            oofs.append((p, labels[f]))
            tests.append(t)
        cv_p, cv_l = np.concatenate([o[0] for o in oofs]), np.concatenate([o[1] for o in oofs])
        rows.append({"model": model, "fold": "cv", "n": len(cv_l), **score_all(cv_p, cv_l)})
        rows.append({"model": model, "fold": "test", "n": n_test, **score_all(np.mean(tests, axis=0), test_labels)})
    return rows
