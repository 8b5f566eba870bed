"""The training engine: one Accelerate loop for CPU, one GPU or many processes.

``train_one_epoch`` and ``evaluate`` return dicts; the LR rule and the precision choice are
small pure pieces with unit tests. Device placement, autocast, DDP and metric gathering
belong to accelerate (one ``Accelerator``, one ``prepare``, ``gather_for_metrics``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm import tqdm

from common.io import atomic_write
from pipeline.data import normalize
from pipeline.metrics import score_all


def cpu_has_fast_bf16() -> bool:
    """True when oneDNN has native bf16 kernels (AVX512-BF16 / AMX).

    Measured on this project's AVX2-only EPYC machines (BENCHMARKS.md): bf16 autocast makes
    ResNet-18 training 4-20x *slower* and channels_last ~20% slower, so neither is a default
    there; on CPUs with native bf16 both are reported to give 1.5-2.8x.
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


def next_lr(lr: float, prev_acc: float | None, acc: float, factor: float = 0.5) -> float:
    """Seed 001's rule: multiply the LR by ``factor`` when accuracy drops below the previous epoch's."""
    if prev_acc is not None and acc < prev_acc:
        return lr * factor
    return lr


class HalveOnDrop:
    """Seed 001's LR rule as a scheduler stepped once per epoch with the (gathered) val top-1.

    ``ReduceLROnPlateau(mode="max", factor=0.5, patience=0, threshold=0)`` is close but not
    the same: it compares with the *best* epoch so far (and halves on a tie), so after a dip it
    keeps halving until the old best is beaten; seed 001 compares with the *previous* epoch and
    halves only on a strict drop. It is stepped by the training loop on every process with the
    same gathered metric, and is deliberately not passed to ``accelerator.prepare`` (which would
    step it once per process).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, factor: float = 0.5, enabled: bool = True) -> None:
        self.optimizer = optimizer
        self.factor = factor
        self.enabled = enabled
        self.prev: float | None = None

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def step(self, acc: float) -> bool:
        """Record this epoch's accuracy; returns True when the LR was reduced."""
        changed = False
        if self.enabled:
            new = next_lr(self.lr, self.prev, acc, self.factor)
            if new != self.lr:
                for g in self.optimizer.param_groups:
                    g["lr"] = g["lr"] * self.factor
                changed = True
        self.prev = acc
        return changed

    def state_dict(self) -> dict:
        return {"prev": self.prev, "factor": self.factor, "enabled": self.enabled}

    def load_state_dict(self, state: dict) -> None:
        self.prev, self.factor, self.enabled = state["prev"], state["factor"], state["enabled"]


def train_one_epoch(
    model,
    loader,
    optimizer,
    accelerator: Accelerator,
    channels_last: bool = True,
    limit_batches: int | None = None,
    progress: bool = False,
    desc: str = "train",
) -> dict:
    model.train()
    loss_sum = torch.zeros((), device=accelerator.device)
    count = torch.zeros((), device=accelerator.device)
    bar = tqdm(
        loader, desc=desc, leave=False, disable=not (progress and accelerator.is_local_main_process), mininterval=1.0
    )
    for step, batch in enumerate(bar):
        if limit_batches is not None and step >= limit_batches:
            break
        x = normalize(batch["image"], channels_last=channels_last)
        logits = model(x)
        loss = F.cross_entropy(logits.float(), batch["target"])
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        loss_sum += loss.detach() * len(x)
        count += len(x)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    loss_sum, count = accelerator.reduce(loss_sum, "sum"), accelerator.reduce(count, "sum")
    return {"train_loss": (loss_sum / count.clamp_min(1)).item()}


@torch.no_grad()
def predict(model, loader, accelerator: Accelerator, channels_last: bool = True) -> dict[str, np.ndarray]:
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


def evaluate(model, loader, accelerator: Accelerator, channels_last: bool = True) -> tuple[dict, dict]:
    """Validation metrics (loss, top1, top5, gap) and the raw predictions."""
    out = predict(model, loader, accelerator, channels_last)
    labels, probs = out["labels"], out["probs"]
    known = labels >= 0
    metrics = {"val_loss": float("nan")}
    if known.any():
        p = np.clip(probs[known, labels[known]], 1e-12, 1.0)
        metrics["val_loss"] = float(-np.log(p).mean())
        metrics.update({f"val_{k}": v for k, v in score_all(probs, labels).items()})
    return metrics, out


def save_checkpoint(
    path, accelerator: Accelerator, model, optimizer=None, scheduler: HalveOnDrop | None = None, **extra
) -> None:
    """Atomic checkpoint (main process only): model, and optimizer + LR rule when given (for resume).

    ``last.pt`` carries the optimizer so a run resumes exactly; ``best.pt`` only needs the
    weights (its optimizer state would double the disk use: Adam keeps two moments per weight).
    """
    if not accelerator.is_main_process:
        return
    state = {"model": accelerator.unwrap_model(model).state_dict(), **extra}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(
    path, accelerator: Accelerator, model, optimizer=None, scheduler: HalveOnDrop | None = None
) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=False)
    accelerator.unwrap_model(model).load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    return state


def is_finite(x: float) -> bool:
    return x is not None and math.isfinite(x)
