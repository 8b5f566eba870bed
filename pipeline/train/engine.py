"""The training engine: one Accelerate loop for CPU, one GPU or many processes.

``train_one_epoch`` and ``evaluate`` return dicts; device placement, autocast, DDP, gradient
accumulation and metric gathering belong to accelerate (one ``Accelerator``, one ``prepare``,
``accumulate``, ``gather_for_metrics``). The recipe's moving parts (optimizer, schedule, loss,
mixup) come in built by :mod:`pipeline.optim.factories` and :mod:`pipeline.data.augment`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from tqdm import tqdm

from common.errors import PipelineError
from pipeline.data.datasets import normalize
from pipeline.metrics import score_all
from pipeline.scores import TopK, choose_k, concat, topk


class Diverged(PipelineError):
    """The loss became NaN/Inf: the fold stops without a DONE marker."""


@dataclass
class StepParts:
    """What one optimisation step needs besides the model and the batch."""

    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    schedule: object  # pipeline.optim.factories.Schedule: after_step() once per optimizer step
    mixer: Callable | None = None  # (x, target) -> (x, soft target)
    device_transform: Callable[[torch.Tensor], torch.Tensor] | None = None  # uint8 batch augmentation on device
    ema: object | None = None  # timm ModelEmaV3
    clip_grad: float | None = None
    needs_target: bool = False  # margin heads: model(x, target) returns margin logits


def train_one_epoch(
    model,
    loader,
    parts: StepParts,
    accelerator: Accelerator,
    channels_last: bool = False,
    limit_batches: int | None = None,
    progress: bool = False,
    desc: str = "train",
) -> dict:
    """One pass over ``loader``; returns ``{"train_loss"}``. Raises :class:`Diverged` on NaN/Inf loss.

    The non-finite check is kept on the device (no sync per step) and read every 10 steps in a
    single process; under several processes every rank reduces it at the end of the epoch, so
    all ranks stop together instead of one waiting forever in a collective.
    """
    model.train()
    dev = accelerator.device
    loss_sum = torch.zeros((), device=dev)
    count = torch.zeros((), device=dev)
    first_bad = torch.full((), -1, dtype=torch.long, device=dev)
    bad_loss = torch.zeros((), device=dev)
    single = accelerator.num_processes == 1
    bar = tqdm(loader, desc=desc, leave=False, disable=not (progress and accelerator.is_local_main_process))
    for step, batch in enumerate(bar):
        if limit_batches is not None and step >= limit_batches:
            break
        loss, n = _step(model, batch, parts, accelerator, channels_last)
        finite = torch.isfinite(loss)
        newly_bad = (first_bad < 0) & ~finite
        first_bad = torch.where(newly_bad, torch.as_tensor(step, device=dev), first_bad)
        bad_loss = torch.where(newly_bad, loss.float(), bad_loss)
        loss_sum += torch.where(finite, loss, torch.zeros_like(loss)) * n
        count += n
        if step % 10 == 0:
            if single and first_bad.item() >= 0:
                break  # stop early; reported below
            if not bar.disable:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    bad = int(accelerator.reduce(first_bad.float() + 1, "max").item())  # 0 = every loss finite
    if bad > 0:
        shown = f"{bad_loss.item()}" if first_bad.item() >= 0 else "non-finite on another process"
        raise Diverged(f"loss {shown} at step {bad}")
    loss_sum, count = accelerator.reduce(loss_sum, "sum"), accelerator.reduce(count, "sum")
    return {"train_loss": (loss_sum / count.clamp_min(1)).item()}


def _step(model, batch: dict, parts: StepParts, accelerator: Accelerator, channels_last: bool) -> tuple:
    """One forward/backward (an optimizer step when accumulation is complete); ``(loss, batch size)``."""
    images, target = batch["image"], batch["target"]
    if parts.device_transform is not None:
        images = parts.device_transform(images)
    x = normalize(images, channels_last=channels_last)
    if parts.mixer is not None:
        x, target = parts.mixer(x, target)
    with accelerator.accumulate(model):
        logits = model(x, batch["target"]) if parts.needs_target else model(x)
        loss = parts.loss_fn(logits, target)
        accelerator.backward(loss)
        if accelerator.sync_gradients and parts.clip_grad:
            accelerator.clip_grad_norm_(model.parameters(), parts.clip_grad)
        _optimizer_step(parts.optimizer, accelerator)
    if accelerator.sync_gradients:
        parts.schedule.after_step()
        if parts.ema is not None:
            parts.ema.update(accelerator.unwrap_model(model), step=parts.schedule.steps)
    return loss.detach(), len(x)


def _optimizer_step(optimizer, accelerator: Accelerator) -> None:
    """``optimizer.step(); optimizer.zero_grad(set_to_none=True)`` as accelerate's wrapper does them.

    Without a gradient scaler (fp16), XLA or a LOMO optimizer its wrapper only skips both while
    gradients accumulate, but looks for the ``lomo_optim`` package twice and inspects
    ``zero_grad``'s signature on every step: ~2.5% of a small model's step (py-spy)."""
    inner = getattr(optimizer, "optimizer", None)
    plain = (
        inner is not None
        and getattr(optimizer, "scaler", None) is None
        and accelerator.distributed_type != DistributedType.XLA
        and not type(inner).__module__.startswith("lomo_optim")
    )
    if not plain:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    elif accelerator.sync_gradients:
        inner.step()
        inner.zero_grad(set_to_none=True)


@torch.no_grad()
def predict(model, loader, accelerator: Accelerator, channels_last: bool = False, k: int = 0) -> dict:
    """Softmax probabilities for every item of ``loader`` (gathered, no duplicates).

    Above 1000 classes (:func:`pipeline.scores.choose_k`; ``k`` > 0 forces a k) each batch is cut to
    its top-k classes before it is gathered, so no (N, C) matrix is ever held: ``probs`` is then a
    :class:`~pipeline.scores.TopK`. ``label_prob`` is each row's probability of its own label (the
    validation loss needs it whatever the form)."""
    model.eval()
    probs, targets, ids, label_probs = [], [], [], []
    want: int | None | bool = False  # decided at the first batch, when C is known
    for batch in loader:
        logits = model(normalize(batch["image"], channels_last=channels_last)).float()
        p = logits.softmax(dim=1)
        p_label = p.gather(1, batch["target"].clamp_min(0).to(p.device).view(-1, 1)).squeeze(1)
        p, t, i, pl = accelerator.gather_for_metrics((p, batch["target"], batch["id"], p_label))
        if want is False:
            want = choose_k(p.shape[1], k)
        p = p.cpu().numpy().astype(np.float32)
        probs.append(p if want is None else topk(p, want))
        targets.append(t.cpu())
        ids.append(i.cpu())
        label_probs.append(pl.cpu())
    if want is None or want is False:
        scores = np.concatenate(probs) if probs else np.zeros((0, 0), np.float32)
    else:
        scores = concat(probs)
    return {
        "probs": scores,
        "labels": torch.cat(targets).numpy(),
        "index": torch.cat(ids).numpy(),
        "label_prob": torch.cat(label_probs).numpy().astype(np.float32),  # as the dense rows: same loss
    }


def evaluate(model, loader, accelerator: Accelerator, channels_last: bool = False, k: int = 0) -> tuple[dict, dict]:
    """Validation metrics (loss, top1, top5, gap) and the raw predictions."""
    out = predict(model, loader, accelerator, channels_last, k)
    labels, probs = out["labels"], out["probs"]
    if not np.isfinite(probs.val if isinstance(probs, TopK) else probs).all():
        raise Diverged("non-finite validation probabilities")
    known = labels >= 0
    metrics = {"val_loss": float("nan")}
    if known.any():
        p = np.clip(out["label_prob"][known], 1e-12, 1.0)
        metrics["val_loss"] = float(-np.log(p).mean())
        metrics.update({f"val_{k}": v for k, v in score_all(probs, labels).items()})
    return metrics, out


def is_finite(x: float) -> bool:
    return x is not None and math.isfinite(x)
