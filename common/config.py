"""One config dataclass per stage, loaded from YAML experiment files plus CLI overrides.

An experiment file holds one section per stage (``prep:``, ``folds:``, ``train:``, ``predict:``,
``ensemble:``, ``export:``) plus ``common:`` for the values several stages share (dataset,
experiment, k, fold_seed, paths: stated once). It may start from other files with
``base: other.yaml`` (or a list; paths relative to the file); only what changes needs to be
written, and a file's keys beat everything it inherits. Several files can also be given in
order (``--config data.yaml --config recipe.yaml``). Overrides come as ``key=value`` strings;
``key.sub=value`` sets one entry of a mapping key (``model_kwargs.drop_rate=0.2``). An unknown key
anywhere is a :class:`ConfigError` naming the key, the file and close matches (the stage's own
first); the resolved config is saved next to every output (:func:`config_to_dict`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from common.errors import ConfigError, close_matches

T = TypeVar("T")

STAGES = ("prep", "folds", "train", "predict", "ensemble", "export")


def opt(
    default: Any = dataclasses.MISSING,
    *,
    help: str = "",
    recipe: bool = True,
    choices: typing.Iterable | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
) -> Any:
    """A config field with a one-line ``help`` (shown by ``--help``), whether it is part of the
    training ``recipe`` (a run folder refuses a changed recipe; non-recipe keys such as paths,
    progress bars or worker counts may change between resumes), and what values are valid:
    ``choices`` (the one place a key's valid names are listed), ``ge``/``gt``/``le`` bounds
    (checked by :func:`check_declared`; ``None`` values of optional keys are not checked). Lists
    and dicts are copied."""
    meta = {"help": help, "recipe": recipe, "choices": tuple(choices) if choices is not None else None,
            "ge": ge, "gt": gt, "le": le}  # fmt: skip
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def stage_of(cls_or_cfg: Any) -> str:
    """``TrainConfig`` -> ``train``: the name a config's errors start with."""
    cls = cls_or_cfg if isinstance(cls_or_cfg, type) else type(cls_or_cfg)
    return cls.__name__.removesuffix("Config").lower()


def choices_of(cls: type, key: str) -> tuple:
    """The valid values declared for ``key`` of config class ``cls``."""
    for f in dataclasses.fields(cls):
        if f.name == key and f.metadata.get("choices"):
            return f.metadata["choices"]
    raise KeyError(f"{cls.__name__}.{key} declares no choices")


def check_choice(stage: str, key: str, value: Any, choices: typing.Iterable) -> None:
    """One :class:`ConfigError` line naming the key, the value and the close valid ones."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{stage}: unknown {key} '{value}' ({close_matches(str(value), [str(c) for c in choices])})")


def _check_bounds(stage: str, key: str, v: Any, m: dict, integer: bool) -> None:
    ge, gt, le = m.get("ge"), m.get("gt"), m.get("le")
    if ge is None and gt is None and le is None:
        return
    values = v if isinstance(v, list) else [v]
    for x in values:
        finite = isinstance(x, int) or math.isfinite(x)
        if ge is not None and le is not None:
            if not (finite and ge <= x <= le):
                raise ConfigError(f"{stage}: {key} must be in [{ge:g}, {le:g}], got {v}")
        elif integer and ge is not None:
            if x < ge:
                raise ConfigError(f"{stage}: {key} must be >= {ge}, got {v}")
        elif gt is not None and not (finite and x > gt):
            raise ConfigError(f"{stage}: {key} must be a finite number > {gt:g}, got {v}")
        elif ge is not None and not (finite and x >= ge):
            raise ConfigError(f"{stage}: {key} must be a finite number >= {ge:g}, got {v}")


def check_declared(cfg: Any) -> None:
    """Check every field against what its :func:`opt` declared (choices, bounds)."""
    stage = stage_of(cfg)
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if v is None:
            continue
        if f.metadata.get("choices") is not None:
            check_choice(stage, f.name, v, f.metadata["choices"])
        _check_bounds(stage, f.name, v, f.metadata, integer="int" in str(f.type) and "float" not in str(f.type))


# values several stages share, stated once in an experiment file's ``common:`` section
SHARED_KEYS = ("dataset", "data_root", "folds_dir", "runs_root", "experiment", "k", "fold_seed")


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def read_layers(path: str | Path, _seen: tuple = ()) -> list[tuple[Path, dict]]:
    """The files of an experiment, root ``base:`` first: ``[(path, {section: {key: value}}), ...]``."""
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
        if key not in (*STAGES, "common"):
            raise ConfigError(f"{path}: unknown section '{key}' ({close_matches(key, (*STAGES, 'common'))})")
        if not isinstance(val, dict):
            raise ConfigError(f"{path}: section '{key}' must be a mapping")
    for key in data.get("common") or {}:
        if key not in SHARED_KEYS:
            raise ConfigError(
                f"{path}: '{key}' cannot go in 'common:' (shared keys: {', '.join(SHARED_KEYS)}); "
                "put it in its stage's section"
            )
    bases = base if isinstance(base, list) else ([base] if base else [])
    parents = [layer for b in bases for layer in read_layers(path.parent / str(b), _seen + (path.resolve(),))]
    return [*parents, (path, data)]


def read_all_layers(paths: str | Path | list | tuple | None) -> list[tuple[Path, dict]]:
    """Layers of one experiment file, or of several applied in order (a data set, then a recipe)."""
    if not paths:
        return []
    if isinstance(paths, (str, Path)):
        paths = [paths]
    return [layer for p in paths for layer in read_layers(p)]


def read_experiment(path: str | Path) -> dict:
    """The raw sections of an experiment (``base:`` chain merged; a child's keys win)."""
    merged: dict = {}
    for _, data in read_all_layers(path):
        merged = _merge(merged, data)
    return merged


def stage_values(layers: list[tuple[Path, dict]], stage: str, field_names: set[str]) -> dict:
    """The ``stage`` values of an experiment: ``common:`` then the stage section, file by file.

    A file's keys beat everything it inherits, the inherited per-model overrides included: a
    child that sets ``epochs: 10`` trains every model 10 epochs even when its base file gave one
    model ``model_overrides: {m: {epochs: 25}}`` (the child's own ``model_overrides`` still win).
    """
    values: dict = {}
    for _, data in layers:
        layer = {k: v for k, v in (data.get("common") or {}).items() if k in field_names}
        layer.update(data.get(stage) or {})
        inherited = values.get("model_overrides")
        if isinstance(inherited, dict):
            values["model_overrides"] = {
                m: ({k: v for k, v in o.items() if k not in layer} if isinstance(o, dict) else o)
                for m, o in inherited.items()
            }
        for k, v in layer.items():
            if k == "model_overrides" and isinstance(v, dict) and isinstance(values.get(k), dict):
                values[k] = _merge(values[k], v)
            else:
                values[k] = v
    return values


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
            value = [v for v in value.strip().removeprefix("[").removesuffix("]").replace(",", " ").split() if v]
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


def build_config(cls: type[T], values: dict, source: str = "config", from_cli: frozenset = frozenset()) -> T:
    """Instantiate dataclass ``cls`` from ``values``; unknown keys raise with close matches.

    ``from_cli``: the keys given on the command line, named as such in an error (not the file)."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, val in values.items():
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{key}' for {cls.__name__} ({close_matches(key, fields)})")
        where = f"command line: {key}={val}" if key in from_cli else f"{source}: key '{key}'"
        kwargs[key] = _coerce(val, hints[key], where)
    try:
        cfg = cls(**kwargs)
    except TypeError as e:  # a required field without default
        raise ConfigError(f"{source}: {e}") from None
    validate = getattr(cfg, "validate", None)
    if validate:
        validate()  # a config's validate() starts with check_declared(self)
    else:
        check_declared(cfg)
    return cfg


def parse_overrides(items: list[str] | None) -> dict:
    """``["epochs=3", "models=a,b"]`` -> ``{"epochs": "3", "models": "a,b"}`` (typed later; the
    faces turn ``--key value`` into ``key=value`` first: :func:`common.cli.dashed_overrides`)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (or --key value)")
        key, val = item.split("=", 1)
        out[key.strip()] = val.strip()
    return out


def _near(key: str, names: typing.Iterable[str]) -> list[str]:
    """Keys close to ``key``: its leading words first (``lr_rate`` -> ``lr``, which difflib rates
    too far from it), then difflib's close ones."""
    words, names = key.split("_"), sorted(names)
    first = [n for n in names if n in {"_".join(words[:i]) for i in range(1, len(words))} or n.startswith(key + "_")]
    return list(dict.fromkeys(first + difflib.get_close_matches(key, names, n=5, cutoff=0.6)))


def key_hint(key: str, own: set[str], others: dict[str, set[str]]) -> str:
    """``did you mean`` for an unknown key: keys of the stage the value goes to first, then keys
    of other stages tagged with their stage (a listing of the stage's keys when nothing is close)."""
    stage_of_key = {n: stage for stage, names in reversed(others.items()) for n in names - own}
    hits = (_near(key, own) + [f"{n} ({stage_of_key[n]})" for n in _near(key, stage_of_key)])[:5]
    return f"did you mean: {', '.join(hits)}?" if hits else close_matches(key, own)


def _scalar(raw: str) -> Any:
    """A command-line value inside a mapping (no declared type): number, bool, list or string."""
    try:
        return float(raw) if "." in raw or "e" in raw.lower() else int(raw)  # YAML reads 1e-3 as a string
    except ValueError:
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError:
            return raw


def _set_dotted(cls: type, values: dict, key: str, raw: str) -> None:
    """``model_kwargs.drop_rate=0.2``: one entry of a mapping key, the file's other entries kept."""
    top, *path = key.split(".")
    if _strip_optional(typing.get_type_hints(cls)[top])[0] is not dict or not all(path):
        raise ConfigError(f"command line: {key}={raw}: '{top}' is not a mapping; give {top}=value")
    node = values[top] = copy.deepcopy(values.get(top) or {})
    for part in path[:-1]:
        node[part] = node[part] if isinstance(node.get(part), dict) else {}
        node = node[part]
    node[path[-1]] = _scalar(raw)


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def load_stage_config(
    cls: type[T],
    stage: str,
    path: str | Path | list | None,
    overrides: list[str] | None = None,
    other_stages: tuple[type, ...] = (),
) -> T:
    """Resolve the ``stage`` section of experiment file ``path`` plus CLI overrides into ``cls``.

    ``other_stages``: the config classes of the other stages. A command-line key that one of
    them has and ``cls`` has not is ignored here (``make all ARGS="experiment=x"`` hands the same
    keys to every stage, each takes its own); a key no stage has is an error.
    """
    names = field_names(cls)
    values = stage_values(read_all_layers(path), stage, names)
    shown = " + ".join(str(p) for p in path) if isinstance(path, (list, tuple)) else path
    src = f"{shown or 'defaults'} [{stage}]"
    over = parse_overrides(overrides)
    others = {stage_of(c): field_names(c) for c in other_stages if c is not cls}
    for key in list(over):
        top = key.split(".")[0]
        if top not in names:
            if top in set().union(*others.values()):
                del over[key]
                continue
            raise ConfigError(f"command line: unknown key '{key}' for {stage} ({key_hint(top, names, others)})")
    dotted = {k: over.pop(k) for k in list(over) if "." in k}
    values.update(over)
    # the command line wins over everything, per-model overrides of the files included
    per_model = values.get("model_overrides")
    if over and isinstance(per_model, dict):
        values["model_overrides"] = {
            m: ({k: v for k, v in o.items() if k not in over} if isinstance(o, dict) else o)
            for m, o in per_model.items()
        }
    for key, raw in dotted.items():
        _set_dotted(cls, values, key, raw)
        over[key.split(".")[0]] = raw
    return build_config(cls, values, src, frozenset(over))


def _type_name(tp: Any) -> str:
    tp, optional = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (str,)
        name = f"list of {getattr(item, '__name__', str(item))}"
    else:
        name = getattr(tp, "__name__", str(tp))
    return f"{name} or none" if optional else name


def config_help(cls: type) -> str:
    """Every key of a config dataclass with its type, default and one-line meaning (for --help)."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((f.name, _type_name(hints[f.name]), repr(default), f.metadata.get("help", "")))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"keys of the {cls.__name__} (key=value or --key value; key.sub=value: one entry of a mapping):"]
    for name, tp, default, text in rows:
        lines.append(f"  {name:<{w0}}  {tp:<{w1}}  {text} [default: {default}]")
    return "\n".join(lines)


def config_to_dict(cfg: Any) -> dict:
    """Plain dict of a config dataclass, for saving next to outputs."""
    return dataclasses.asdict(cfg)
