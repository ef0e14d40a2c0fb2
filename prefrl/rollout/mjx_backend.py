"""The MJX backend: pure-JAX rollouts of the same tasks (see :mod:`prefrl.rollout`)."""

from __future__ import annotations

from typing import Any

import jax

from prefrl.envs.tasks import TaskSpec, as_task
from prefrl.policies import PolicyFn
from prefrl.types import Trajectory

MJX_EXTRA = 'pip install -e ".[mjx]"'


class MissingExtraError(ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


def require_mjx() -> None:
    """Raise :class:`MissingExtraError` naming the extra when ``mujoco.mjx`` cannot be imported.

    Called before anything MJX-specific is imported, so ``--backend mjx``
    without ``mujoco-mjx`` fails with one line that says what to install.
    """
    try:
        import mujoco.mjx  # noqa: F401
    except ImportError as err:
        raise MissingExtraError(
            f"the MJX backend needs the mujoco-mjx package ({err}); install the extra: "
            f"{MJX_EXTRA}") from err


# --------------------------------------------------------------------- MJX backend
def mjx_rollout(
    task: str | TaskSpec,
    policy_fn: PolicyFn,
    state: Any,
    num_steps: int,
    key: jax.Array,
) -> tuple[Any, Trajectory]:
    """Pure-JAX rollout with MJX: ``(state, Trajectory [T, B, …])``.

    ``state`` is a batched :class:`prefrl.envs.mjx.EnvState` from
    ``prefrl.envs.mjx.reset(task, keys)``; ``policy_fn(obs [B, 17], key)`` must
    be traceable. ``lax.scan`` over steps, ``vmap`` over environments; wrap in
    ``jax.jit`` (``task``, ``policy_fn`` and ``num_steps`` static) to compile
    once. Auto-resets follow the CPU backend's contract.
    """
    from prefrl.envs import mjx as mjx_env

    spec = as_task(task)
    return mjx_env.rollout(spec, policy_fn, state, int(num_steps), key)
