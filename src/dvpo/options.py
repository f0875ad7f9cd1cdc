"""Stage options as dataclasses, usable from a YAML file and from the command line alike.

Each stage declares one dataclass; `build_parser` turns its fields into `--kebab-case`
options (help text from the field metadata) and `resolve` merges defaults < YAML < command
line, so every option works in both places.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from dvpo.errors import ConfigError


def option(default=dataclasses.MISSING, help: str = "", choices=None, positional: bool = False, **kwargs):
    """A dataclass field with the help text the CLI shows; no default means required. A `positional`
    option is written without its `--name` on the command line (`dvpo models get NAME`)."""
    metadata = {"help": help, "choices": choices, "positional": positional}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def _base_type(annotation) -> tuple[type, bool]:
    """(element type, is_list) for annotations like int, float | None, list[str]."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing), {})  # annotations are postponed strings
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin is list:
        return typing.get_args(annotation)[0], True
    if origin is dict:
        return dict, False
    return annotation, False


def _mapping(text: str) -> dict:
    """A mapping option on the command line, written as YAML/JSON: '{rl: {learning_rate: 2e-6}}'."""
    value = yaml.safe_load(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping such as '{{key: value}}', got {text!r}")
    return value


def _has_default(field) -> bool:
    return field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING


def build_parser(parser: argparse.ArgumentParser, config_cls: type) -> None:
    parser.add_argument("--config", help="YAML file of options (keys as below, dashes or underscores); "
                        "command-line options override it")
    # Required options first, then the rest in declaration order (a stage's own before shared ones).
    fields = sorted(dataclasses.fields(config_cls), key=lambda f: (_has_default(f), f.name not in config_cls.__annotations__))
    for field in fields:
        kind, is_list = _base_type(field.type)
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        default = None if required else (field.default_factory() if field.default_factory is not dataclasses.MISSING
                                          else field.default)
        help_text = field.metadata.get("help", "")
        help_text += " (required)" if required else f" (default: {default})"
        kwargs: dict[str, Any] = dict(dest=field.name, default=argparse.SUPPRESS, help=help_text)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is dict:
            kwargs["type"] = _mapping
        else:
            kwargs["type"] = kind
            if is_list:
                kwargs["nargs"] = "+"
            if field.metadata.get("choices"):
                kwargs["choices"] = field.metadata["choices"]
        if field.metadata.get("positional"):
            parser.add_argument(kwargs.pop("dest"), metavar=field.name.upper(), **kwargs)
        else:
            parser.add_argument("--" + field.name.replace("_", "-"), **kwargs)


def _coerce(config_cls: type, name: str, value, origin: str):
    field = {f.name: f for f in dataclasses.fields(config_cls)}[name]
    kind, is_list = _base_type(field.type)
    if value is None:
        return None
    try:
        if is_list:
            values = value if isinstance(value, list) else [value]
            return [kind(v) for v in values]
        if kind is bool and not isinstance(value, bool):
            raise TypeError("expected true or false")
        if kind is dict and not isinstance(value, dict):
            raise TypeError(f"expected a mapping, got {type(value).__name__}")
        value = kind(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{origin}: option '{name}': {error}") from None
    choices = field.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{origin}: option '{name}' must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


def read_options_file(config_file: str | Path) -> dict:
    """The mapping of option: value in a YAML file; a ConfigError naming the file when it is missing or not one."""
    path = Path(config_file)
    if not path.is_file():
        raise ConfigError(f"config file {config_file} does not exist")
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{config_file}: expected a mapping of option: value")
    return loaded


def resolve(config_cls: type, args: argparse.Namespace):
    """Defaults < YAML file (`--config`) < command line; required options must be set somewhere."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    values: dict[str, Any] = {}
    config_file = getattr(args, "config", None)
    if config_file:
        for key, value in read_options_file(config_file).items():
            name = str(key).replace("-", "_")
            if name not in names:
                raise ConfigError(f"{config_file}: unknown option '{key}' (valid: {', '.join(sorted(names))})")
            values[name] = _coerce(config_cls, name, value, config_file)
    for name in names:
        if name in vars(args):
            values[name] = _coerce(config_cls, name, getattr(args, name), "command line")
    missing = [f.name for f in dataclasses.fields(config_cls)
               if f.name not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError("missing required option(s): " + ", ".join("--" + m.replace("_", "-") for m in missing))
    return config_cls(**values)


def apply_overrides(config, overrides: dict, origin: str):
    """A copy of `config` with some options replaced, each checked as if it came from a YAML file."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"{origin}: expected a mapping of option: value, got {type(overrides).__name__}")
    names = {f.name for f in dataclasses.fields(config)}
    values = {}
    for key, value in overrides.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise ConfigError(f"{origin}: unknown option '{key}' (valid: {', '.join(sorted(names))})")
        values[name] = _coerce(type(config), name, value, origin)
    return dataclasses.replace(config, **values)


def save_config(config, path: Path) -> None:
    """The resolved options next to a run's outputs, so the run can be repeated."""
    path.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
