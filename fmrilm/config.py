"""Typed configs: dataclasses loaded from YAML, overridable from the command line, saved resolved.

A config file may be a path or the name of a config shipped in ``fmrilm/configs/<name>.yaml``.
Overrides use dotted keys: ``--set tokenizer.codebook_size=64 train.steps=10``.
Unknown keys are errors (a typo never silently falls back to a default).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fmrilm.errors import InputError
from fmrilm.io import atomic_path

T = TypeVar("T")
CONFIG_DIR = Path(__file__).parent / "configs"


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path to an existing file, or the name of a shipped config (``demo`` -> configs/demo.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise InputError(name_or_path, "config", f"no such file, and not a shipped config (shipped: {names})")


def load_yaml(name_or_path: str | Path) -> dict:
    path = resolve_config_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(path, "yaml", f"unreadable YAML ({err})") from None
    if not isinstance(data, dict):
        raise InputError(path, "yaml", "top level must be a mapping")
    return data


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b=value`` overrides (values parsed as YAML scalars) to a nested dict, in place."""
    for item in overrides or []:
        if "=" not in item:
            raise InputError("--set", item, "expected key=value")
        key, raw = item.split("=", 1)
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return data


def from_dict(cls: type[T], data: dict | None, source: str = "config") -> T:
    """Build dataclass `cls` from a nested dict, checking keys and recursing into nested dataclasses."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise InputError(source, ", ".join(sorted(unknown)),
                         f"unknown key(s) for {cls.__name__}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{source}.{name}")
    return cls(**kwargs)


def _coerce(tp, value, source):
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value, source)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return from_dict(arg, value, source)
        return value
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def load_config(cls: type[T], name_or_path: str | Path | None = None, overrides: list[str] | None = None,
                section: str | None = None) -> T:
    """Load `cls` from a YAML file (optionally one `section` of it) plus command-line overrides."""
    data = load_yaml(name_or_path) if name_or_path is not None else {}
    if section is not None:
        data = data.get(section, {})
    apply_overrides(data, overrides)
    return from_dict(cls, data, str(name_or_path or "config"))


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | Path) -> None:
    """Save the resolved config as YAML next to an artifact (atomically)."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(_plain(to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg),
                                      sort_keys=False))


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
