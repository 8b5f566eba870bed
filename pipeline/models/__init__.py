"""Model zoo: ``create_model(name, num_classes, ...)`` and ``list_models(pattern)``.

Every module in this package registers its builders on import, so a new family is one new file
(plus ``python -m pipeline.models index --write``, which records which module registers which
name). Families are imported lazily, by name (:mod:`pipeline.models.registry`): building
``simple_cnn`` imports neither timm nor torchvision.
"""

from __future__ import annotations

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
