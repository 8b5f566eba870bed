"""Local pretrained weights: ``create_model(name, pretrained="path/to/weights.pth")``.

Kaggle kernels have no internet, so any model (registered or ``timm:<name>``) can start from a
weights file instead of a download: the model is built with ``pretrained=False``, then the
file's tensors are copied in by name. Accepted files: a plain state dict, or a dict holding it
under ``"model"`` or ``"state_dict"`` (training checkpoints), as ``torch.save`` files (read with
``weights_only=True``: no code runs) or ``.safetensors``. Key prefixes from DDP (``module.``),
``torch.compile`` (``_orig_mod.``) and headed models (``backbone.``) are stripped.

A tensor whose shape differs (the classifier of another class count, a swapped stem) is skipped
and logged; model tensors the file lacks keep their initialisation and are logged. A file that
is missing or unreadable, or that matches none of the model's tensors outside its classifier
(e.g. the weights of another architecture), is one clear error; when the file is in a foreign
layout that :mod:`pipeline.models.convert` knows (EfficientNet-PyTorch's), the error names the
``convert-weights`` command.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch.nn as nn

from common.errors import PipelineError
from pipeline.models.weights_file import read_state_dict

log = logging.getLogger(__name__)

@dataclass
class LoadReport:
    """What :func:`load_weights` did (names are the model's keys)."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # in the file, shape differs
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model


def _classifier_prefix(model: nn.Module) -> str:
    """The state-dict prefix of the classifier (``'fc.'`` for a ResNet); one no key has when none."""
    from pipeline.models.utils import classifier_of

    try:
        head = classifier_of(model)
    except ValueError:
        return "\0"
    return next((f"{n}." for n, m in model.named_modules() if m is head and n), "\0")


def _convert_hint(first_key: str, path: str | os.PathLike) -> str:
    """For a file in a foreign layout that :mod:`pipeline.models.convert` knows: the command that converts it."""
    from pipeline.models.convert import known_layout

    layout = known_layout(first_key)
    if layout is None:
        return ""
    return f"; it is in the {layout} layout: python -m pipeline.models convert-weights {path} -o <timm file>"


def load_weights(model: nn.Module, path: str | os.PathLike, name: str = "") -> LoadReport:
    """Copy the tensors of ``path`` into ``model`` by name and shape (in place); see the module docstring."""
    file = read_state_dict(path)
    own = model.state_dict()
    report, matched, shape_differs = LoadReport(), {}, set()
    for key, value in file.items():
        target = key if key in own or not key.startswith("backbone.") else key.removeprefix("backbone.")
        if target not in own:
            report.unexpected.append(key)
        elif own[target].shape != value.shape:
            shape_differs.add(target)
            report.skipped.append(f"{target} {tuple(value.shape)} in the file, {tuple(own[target].shape)} here")
        else:
            matched[target] = value
    label = f"model '{name}'" if name else type(model).__name__
    head = _classifier_prefix(model)
    if not any(not k.startswith(head) for k in matched):
        trunk = [k for k in own if not k.startswith(head)]
        raise PipelineError(
            f"pretrained weights file '{path}' matches none of the {len(trunk)} tensors of {label} outside "
            f"its classifier (file keys e.g. {', '.join(list(file)[:3])}; model keys e.g. {', '.join(trunk[:3])})"
            + _convert_hint(next(iter(file)), path)
        )
    model.load_state_dict(matched, strict=False)
    report.loaded = sorted(matched)
    report.missing = [
        k for k in own if k not in matched and k not in shape_differs and not k.endswith("num_batches_tracked")
    ]
    log.info("%s: loaded %d of %d tensors from %s", label, len(matched), len(own), path)
    if report.skipped:
        log.info("%s: skipped (shape differs): %s", label, "; ".join(report.skipped))
    if report.missing:
        log.warning("%s: not in %s (left as initialised): %s", label, path, ", ".join(report.missing[:20]))
    if report.unexpected:
        log.info("%s: file tensors with no place in the model: %s", label, ", ".join(report.unexpected[:20]))
    return report
