"""One config dataclass per stage, loaded from YAML experiment files plus CLI overrides.

An experiment file holds one section per stage (``prep:``, ``folds:``, ``train:``,
``ensemble:``) and may start from another file with ``base: other.yaml`` (path relative to
the file); only what changes needs to be written. Overrides come as ``key=value`` strings.
An unknown key anywhere is a :class:`ConfigError` naming the key, the file and close matches;
the resolved config is saved next to every output (:func:`config_to_dict`).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from common.errors import ConfigError, close_matches

T = TypeVar("T")

STAGES = ("prep", "folds", "train", "predict", "ensemble", "export")


def opt(default: Any = dataclasses.MISSING, *, help: str = "", recipe: bool = True) -> Any:
    """A config field with a one-line ``help`` (shown by ``--help``) and whether it is part of the
    training ``recipe`` (a run folder refuses a changed recipe; non-recipe keys such as paths,
    progress bars or worker counts may change between resumes). Lists and dicts are copied."""
    meta = {"help": help, "recipe": recipe}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def read_experiment(path: str | Path, _seen: tuple = ()) -> dict:
    """Read an experiment YAML (following ``base:`` chains) into ``{stage: {key: value}}``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of stage sections")
    base = data.pop("base", None)
    for key, val in data.items():
        if key not in STAGES:
            raise ConfigError(f"{path}: unknown section '{key}' ({close_matches(key, STAGES)})")
        if not isinstance(val, dict):
            raise ConfigError(f"{path}: section '{key}' must be a mapping")
    if base:
        parent = read_experiment(path.parent / base, _seen + (path.resolve(),))
        data = _merge(parent, data)
    return data


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Coerce ``value`` (from YAML or a CLI string) to the annotated type ``tp``."""
    tp, optional = _strip_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required")
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (str,)
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            value = [value]
        items = [_coerce(v, item_tp, where) for v in value]
        return items if origin is list else tuple(items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if tp is int:
            if f != int(f):
                raise ConfigError(f"{where}: expected an integer, got {value!r}")
            return int(f)
        return f
    if tp is str:
        return str(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def build_config(cls: type[T], values: dict, source: str = "config") -> T:
    """Instantiate dataclass ``cls`` from ``values``; unknown keys raise with close matches."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, val in values.items():
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{key}' for {cls.__name__} ({close_matches(key, fields)})")
        kwargs[key] = _coerce(val, hints[key], f"{source}: key '{key}'")
    try:
        cfg = cls(**kwargs)
    except TypeError as e:  # a required field without default
        raise ConfigError(f"{source}: {e}") from None
    validate = getattr(cfg, "validate", None)
    if validate:
        validate()
    return cfg


def parse_overrides(items: list[str] | None) -> dict:
    """``["epochs=3", "models=a,b"]`` -> ``{"epochs": "3", "models": "a,b"}`` (typed later)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value")
        key, val = item.split("=", 1)
        out[key.strip()] = val.strip()
    return out


def load_stage_config(cls: type[T], stage: str, path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Resolve the ``stage`` section of experiment file ``path`` plus CLI overrides into ``cls``."""
    values: dict = {}
    if path:
        values = dict(read_experiment(path).get(stage, {}) or {})
    src = f"{path or 'defaults'} [{stage}]"
    over = parse_overrides(overrides)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in over:
        if key not in fields:
            raise ConfigError(f"command line: unknown key '{key}' for {stage} ({close_matches(key, fields)})")
    values.update(over)
    # the command line wins over everything, per-model overrides of the files included
    per_model = values.get("model_overrides")
    if over and isinstance(per_model, dict):
        values["model_overrides"] = {
            m: ({k: v for k, v in o.items() if k not in over} if isinstance(o, dict) else o)
            for m, o in per_model.items()
        }
    return build_config(cls, values, src)


def config_to_dict(cfg: Any) -> dict:
    """Plain dict of a config dataclass, for saving next to outputs."""
    return dataclasses.asdict(cfg)
