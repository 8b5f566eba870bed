"""One registry for every backbone, standard or new (after timm's ``_registry``).

A model family registers builder functions with :func:`register_model`; everyone else calls
:func:`create_model` by name. Builders take ``num_classes`` and ``small_input`` keywords (plus
their own options) and return an ``nn.Module`` whose classifier has ``num_classes`` outputs and
which exposes ``num_features`` (the pooled feature width).

Names become networks in :mod:`pipeline.models.factory` (``create_model``, which also builds
``timm:<name>``, attaches the pooling/neck/head and loads local weights files); this module
imports no model family, so families can import it without a cycle.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module]
    family: str
    min_size: int = 32  # smallest input side the architecture accepts (default stem)
    min_size_small: int | None = None  # the same with small_input=True; None = no small-input variant
    paper: str = ""
    pretrained: bool = False  # weights available through timm/torchvision
    tags: tuple[str, ...] = field(default_factory=tuple)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str | None = None,
    *,
    family: str = "",
    min_size: int = 32,
    min_size_small: int | None = None,
    paper: str = "",
    pretrained: bool = False,
    tags: tuple[str, ...] = (),
) -> Callable:
    """Decorator registering a builder under ``name`` (default: the function name).

    A duplicate name is an error: two families must never silently shadow each other.
    """

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(
                f"model '{key}' is registered twice ({_REGISTRY[key].builder.__module__} and {fn.__module__})"
            )
        _REGISTRY[key] = ModelInfo(
            key, fn, family or fn.__module__.rsplit(".", 1)[-1], min_size, min_size_small, paper, pretrained, tags
        )
        return fn

    return deco


def register_builder(name: str, builder: Callable[..., nn.Module], doc: str = "", **info) -> None:
    """Register a builder generated for one row of a family's variant table.

    Names the generated function after its registry key (so tracebacks and ``help()`` say which
    variant it is), sets its docstring, and registers it with ``info`` (see :func:`register_model`).
    """
    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = doc or builder.__doc__
    register_model(name, **info)(builder)


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered names matching a glob ``pattern`` (and optionally a family), sorted."""
    return sorted(
        n for n, info in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and (family is None or info.family == family)
    )




def lookup(name: str) -> ModelInfo | None:
    """The :class:`ModelInfo` registered under ``name``, or None."""
    return _REGISTRY.get(name)


def registered_names() -> list[str]:
    return list(_REGISTRY)
