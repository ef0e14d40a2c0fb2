"""Argument checks of the public factories (``make``): a wrong type is named where it is passed.

Without them a misplaced argument fails deep inside flax or optax (e.g.
``reward_model.make(config, optax.adam(3e-3))`` puts the optimiser where the
network belongs, and flax says ``init_fn() takes 1 positional argument but 2
were given``). Each check raises ``TypeError`` naming the function, the
argument, what it expects and what it got.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import optax


def _got(value: Any) -> str:
    if isinstance(value, optax.GradientTransformation):
        return "an optax optimiser (GradientTransformation)"
    if isinstance(value, nn.Module):
        return f"a flax module ({type(value).__name__})"
    return f"{type(value).__name__} {value!r}"[:120]


def _hint(value: Any, name: str) -> str:
    if isinstance(value, optax.GradientTransformation) and name != "optimizer":
        return "; pass an optimiser by keyword: optimizer=..."
    return ""


def config(fn: str, value: Any, cls: type) -> None:
    """``value`` must be an instance of the config dataclass ``cls``."""
    if not isinstance(value, cls):
        raise TypeError(f"{fn}: argument 'config' should be a {cls.__name__}, got "
                        f"{_got(value)}")


def module(fn: str, name: str, value: Any, *, optional: bool = False) -> None:
    """``value`` must be a flax ``nn.Module`` (or ``None`` when ``optional``)."""
    if value is None and optional:
        return
    if not isinstance(value, nn.Module):
        raise TypeError(f"{fn}: argument {name!r} should be a flax module (flax.linen.Module)"
                        f"{' or None' if optional else ''}, got {_got(value)}{_hint(value, name)}")


def optimizer(fn: str, value: Any) -> None:
    """``value`` must be an optax transform (``init``/``update``) or ``None``."""
    if value is None or isinstance(value, optax.GradientTransformation):
        return
    if callable(getattr(value, "init", None)) and callable(getattr(value, "update", None)):
        return
    raise TypeError(f"{fn}: argument 'optimizer' should be an optax GradientTransformation "
                    f"(e.g. optax.adam(3e-4)) or None, got {_got(value)}")


def positive_int(fn: str, name: str, value: Any) -> None:
    """``value`` must be an integer >= 1 (not a bool)."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise TypeError(f"{fn}: argument {name!r} should be an integer >= 1, got "
                        f"{_got(value)}")


def function(fn: str, name: str, value: Any, *, optional: bool = False) -> None:
    """``value`` must be callable (or ``None`` when ``optional``)."""
    if value is None and optional:
        return
    if not callable(value) or isinstance(value, optax.GradientTransformation):
        raise TypeError(f"{fn}: argument {name!r} should be a function, got {_got(value)}"
                        f"{_hint(value, name)}")


__all__ = ["config", "function", "module", "optimizer", "positive_int"]


def check_make(fn: str, config_value: Any, cls: type, /, **args: Any) -> None:
    """The checks of one factory call: ``config`` is a ``cls``; each keyword by its name
    (``optimizer``: an optax transform; ``*_dim``: an integer >= 1; ``phi``/``*_fn``: a
    function; else a flax module); ``None`` (the factory's default) passes."""
    config(fn, config_value, cls)
    for name, value in args.items():
        if name == "optimizer":
            optimizer(fn, value)
        elif name.endswith("_dim"):
            positive_int(fn, name, value)
        elif name == "phi" or name.endswith("_fn"):
            function(fn, name, value, optional=True)
        else:
            module(fn, name, value, optional=True)
