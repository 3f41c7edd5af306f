"""Typed configs: dataclasses loaded from YAML, overridable from the command line, saved resolved.

A config file may be a path or the name of a config shipped in ``fmrilm/configs/<name>.yaml``.
Overrides use dotted keys: ``--set tokenizer.codebook_size=64 train.steps=10``.
Unknown keys are errors (a typo never silently falls back to a default). Every command that reads
a config takes the same ``--config / --set [/ --force]`` arguments (:func:`add_config_args`,
:func:`config_from_args`).
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
    """The mapping in a YAML config; InputError if it is unreadable, empty or not a mapping."""
    path = resolve_config_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(path, "yaml", f"unreadable YAML ({err})") from None
    if data is None:  # an empty file is a mistake far more often than a wish for every default
        raise InputError(path, "yaml", "empty file (write {} to take every default)")
    if not isinstance(data, dict):
        raise InputError(path, "yaml", "top level must be a mapping")
    return data


def apply_overrides(data: dict, overrides: list[str] | None, cls: type | None = None) -> dict:
    """Apply ``a.b=value`` overrides (values parsed as YAML scalars) to a nested dict, in place.

    With `cls` (the dataclass `data` is for), each key and value is checked against its field
    first, so a bad override is reported as ``--set`` rather than as the file's; ``key=`` gives a
    text field the empty string.
    """
    for item in overrides or []:
        if "=" not in item:
            raise InputError("--set", item, "expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            # e.g. a stage's set list holding a list, a=[b=[1]]: its items need quotes, a=["b=[1]"]
            raise InputError("--set", key, f"{raw!r} is not a YAML value ({str(err).splitlines()[0]}); quote list "
                             "items that hold brackets: key=[\"sub=[x]\"]") from None
        if cls is not None:
            tp = _field_type(cls, key)
            if value is None and not raw.strip() and tp is str:
                value = ""  # `key=` empties a text field (YAML reads nothing as null)
            _coerce(tp, value, "--set", key)
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}  # a section the file leaves out or null starts from its defaults
            node = node[part]
        node[leaf] = value
    return data


def _field_type(cls: type, key: str):
    """The annotation of dotted field `key` of dataclass `cls` (Any below an untyped mapping)."""
    tp, done = cls, []
    for part in key.split("."):
        if tp is Any or tp is dict:
            return Any  # inside an untyped mapping: whatever its consumer accepts
        if typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]  # any key of a typed mapping: its value type
        elif _dataclass_of(tp) is None:
            raise InputError("--set", key, f"{'.'.join(done)!r} is a {_name(tp)}, not a section with keys")
        else:
            section = _dataclass_of(tp)
            hints = typing.get_type_hints(section)
            if part not in hints:
                raise InputError("--set", key, f"unknown key {'.'.join([*done, part])!r} for {section.__name__}; "
                                               f"known: {sorted(f.name for f in dataclasses.fields(section))}")
            tp = hints[part]
        done.append(part)
    return tp


def _dataclass_of(tp):
    """`tp`, or the dataclass of ``Optional[dataclass]``; None for anything else."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return found[0] if found else None
    return None


