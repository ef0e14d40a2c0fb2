"""Learners: each a factory ``make(config, …) -> Learner`` of pure functions.

The contract every learner keeps (optax's, applied to learning):

- ``init(key, example_batch) -> state``: the example fixes shapes only;
- ``update(state, batch) -> (state, metrics)``: one learning step, pure and
  ``jit``-able; ``metrics`` is a dict of arrays, returned, never printed.

The state is a pytree of arrays (a ``flax.struct.dataclass``): another JAX
program can ``jax.jit(learner.update)``, ``jax.vmap`` it over seeds and pass
its own optax transform to ``make``. Anything that changes between updates
without changing the computation (a learned reward's parameters, π_ref's
parameters) lives in the state, so replacing it never recompiles. Learners see
arrays only; none imports an environment, a loop or a file format.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

import jax

State = TypeVar("State")
Batch = TypeVar("Batch")
Metrics = dict[str, jax.Array]


class Learner(NamedTuple, Generic[State, Batch]):
    """``init(key, example_batch) -> state``; ``update(state, batch) -> (state, metrics)``."""

    init: Callable[[jax.Array, Batch], State]
    update: Callable[[State, Batch], tuple[State, Metrics]]


def check_make(fn: str, config: Any, cls: type, /, **kwargs: Any) -> None:
    """A factory's argument checks (:func:`prefrl.learners.arguments.check_make`)."""
    from prefrl.learners.arguments import check_make as check

    check(fn, config, cls, **kwargs)


_SUBMODULES = ("reward_model", "cpl", "ppo", "bc", "best_of_n", "regret_sf", "advantage_policy",
               "advantage_greedy", "sac")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"prefrl.learners.{name}")
    raise AttributeError(f"module 'prefrl.learners' has no attribute {name!r}")
