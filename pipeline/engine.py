"""The training engine: one Accelerate loop for CPU, one GPU or many processes.

``train_one_epoch`` and ``evaluate`` return dicts; device placement, autocast, DDP, gradient
accumulation and metric gathering belong to accelerate (one ``Accelerator``, one ``prepare``,
``accumulate``, ``gather_for_metrics``). The recipe's moving parts (optimizer, schedule, loss,
mixup) come in built by :mod:`pipeline.factories` and :mod:`pipeline.augment`.
"""

from __future__ import annotations

import errno
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from tqdm import tqdm

from common.errors import PipelineError
from common.io import atomic_write
from pipeline.data import normalize
from pipeline.metrics import score_all


def cpu_has_fast_bf16() -> bool:
    """True when oneDNN has native bf16 kernels (AVX512-BF16 / AMX).

    Measured on AVX2-only EPYC machines (BENCHMARKS.md): bf16 autocast makes ResNet-18 training
    4-20x *slower* and channels_last ~20% slower, so neither is a default there; on CPUs with
    native bf16 both are reported to give 1.5-2.8x.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _on_gpu(cpu: bool) -> bool:
    return torch.cuda.is_available() and not cpu


def resolve_mixed_precision(requested: str, cpu: bool = False) -> str:
    """``auto`` -> bf16 on bf16-capable GPUs (else fp16), bf16 on CPUs with native bf16, else no."""
    if requested != "auto":
        return requested
    if _on_gpu(cpu):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "no"


def resolve_channels_last(requested: str, cpu: bool = False) -> bool:
    """``auto`` -> channels_last on GPUs and on CPUs with native bf16; contiguous otherwise."""
    if requested != "auto":
        return requested == "true"
    return _on_gpu(cpu) or cpu_has_fast_bf16()


def new_accelerator(mixed_precision: str = "auto", cpu: bool = False, **kw) -> Accelerator:
    """An ``Accelerator`` with the resolved precision.

    Accelerate keeps one global state per process and refuses a second Accelerator with another
    precision. A process that trains and then predicts with another precision (a notebook, the
    tests) gets a fresh precision state; the distributed set-up (``PartialState``) is kept.
    """
    from accelerate.state import AcceleratorState

    precision = resolve_mixed_precision(mixed_precision, cpu)
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") not in (None, precision):
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=precision, cpu=cpu, **kw)


class Diverged(PipelineError):
    """The loss became NaN/Inf: the fold stops without a DONE marker."""


@dataclass
class StepParts:
    """What one optimisation step needs besides the model and the batch."""

    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    schedule: object  # pipeline.factories.Schedule: after_step() once per optimizer step
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
            parts.optimizer.step()
            parts.optimizer.zero_grad(set_to_none=True)
        if accelerator.sync_gradients:
            parts.schedule.after_step()
            if parts.ema is not None:
                parts.ema.update(accelerator.unwrap_model(model), step=parts.schedule.steps)
        loss = loss.detach()
        finite = torch.isfinite(loss)
        newly_bad = (first_bad < 0) & ~finite
        first_bad = torch.where(newly_bad, torch.as_tensor(step, device=dev), first_bad)
        bad_loss = torch.where(newly_bad, loss.float(), bad_loss)
        loss_sum += torch.where(finite, loss, torch.zeros_like(loss)) * len(x)
        count += len(x)
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


@torch.no_grad()
def predict(model, loader, accelerator: Accelerator, channels_last: bool = False) -> dict[str, np.ndarray]:
    """Softmax probabilities for every item of ``loader`` (gathered, no duplicates)."""
    model.eval()
    probs, targets, ids = [], [], []
    for batch in loader:
        logits = model(normalize(batch["image"], channels_last=channels_last)).float()
        p, t, i = accelerator.gather_for_metrics((logits.softmax(dim=1), batch["target"], batch["id"]))
        probs.append(p.cpu())
        targets.append(t.cpu())
        ids.append(i.cpu())
    return {
        "probs": torch.cat(probs).numpy().astype(np.float32),
        "labels": torch.cat(targets).numpy(),
        "index": torch.cat(ids).numpy(),
    }


def evaluate(model, loader, accelerator: Accelerator, channels_last: bool = False) -> tuple[dict, dict]:
    """Validation metrics (loss, top1, top5, gap) and the raw predictions."""
    out = predict(model, loader, accelerator, channels_last)
    labels, probs = out["labels"], out["probs"]
    if not np.isfinite(probs).all():
        raise Diverged("non-finite validation probabilities")
    known = labels >= 0
    metrics = {"val_loss": float("nan")}
    if known.any():
        p = np.clip(probs[known, labels[known]], 1e-12, 1.0)
        metrics["val_loss"] = float(-np.log(p).mean())
        metrics.update({f"val_{k}": v for k, v in score_all(probs, labels).items()})
    return metrics, out


def snapshot(obj):
    """A copy of a (nested) state with every tensor cloned to the CPU: safe to write in the
    background while training goes on changing the live tensors."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


def checkpoint_state(weights: dict, optimizer=None, schedule=None, **extra) -> dict:
    """The content of a checkpoint, snapshotted: weights, and optimizer + schedule for resume.

    ``last.pt`` carries the optimizer so a run resumes exactly; ``best.pt`` only needs the
    weights it predicts with (its optimizer state would double the disk use).
    """
    state = {"model": weights, **extra}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if schedule is not None:
        state["scheduler"] = schedule.state_dict()
    return snapshot(state)


def write_checkpoint(path, state: dict) -> None:
    """Atomic write; a full disk or an unwritable folder is one :class:`PipelineError` line and the
    previous file stays intact."""
    try:
        with atomic_write(path, "wb") as f:
            torch.save(state, f)
    except OSError as e:
        why = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise PipelineError(f"cannot write checkpoint {path}: {why} (the previous checkpoint is kept)") from None


def save_checkpoint(path, accelerator: Accelerator, weights: dict, optimizer=None, schedule=None, **extra) -> None:
    """:func:`checkpoint_state` + :func:`write_checkpoint` now, on the main process only."""
    if accelerator.is_main_process:
        write_checkpoint(path, checkpoint_state(weights, optimizer, schedule, **extra))


def read_checkpoint(path) -> dict:
    """``torch.load`` of a checkpoint with one error line when it is missing or corrupt."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise PipelineError(f"checkpoint not found: {path}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise PipelineError(
            f"{path}: corrupt checkpoint ({reason}); delete it to restart that fold from the previous one"
        ) from None


def load_checkpoint(path, accelerator: Accelerator, model, optimizer=None, schedule=None) -> dict:
    state = read_checkpoint(path)
    try:
        accelerator.unwrap_model(model).load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(state["scheduler"])
    except (KeyError, RuntimeError, ValueError) as e:
        reason = str(e).splitlines()[0][:200]
        raise PipelineError(f"{path} does not fit this run's model/recipe ({reason})") from None
    return state


def is_finite(x: float) -> bool:
    return x is not None and math.isfinite(x)
