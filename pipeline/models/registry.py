"""One registry for every backbone, standard or new (after timm's ``_registry``).

A model family registers builder functions with :func:`register_model`; everyone else calls
:func:`create_model` by name. Builders take ``num_classes`` and ``small_input`` keywords (plus
their own options) and return an ``nn.Module`` whose classifier has ``num_classes`` outputs and
which exposes ``num_features`` (the pooled feature width).

Names become networks in :mod:`pipeline.models.factory` (``create_model``, which also builds
``timm:<name>``, attaches the pooling/neck/head and loads local weights files); this module
imports no model family, so families can import it without a cycle.

Families load lazily: :func:`lookup` imports only the module that registers the asked name (from
the generated :mod:`pipeline.models._index`), so a ``simple_cnn`` run never imports timm or
torchvision; :func:`list_models` and :func:`registered_names` import every family first. After
adding or renaming a model: ``python -m pipeline.models index --write`` (a test checks the index).
"""

from __future__ import annotations

import fnmatch
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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


# modules of this package that register no model or must not be imported to find models
_NOT_FAMILIES = {"registry", "__main__"}
_all_loaded = False


def family_modules() -> list[str]:
    """Every module of this package that may register models, sorted (``_private`` ones excluded)."""
    here = Path(__file__).resolve().parent
    names = (m.name for m in pkgutil.iter_modules([str(here)]))
    return sorted(n for n in names if not n.startswith("_") and n not in _NOT_FAMILIES)


def _import(module: str) -> None:
    importlib.import_module(f"{__package__}.{module}")


def load_all(order: list[str] | None = None) -> dict[str, str]:
    """Import every family (in ``order``); returns which module's import registered each new name.

    In a fresh process that is the full index (``name -> module``): importing that module alone
    registers the name, since it registered during that module's import.
    """
    global _all_loaded
    found: dict[str, str] = {}
    if _all_loaded:
        return found
    for module in order or family_modules():
        before = set(_REGISTRY)
        _import(module)
        found.update({n: module for n in _REGISTRY if n not in before})
    _all_loaded = True
    return found


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered names matching a glob ``pattern`` (and optionally a family), sorted."""
    load_all()
    return sorted(
        n for n, info in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and (family is None or info.family == family)
    )


def lookup(name: str) -> ModelInfo | None:
    """The :class:`ModelInfo` registered under ``name`` (importing only its family), or None."""
    if name not in _REGISTRY:
        from pipeline.models._index import MODULE_OF

        module = MODULE_OF.get(name)
        if module is not None:
            _import(module)
        if name not in _REGISTRY:  # a stale index or a name registered elsewhere: look everywhere
            load_all()
    return _REGISTRY.get(name)


def registered_names() -> list[str]:
    """Every registered name (imports every family)."""
    load_all()
    return list(_REGISTRY)
