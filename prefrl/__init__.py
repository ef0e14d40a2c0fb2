"""prefrl: preference-based RL on continuous control, in pure-functional JAX.

Submodules are imported lazily (``prefrl.preference``, ``prefrl.oracles``,
``prefrl.learners`` …) so that ``import prefrl`` has no side effects and stays
cheap. Environments live in ``prefrl.envs`` (the repository's ``envs/`` folder).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = (
    "types",
    "preference",
    "oracles",
    "tabular",
    "data",
    "networks",
    "learners",
    "rollout",
    "policies",
    "evaluation",
    "config",
    "checkpoints",
    "io",
    "loops",
    "sweeps",
    "studies",
    "report",
    "envs",
)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"prefrl.{name}")
    raise AttributeError(f"module 'prefrl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_SUBMODULES))
