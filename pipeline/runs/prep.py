"""The identity of a prep: what a model's input pixels and labels depend on.

Read from a data folder (``prep_report.json``, ``prep_config.yaml``, the label map) or from what
a run folder recorded, and compared with one line that says what changed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from common import schema
from common.errors import DataError

DEFAULT_CACHE_FORMAT, DEFAULT_JPEG_QUALITY = "jpeg", 92  # PrepConfig's defaults


@dataclass
class PrepIdentity:
    """What a model's input pixels depend on: the prep run and how it made the cached images.

    ``recorded`` is False when the run folder has no ``prep:`` block (runs of older versions)
    and the identity was read from the current data folder instead: then it cannot tell a
    changed prep apart, and the prep check only warns.
    """

    fingerprint: str | None = None
    label_map_sha: str | None = None
    image_size: int | None = None
    resize_mode: str | None = None
    cache_format: str | None = None
    jpeg_quality: int | None = None
    recorded: bool = True

    def as_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "recorded"}

    @classmethod
    def from_dict(cls, d: dict, recorded: bool = True) -> PrepIdentity:
        names = {f.name for f in dataclasses.fields(cls)} - {"recorded"}
        return cls(**{k: v for k, v in d.items() if k in names}, recorded=recorded)

    def decode_settings(self) -> tuple[int, str, str, int]:
        """(image_size, resize_mode, cache format, JPEG quality) to reproduce prep's cached pixels."""
        if self.image_size is None or self.resize_mode is None:
            raise DataError("the prep identity has no image_size/resize_mode: cannot decode images like prep")
        fmt = self.cache_format or DEFAULT_CACHE_FORMAT
        quality = int(self.jpeg_quality) if self.jpeg_quality is not None else DEFAULT_JPEG_QUALITY
        return int(self.image_size), str(self.resize_mode), fmt, quality


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _read_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def read_prep_identity(data_dir: str | Path) -> PrepIdentity:
    """The identity of the prep that wrote ``data_dir`` (report, config and label map)."""
    data_dir = Path(data_dir)
    report = read_json(data_dir / schema.PREP_REPORT)
    prep_cfg = _read_yaml(data_dir / schema.PREP_CONFIG)
    cache = report.get("cache") or {}
    sha = None
    if (data_dir / schema.LABEL_MAP).is_file():
        sha = schema.label_map_sha(schema.read_label_map(data_dir))
    return PrepIdentity(
        fingerprint=report.get("fingerprint"),
        label_map_sha=sha,
        image_size=prep_cfg.get("image_size", cache.get("size")),
        resize_mode=prep_cfg.get("resize_mode", cache.get("mode")),
        cache_format=cache.get("format"),
        jpeg_quality=cache.get("quality"),
        recorded=True,
    )


def describe_prep_change(old: PrepIdentity, new: PrepIdentity) -> str:
    """``image_size 36 -> 40; label map ...`` or what else can explain a changed fingerprint."""
    names = {
        "image_size": "image_size",
        "resize_mode": "resize_mode",
        "label_map_sha": "label map",
        "cache_format": "cache format",
    }
    diffs = [
        f"{label} {getattr(old, key)} -> {getattr(new, key)}"
        for key, label in names.items()
        if getattr(old, key) is not None and getattr(new, key) is not None and getattr(old, key) != getattr(new, key)
    ]
    if diffs:
        return "; ".join(diffs)
    return "same image size, resize mode and label map: the source, selection or splits changed"
