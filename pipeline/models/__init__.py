"""Model zoo: ``create_model(name, num_classes, ...)`` and ``list_models(pattern)``.

Every module in this package registers its builders on import; the loop below imports them
all, so a new family is one new file (no shared list to edit).
"""

from __future__ import annotations

import importlib
import pkgutil

from pipeline.models.factory import check_input_size, create_model, min_input_size, model_info
from pipeline.models.registry import ModelInfo, list_models, register_model

__all__ = [
    "ModelInfo",
    "check_input_size",
    "create_model",
    "list_models",
    "min_input_size",
    "model_info",
    "register_model",
]

_SKIP = {"registry", "__main__"}
for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_") and _m.name not in _SKIP:
        importlib.import_module(f"{__name__}.{_m.name}")
