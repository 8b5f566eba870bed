"""The export bundle's format: written by :mod:`pipeline.submit.export`, read by predict.

A bundle is a run-folder tree plus what predicting needs without the training data (label map,
prep identity, library versions); see the export module for its layout.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pandas as pd

from common import schema
from common.errors import DataError
from pipeline.runs.prep import PrepIdentity, read_json

log = logging.getLogger(__name__)


BUNDLE_JSON = "bundle.json"


BUNDLE_RUNS = "runs"


BUNDLE_WHEELS = "wheels"


PREP_JSON = "prep.json"


BUNDLE_FORMAT = 1


LIBRARIES = ("torch", "torchvision", "timm", "accelerate", "numpy", "pandas", "pillow", "pyyaml")


@dataclass
class Bundle:
    """An export bundle read back: what ``predict bundle=DIR`` needs."""

    root: Path
    dataset: str
    experiment: str
    label_map: pd.DataFrame
    prep: PrepIdentity
    meta: dict

    @property
    def runs_root(self) -> Path:
        return self.root / BUNDLE_RUNS


def read_bundle(path: str | Path) -> Bundle:
    """Read and check an export bundle (one error line if it is not one)."""
    root = Path(path)
    meta = read_json(root / BUNDLE_JSON)
    if not meta:
        raise DataError(f"{root}: not an export bundle ({BUNDLE_JSON} missing or unreadable)")
    if meta.get("format") != BUNDLE_FORMAT:
        raise DataError(f"{root}: bundle format {meta.get('format')!r}, this version reads {BUNDLE_FORMAT}")
    prep = read_json(root / PREP_JSON)
    if not prep.get("fingerprint"):
        raise DataError(f"{root / PREP_JSON}: missing or without a prep fingerprint")
    label_map = schema.read_label_map(root)
    _warn_versions(meta.get("versions", {}))
    return Bundle(root, meta["dataset"], meta["experiment"], label_map, PrepIdentity.from_dict(prep), meta)


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a bundle's weights and code were made with."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    try:
        out["landmark-pipeline"] = metadata.version("landmark-pipeline")
    except metadata.PackageNotFoundError:
        out["landmark-pipeline"] = "source"
    return out


def _warn_versions(made_with: dict) -> None:
    """Different torch/timm versions usually load the same state dict; say so when they differ."""
    now = library_versions()
    diff = [f"{k} {v} -> {now.get(k)}" for k, v in made_with.items() if k in ("torch", "timm") and now.get(k) != v]
    if diff:
        log.warning("bundle made with other library versions (%s); the weights check still applies", "; ".join(diff))