def from_dict(cls: type[T], data: dict | None, source: str = "config", prefix: str = "") -> T:
    """Build dataclass `cls` from a nested dict, checking keys and value types against its annotations.

    Raises
    ------
    InputError
        Naming `source` and the dotted field (`prefix` + key): an unknown key, or a value of another
        type (``expected int, got 'three'``).
    """
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise InputError(source, ", ".join(prefix + k for k in sorted(unknown)),
                         f"unknown key(s) for {cls.__name__}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value, source, prefix + name) for name, value in data.items()}
    return cls(**kwargs)


def _coerce(tp, value, source: str, key: str):
    """`value` as annotation `tp` wants it (YAML lists → tuples, ints → floats); InputError if it is not one."""
    if tp is Any or tp is object:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return from_dict(tp, value, source, key + ".")
        raise InputError(source, key, f"expected a mapping ({tp.__name__}), got {value!r}")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options, errors = [a for a in args if a is not type(None)], []
        for option in options:
            try:
                return _coerce(option, value, source, key)
            except InputError as err:
                errors.append(err)
        deeper = [e for e in errors if e.field != key]  # e.g. a bad key inside an Optional dataclass
        if len(options) == 1 and deeper:
            raise deeper[0]
        raise InputError(source, key, f"expected {_name(tp)}, got {value!r}")
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise InputError(source, key, f"expected a list ({_name(tp)}), got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise InputError(source, key, f"expected {len(args)} items ({_name(tp)}), got {value!r}")
            items = [_coerce(a, v, source, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            item = args[0] if args else Any
            items = [_coerce(item, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise InputError(source, key, f"expected a mapping, got {value!r}")
        item = args[1] if args else Any
        return {k: _coerce(item, v, source, f"{key}.{k}") for k, v in value.items()}
    if tp is Path and isinstance(value, (str, Path)):
        return Path(value)
    if tp in (int, float, bool, str):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if tp is float and number:
            return float(value)
        if isinstance(value, tp) and (tp is bool or not isinstance(value, bool)):
            return value  # bool is an int to Python, never to a config
        raise InputError(source, key, f"expected {tp.__name__}, got {value!r}")
    return value


def _name(tp) -> str:
    """An annotation as a reader writes it: ``int``, ``float or None``, ``tuple[int, ...]``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join("None" if a is type(None) else _name(a) for a in typing.get_args(tp))
    return tp.__name__ if isinstance(tp, type) and not typing.get_args(tp) else str(tp).replace("typing.", "")


def load_config(cls: type[T], name_or_path: str | Path | None = None, overrides: list[str] | None = None,
                section: str | None = None) -> T:
    """Load `cls` from a YAML file (optionally one `section` of it) plus command-line overrides.

    Every key and value is checked against `cls`'s annotations at load time; errors name the file,
    or ``--set`` for an override, and the dotted field.
    """
    data = load_yaml(name_or_path) if name_or_path is not None else {}
    if section is not None:
        data = data.get(section, {})
    apply_overrides(data, overrides, cls)
    return from_dict(cls, data, str(name_or_path or "config"))


def add_config_args(parser, default_config: str | None, set_help: str = "config overrides, dotted keys",
                    force_help: str | None = None, config_help: str = "YAML path or shipped config name") -> None:
    """Add the ``--config``, ``--set`` and (with `force_help`) ``--force`` arguments of a command.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    default_config : str or None
        Shipped config name (or path) taken without ``--config``; None leaves it to the command.
    set_help : str
        What ``--set KEY=VALUE ...`` overrides, e.g. an example for this command's config.
    force_help : str or None
        What ``--force`` (a flag) replaces; None adds no ``--force``.
    config_help : str
        Help of ``--config``; the default is appended when there is one.
    """
    if default_config is not None:
        config_help += " (default: %(default)s)"
    parser.add_argument("--config", default=default_config, help=config_help)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help=set_help)
    if force_help is not None:
        parser.add_argument("--force", action="store_true", help=force_help)


def add_run_args(parser, default_config: str, output: str, handler) -> None:
    """The arguments of a command that scores a pipeline run: ``--config``/``--set``/``--force``
    (:func:`add_config_args`) and ``--run DIR``, whose ``stages.json`` gives the inputs and whose
    ``DIR/<output>`` takes the output (:func:`fmrilm.artifacts.run_paths`); `handler` runs it."""
    add_config_args(parser, default_config, force_help="replace an existing output directory")
    parser.add_argument("--run", metavar="DIR", help=f"a pipeline run: the inputs from its stages.json, the output "
                                                     f"to DIR/{output} (--set wins)")
    parser.set_defaults(handler=handler)


def config_from_args(cls: type[T], args, overrides: list[str] | None = None) -> T:
    """`cls` loaded from the ``--config`` and ``--set`` of parsed `args` (:func:`add_config_args`).

    `overrides` come before ``--set``, so the command line has the last word over a command's own
    (e.g. paths given as separate arguments).
    """
    return load_config(cls, args.config, [*(overrides or []), *args.set])


def required_path() -> Any:
    """A path field with no default (``field: str = required_path()``): "" until the YAML, ``--set`` or
    the pipeline gives it; :func:`check_required` refuses a config that reaches its use without one.

    Run paths never default to a demo location: the shipped ``*_demo.yaml`` files say where the demo's are.
    """
    return dataclasses.field(default="", metadata={"required": True})


def check_required(cfg: T, source: str | Path = "config", prefix: str = "") -> T:
    """`cfg`, after checking that no :func:`required_path` field (nested ones included) is empty.

    Raises
    ------
    InputError
        Naming `source` and the dotted field, and saying it is required.
    """
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("required") and (value is None or str(value) == ""):
            raise InputError(source, prefix + f.name,
                             f"required: {type(cfg).__name__}.{f.name} has no default; give it in the config "
                             f"or with --set {prefix}{f.name}=PATH")
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_required(value, source, f"{prefix}{f.name}.")
    return cfg


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
