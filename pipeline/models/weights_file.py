"""Reading a weights file into a plain state dict: ``torch.save`` files (``weights_only=True``: no
code runs) or ``.safetensors``, a state dict nested under ``model``/``state_dict`` unwrapped, DDP
and ``torch.compile`` key prefixes stripped. Shared by the loader (:mod:`pipeline.models.weights`)
and the layout converter (:mod:`pipeline.models.convert`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from common.errors import PipelineError

_PREFIXES = ("module.", "_orig_mod.")


_NESTED = ("model", "state_dict")


def check_weights_path(path: str | os.PathLike) -> Path:
    """The path as a :class:`Path`; one clear error when it is empty or not a file."""
    if not str(path):
        raise PipelineError("pretrained: empty weights file path")
    p = Path(path).expanduser()
    if not p.is_file():
        raise PipelineError(f"pretrained weights file '{p}' not found")
    return p


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (see the module docstring), keys with prefixes stripped."""
    p = check_weights_path(path)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip, safetensors header, permissions: one line
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise PipelineError(f"pretrained weights file '{p}' cannot be read: {reason}") from None
    for key in _NESTED:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise PipelineError(f"pretrained weights file '{p}' holds a {type(obj).__name__}, not a state dict")
    tensors = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            for prefix in _PREFIXES:
                key = key.removeprefix(prefix)
            tensors[key] = value
    if not tensors:
        raise PipelineError(f"pretrained weights file '{p}' holds no tensors")
    return tensors
