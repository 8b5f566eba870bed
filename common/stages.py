"""The config class of every stage, named by reference, for the command-line faces.

``make all ARGS="experiment=x"`` hands the same ``key=value`` list to every stage and each takes
its own keys; a face must therefore know which keys the *other* stages have, to leave those to
them and still refuse a key no stage has. Listing the classes here, by ``module:Class`` string,
lets the lower face (``python -m data_prep``) ask without importing the upper one
(``pipeline.__main__``): data_prep never imports pipeline, only this list names it.
"""

from __future__ import annotations

import importlib

STAGE_CONFIGS = (
    "data_prep.config:PrepConfig",
    "data_prep.config:FoldsConfig",
    "pipeline.config:TrainConfig",
    "pipeline.config_stages:PredictConfig",
    "pipeline.config_stages:EnsembleConfig",
    "pipeline.config_stages:ExportConfig",
)


def load_ref(ref: str) -> type:
    """``"module:Name"`` -> the object (imported on first use)."""
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def stage_configs() -> tuple[type, ...]:
    """Every stage's config class (a command-line key of another stage is left to that stage)."""
    return tuple(load_ref(ref) for ref in STAGE_CONFIGS)
