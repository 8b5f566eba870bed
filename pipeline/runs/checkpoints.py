"""Checkpoints: the one place that writes and reads ``last.pt`` / ``best.pt`` (``torch.load``).

A checkpoint is a plain dict (``model``: the state dict; ``optimizer``, ``scheduler`` and the
loop's state in ``last.pt``), written atomically, so old run folders keep loading whatever the
code's module layout.
"""

from __future__ import annotations

import errno
import zipfile
from pathlib import Path

import torch
from accelerate import Accelerator

from common import schema
from common.errors import DataError, PipelineError
from common.io import atomic_write


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


def load_weights(path: str | Path) -> dict:
    """The ``model`` state dict of a checkpoint; one :class:`DataError` line if absent or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path.parent}: finished ({schema.RUN_DONE}) but {path.name} is missing; retrain this fold")
    try:  # mmap: checking a large checkpoint does not read it all
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception:  # noqa: BLE001 - legacy (non-zip) files cannot be mapped; the plain load says why
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any failure to unpickle is one user-facing line
            reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0].split('. ')[0]}"
            raise DataError(f"{path}: unreadable weights ({reason}); retrain this fold") from None
    sd = state.get("model") if isinstance(state, dict) else None
    if not isinstance(sd, dict) or not sd:
        raise DataError(f"{path}: no 'model' weights in the checkpoint; retrain this fold")
    return sd
