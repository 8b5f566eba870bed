"""Blending prediction files: fold averages per model, then the models (mean, weighted,
geometric), streamed so that one file is in memory at a time plus float32 accumulators."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from common.config import check_choice, choices_of
from common.errors import PipelineError
from pipeline.config import EnsembleConfig
from pipeline.ensemble.inputs import Checker, Preds, fold_average
from pipeline.metrics import top1

log = logging.getLogger(__name__)


EPS = 1e-7  # probability floor before the log of the geometric mean


_CHUNK = 8192  # rows per block when blending (bounded temporaries)


class Blender:
    """Accumulates the models' probabilities into the ensemble, one model at a time.

    ``mean``/``weighted``: ``sum_m w_m p_m``; ``geometric``: ``softmax(sum_m w_m log max(p_m, EPS))``.
    Weights are normalised by the caller (sum 1). Row blocks keep the temporaries small.
    """

    def __init__(self, method: str, shape: tuple[int, int]) -> None:
        check_choice("ensemble", "method", method, choices_of(EnsembleConfig, "method"))
        self.method = method
        self.acc = np.zeros(shape, dtype=np.float32)

    def add(self, probs: np.ndarray, weight: float) -> None:
        """Add one model's probabilities (left unchanged) with its weight."""
        if weight == 0:
            return
        for s in range(0, len(probs), _CHUNK):
            block = np.array(probs[s : s + _CHUNK], dtype=np.float32)
            if self.method == "geometric":
                np.log(np.maximum(block, EPS, out=block), out=block)
            block *= weight
            self.acc[s : s + _CHUNK] += block

    def result(self) -> np.ndarray:
        """The ensemble probabilities: finite, within [0, 1] (the accumulator is reused)."""
        acc = self.acc
        if self.method == "geometric":
            for s in range(0, len(acc), _CHUNK):
                block = acc[s : s + _CHUNK]
                block -= block.max(axis=1, keepdims=True)
                np.exp(block, out=block)
                block /= block.sum(axis=1, keepdims=True)
        np.clip(acc, 0.0, 1.0, out=acc)
        if len(acc) and not np.isfinite(acc.max()):
            raise PipelineError("ensemble: non-finite probabilities (please report: the inputs were checked)")
        return acc


def blend(parts: list[np.ndarray], weights: np.ndarray, method: str) -> np.ndarray:
    """The ensemble of in-memory probability arrays (same rows), float32."""
    b = Blender(method, parts[0].shape)
    for p, w in zip(parts, weights):
        b.add(p, float(w))
    return b.result()


def stream_ensemble(
    paths: dict[str, list[Path]],
    manifest: str,
    weightings: list[dict[str, float]],
    method: str,
    checker: Checker,
    on_model=None,
) -> list[Preds]:
    """One ensemble per entry of ``weightings`` (``{model: weight}``, summing to 1) of ``manifest``.

    Streams: per model one file at a time into its fold average, which is then added to every
    ensemble and dropped. ``on_model(name, preds)`` sees each model's fold average first.
    """
    blenders: list[Blender] = []
    first: Preds | None = None
    for name, files in paths.items():
        avg = fold_average(files, checker, manifest)
        if on_model is not None:
            on_model(name, avg)
        if first is None:
            first = Preds(avg.ids, avg.labels, np.empty((0, 0)), avg.source)
            blenders = [Blender(method, avg.probs.shape) for _ in weightings]
        for b, w in zip(blenders, weightings):
            b.add(avg.probs, w[name])
        del avg
    return [Preds(first.ids, first.labels, b.result(), first.source) for b in blenders]


def answers(parts: list[np.ndarray], weights: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """The ensemble's top-1 ``(pred, conf)`` of in-memory arrays, block by block."""
    n = len(parts[0])
    pred, conf = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.float64)
    for s in range(0, n, _CHUNK):
        pred[s : s + _CHUNK], conf[s : s + _CHUNK] = top1(blend([p[s : s + _CHUNK] for p in parts], weights, method))
    return pred, conf
