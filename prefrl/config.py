"""Typed configs: frozen dataclasses ↔ command-line options ↔ TOML tables.

Every command's options come from one frozen dataclass, so ``--help`` lists
each field with its type, default and the help text kept in the field's
``metadata["help"]``. Unknown keys are errors that name the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names it."""


def field(default: Any, help: str, *, repeat: bool = False,  # noqa: A002 - mirrors argparse
          result_free: bool = False, **kwargs: Any) -> Any:
    """A dataclass field with help text for ``--help``.

    ``repeat`` (tuple fields): the option may be given several times and its
    values accumulate (``--task-param a=1 --task-param b=2``).
    ``result_free``: the setting does not change what a run computes (output
    folder, progress bars, threads, how often files are written), so a run
    may resume under another value (:func:`result_settings` leaves it out).
    """
    if isinstance(default, list | dict | set):
        raise TypeError("use a tuple for sequence defaults (configs are frozen)")
    return dataclasses.field(
        default=default, metadata={"help": help, "repeat": repeat, "result_free": result_free},
        **kwargs)


def result_settings(config: Any) -> dict[str, Any]:
    """:func:`to_dict` without the fields marked ``result_free``: what a resume must match."""
    free = {f.name for f in dataclasses.fields(config) if f.metadata.get("result_free")}
    return {k: v for k, v in to_dict(config).items() if k not in free}


def _base_type(tp: Any) -> tuple[Any, bool]:
    """Strip ``Optional``; return (type, is_optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def parse_int(text: str) -> int:
    """An integer option; scientific notation with an integral value (``1e6``) is accepted."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(value)


def _option_type(tp: Any) -> Any:
    return parse_int if tp is int else tp


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one ``--option`` per field of the dataclass ``cls`` (``_`` becomes ``-``)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, optional = _base_type(hints[f.name])
        name = "--" + prefix + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        kwargs: dict[str, Any] = {
            "dest": prefix + f.name,
            "default": argparse.SUPPRESS,
            "help": f"{help_text} (default: {default!r})",
        }
        origin = typing.get_origin(tp)
        if origin is tuple:
            inner = typing.get_args(tp)[0]
            kwargs.update(nargs="*", type=_option_type(inner))
            if f.metadata.get("repeat"):
                kwargs.update(nargs="+", action="extend")
        elif origin is typing.Literal:
            choices = typing.get_args(tp)
            kwargs.update(choices=choices, type=type(choices[0]))
        elif tp is bool:
            kwargs.update(type=_parse_bool, metavar="{true,false}")
        else:
            kwargs.update(type=_option_type(tp))
        parser.add_argument(name, **kwargs)


def from_args(cls: type[T], args: argparse.Namespace, prefix: str = "", **overrides: Any) -> T:
    """Build ``cls`` from parsed options (only those given override the defaults)."""
    values = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if hasattr(args, key):
            value = getattr(args, key)
            if isinstance(value, list):
                value = tuple(value)
            values[f.name] = value
    values.update(overrides)
    return cls(**values)


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build ``cls`` from a mapping (a TOML table); unknown keys raise ``ConfigError``."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown} for {cls.__name__}; valid keys: {sorted(names)}"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    out = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
