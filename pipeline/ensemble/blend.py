"""Blending prediction files: fold averages per model, then the models (mean, weighted,
geometric), streamed so that one file is in memory at a time plus float32 accumulators."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from common.config import check_choice, choices_of
from common.errors import PipelineError
from pipeline.config_stages import EnsembleConfig
from pipeline.ensemble.inputs import Checker, Preds, fold_average
from pipeline.metrics import top1
from pipeline.scores import TopK, accumulate, finish

log = logging.getLogger(__name__)


EPS = 1e-7  # probability floor before the log of the geometric mean


_CHUNK = 8192  # rows per block when blending (bounded temporaries)


class Blender:
    """Accumulates the models' probabilities into the ensemble, one model at a time.

    ``mean``/``weighted``: ``sum_m w_m p_m``; ``geometric``: ``softmax(sum_m w_m log max(p_m, EPS))``.
    Weights are normalised by the caller (sum 1). Row blocks keep the temporaries small. Top-k
    scores (:class:`~pipeline.scores.TopK`) are summed over the union of the models' candidates;
    for ``geometric`` a class outside a model's candidates counts as EPS from that model.
    """

    def __init__(self, method: str, shape: tuple[int, int], sparse: bool = False) -> None:
        check_choice("ensemble", "method", method, choices_of(EnsembleConfig, "method"))
        self.method = method
        self.sparse = sparse
        self.acc = None if sparse else np.zeros(shape, dtype=np.float32)
        self.k, self.weight = 0, 0.0

    def add(self, probs: np.ndarray | TopK, weight: float) -> None:
        """Add one model's probabilities (left unchanged) with its weight."""
        if weight == 0:
            return
        if self.sparse:
            self._add_topk(probs, weight)
            return
        for s in range(0, len(probs), _CHUNK):
            block = np.array(probs[s : s + _CHUNK], dtype=np.float32)
            if self.method == "geometric":
                np.log(np.maximum(block, EPS, out=block), out=block)
            block *= weight
            self.acc[s : s + _CHUNK] += block

    def _add_topk(self, probs: TopK, weight: float) -> None:
        val = probs.val.astype(np.float32)
        if self.method == "geometric":  # log(p / EPS) >= 0: a missing candidate adds log(EPS / EPS) = 0
            val = np.log(np.maximum(val, EPS) / EPS)
        self.acc = accumulate(self.acc, TopK(probs.idx, val, probs.num_classes), weight)
        self.k, self.weight = max(self.k, probs.k), self.weight + weight

    def result(self) -> np.ndarray | TopK:
        """The ensemble probabilities: finite, within [0, 1] (the accumulator is reused)."""
        if self.sparse:
            return self._topk_result()
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

    def _topk_result(self) -> TopK:
        acc = self.acc
        if self.method == "geometric":  # exp of the weighted log-mean, normalised over all C classes
            valid = acc.idx >= 0
            log_eps = np.log(EPS) * self.weight
            g = np.where(valid, np.exp(acc.val.astype(np.float64) + log_eps), 0.0)
            rest = (acc.num_classes - valid.sum(axis=1)) * np.exp(log_eps)
            acc = TopK(acc.idx, (g / (g.sum(axis=1) + rest)[:, None]).astype(np.float32), acc.num_classes)
        out = finish(acc, self.k)
        np.clip(out.val, 0.0, 1.0, out=out.val)
        if len(out) and not np.isfinite(out.val.max()):
            raise PipelineError("ensemble: non-finite probabilities (please report: the inputs were checked)")
        return out


def blend(parts: list[np.ndarray], weights: np.ndarray, method: str) -> np.ndarray:
    """The ensemble of in-memory probability arrays (same rows), float32."""
    b = Blender(method, parts[0].shape, isinstance(parts[0], TopK))
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
            blenders = [Blender(method, avg.probs.shape, isinstance(avg.probs, TopK)) for _ in weightings]
        for b, w in zip(blenders, weightings):
            b.add(avg.probs, w[name])
        del avg
    k = checker.form[0] if checker.form else None  # top-k files: the ensemble keeps their k
    return [Preds(first.ids, first.labels, _keep(b.result(), k), first.source) for b in blenders]


def _keep(probs: np.ndarray | TopK, k: int | None) -> np.ndarray | TopK:
    return finish(probs, k) if isinstance(probs, TopK) and k else probs


def answers(parts: list[np.ndarray], weights: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """The ensemble's top-1 ``(pred, conf)`` of in-memory arrays, block by block."""
    n = len(parts[0])
    pred, conf = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.float64)
    for s in range(0, n, _CHUNK):
        pred[s : s + _CHUNK], conf[s : s + _CHUNK] = top1(blend([p[s : s + _CHUNK] for p in parts], weights, method))
    return pred, conf
