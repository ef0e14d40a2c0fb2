"""Learners: each a factory ``make(config, …) -> Learner`` of pure functions.

A ``Learner`` is a pair ``(init, update)`` in the style of optax: another JAX
program can ``jax.jit(learner.update)``, ``jax.vmap`` it over seeds and pass
its own optax transform. Learners see arrays only; none imports an
environment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple


class Learner(NamedTuple):
    """``init(key, example_batch) -> state``; ``update(state, batch) -> (state, metrics)``."""

    init: Callable[..., Any]
    update: Callable[..., tuple[Any, dict[str, Any]]]


_SUBMODULES = ("reward_model", "cpl", "ppo", "bc", "regret_sf", "advantage_policy")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"prefrl.learners.{name}")
    raise AttributeError(f"module 'prefrl.learners' has no attribute {name!r}")
