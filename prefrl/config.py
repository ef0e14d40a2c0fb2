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


SEED_MAX = 2**31 - 1
"""Largest seed: JAX keys take 32 bits without x64, so larger seeds would alias smaller ones."""


def parse_seed(text: str) -> int:
    """A seed option: an integer in ``[0, SEED_MAX]``."""
    value = parse_int(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(
            f"a seed must be an integer in [0, {SEED_MAX}], got {text}")
    return value


def parse_float(text: str) -> float:
    """A float option: a finite number (``nan`` and ``inf`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer option that must be >= 1 (a size or a count)."""
    value = parse_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _is_seed(name: str) -> bool:
    return name in ("seed", "seeds") or name.endswith("_seed")


def _option_type(tp: Any, name: str = "", default: Any = None) -> Any:
    if tp is int:
        return parse_seed if _is_seed(name) and name != "seeds" else parse_int
    if tp is float:
        # A field whose default is infinite takes inf (e.g. "no limit").
        if isinstance(default, float) and default in (float("inf"), float("-inf")):
            return float
        return parse_float
    return tp


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
            kwargs.update(nargs="*", type=parse_seed if inner is int and _is_seed(f.name)
                          else _option_type(inner, f.name))
            if f.metadata.get("repeat"):
                kwargs.update(nargs="+", action="extend")
        elif origin is typing.Literal:
            choices = typing.get_args(tp)
            kwargs.update(choices=choices, type=type(choices[0]))
        elif tp is bool:
            kwargs.update(type=_parse_bool, metavar="{true,false}")
        else:
            kwargs.update(type=_option_type(tp, f.name, default))
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
    infinite = {f.name for f in dataclasses.fields(cls)
                if isinstance(f.default, float) and f.default in (float("inf"), float("-inf"))}
    for key, value in values.items():
        if (isinstance(value, float) and key not in infinite
                and (value != value or value in (float("inf"), float("-inf")))):
            raise ConfigError(f"{where}: {key} must be a finite number, got {value}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    out = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
