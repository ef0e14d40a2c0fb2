"""The half-cheetah tasks in pure JAX on MJX (``mujoco.mjx``).

Pure functions over an explicit :class:`EnvState` for ONE environment
(``vmap`` for a batch), usable under ``jit``/``vmap``/``lax.scan``:

    model = make_model()                        # mjx.Model (device arrays); make_model(GPU):
                                                # capped solver (prefrl.envs.mjx_options)
    state = reset(model, task, key)             # s_0 with HalfCheetah-v5's reset noise
    state, out = step(model, task, state, a)    # one control step = 5 physics steps
    state, traj = rollout(task, policy_fn, batched_state, T, key, model)  # Trajectory [T, B, …]

Same physics, observation, reward and auto-reset contract as the CPU
backend (``prefrl.rollout.BatchedEnv``): after ``episode_length`` steps
``truncated`` is True, ``next_obs`` is the true final state and the state
carried forward is a fresh reset. MJX runs in float32 unless x64 is enabled,
and its constraint solver differs from MuJoCo C's in implementation details,
so trajectories agree with the CPU backend only to a tolerance (see
``tests/test_rollout.py``). Reset noise is drawn with JAX keys, so resets do
not reproduce the CPU backend's numpy draws; :func:`from_state` starts from a
given physics state instead.

On CPU this backend is slow (~1k env-steps/s); it exists for GPUs. Importing
``mujoco.mjx`` may print harmless "Failed to import warp" lines.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import mujoco
from mujoco import mjx
from prefrl.envs.mjx_options import SolverOptions
from prefrl.envs.tasks import TaskSpec, as_task, load_model

from prefrl.types import Trajectory


def _mjx_numpy_rules() -> Any:
    # MJX relies on NumPy rank promotion internally; callers (and prefrl's tests)
    # may set jax_numpy_rank_promotion="raise", so allow it inside MJX calls only.
    return jax.numpy_rank_promotion("allow")


class EnvState(NamedTuple):
    """One environment (add a leading axis for a batch).

    ``data``: MJX physics state; ``steps``: steps taken in the current episode
    (int32 []); ``key``: the PRNG key its next reset will use.
    """

    data: mjx.Data
    steps: jax.Array
    key: jax.Array


@functools.lru_cache(maxsize=1)
def _mj_model() -> mujoco.MjModel:
    return load_model()


def make_model(solver: SolverOptions | None = None) -> mjx.Model:
    """Gymnasium's half_cheetah.xml as an ``mjx.Model``.

    ``solver=None`` keeps MuJoCo C's solver options; :data:`prefrl.envs.mjx_options.GPU`
    caps the solver for batched accelerator runs (see :mod:`prefrl.envs.mjx_options`).
    """
    mj_model = _mj_model() if solver is None else solver.apply(_mj_model())
    return mjx.put_model(mj_model)


def observation(qpos: jax.Array, qvel: jax.Array) -> jax.Array:
    """``[..., 9], [..., 9] -> [..., 17]``: ``(qpos[1:], qvel)``."""
    return jnp.concatenate([qpos[..., 1:], qvel], axis=-1)


def from_state(
    model: mjx.Model, qpos: jax.Array, qvel: jax.Array, key: jax.Array, forward: bool = True
) -> EnvState:
    """An :class:`EnvState` at physics state ``(qpos [9], qvel [9])``, episode step 0.

    ``forward=False`` skips ``mjx.forward`` (derived quantities such as body
    positions stay unset until the first step, which recomputes them; stepping
    is unaffected) — it saves compiling ``mjx.forward`` when only stepping is needed.
    """
    data = mjx.make_data(model)
    data = data.replace(
        qpos=jnp.asarray(qpos, data.qpos.dtype), qvel=jnp.asarray(qvel, data.qvel.dtype)
    )
    if forward:
        with _mjx_numpy_rules():
            data = mjx.forward(model, data)
    return EnvState(data=data, steps=jnp.zeros((), jnp.int32), key=key)


def _reset_qpos_qvel(
    model: mjx.Model, spec: TaskSpec, key: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    key, k_pos, k_vel = jax.random.split(key, 3)
    c = spec.reset_noise_scale
    qpos0 = jnp.asarray(_mj_model().qpos0, jnp.float32)
    qpos = qpos0 + jax.random.uniform(k_pos, qpos0.shape, minval=-c, maxval=c)
    qvel = c * jax.random.normal(k_vel, (model.nv,))
    return qpos, qvel, key


def reset(model: mjx.Model, task: str | TaskSpec, key: jax.Array, forward: bool = True
          ) -> EnvState:
    """HalfCheetah-v5's reset: ``qpos = qpos0 + U(−c, c)``, ``qvel = c·N(0, 1)``, c = 0.1.

    ``forward=False`` as in :func:`from_state` (enough for stepping, and one compile less).
    """
    qpos, qvel, key = _reset_qpos_qvel(model, as_task(task), key)
    return from_state(model, qpos, qvel, key, forward=forward)


def _auto_reset(model: mjx.Model, spec: TaskSpec, state: EnvState, data: mjx.Data) -> EnvState:
    # The reset state without mjx.forward: the next mjx.step recomputes every
    # derived quantity from (qpos, qvel) anyway, and skipping forward here
    # roughly halves compile time. Like mj_resetData, zero time, controls and
    # the solver warm-start.
    qpos, qvel, key = _reset_qpos_qvel(model, spec, state.key)
    data = data.replace(
        qpos=qpos.astype(data.qpos.dtype),
        qvel=qvel.astype(data.qvel.dtype),
        time=jnp.zeros_like(data.time),
        ctrl=jnp.zeros_like(data.ctrl),
        qacc_warmstart=jnp.zeros_like(data.qacc_warmstart),
    )
    return EnvState(data=data, steps=jnp.zeros_like(state.steps), key=key)


def step(
    model: mjx.Model, task: str | TaskSpec, state: EnvState, action: jax.Array
) -> tuple[EnvState, dict[str, jax.Array]]:
    """One control step (``frame_skip`` physics steps with ``ctrl = clip(action)``).

    Returns the next state (a fresh reset if the episode just reached its
    length) and this step's Trajectory fields (unbatched). Action values cannot
    be checked under jit (a NaN action propagates); the CPU backend checks them.
    """
    spec = as_task(task)
    a = jnp.clip(action, -1.0, 1.0)
    data0 = state.data
    data = data0.replace(ctrl=a.astype(data0.ctrl.dtype))
    with _mjx_numpy_rules():
        data = jax.lax.fori_loop(0, spec.frame_skip, lambda _, d: mjx.step(model, d), data)
    x_velocity = (data.qpos[0] - data0.qpos[0]) / spec.dt
    steps = state.steps + 1
    truncated = steps >= spec.episode_length
    # The reset is computed every step and selected: under vmap a cond becomes a select anyway.
    carried = EnvState(data=data, steps=steps, key=state.key)
    fresh = _auto_reset(model, spec, carried, data)
    next_state = jax.tree.map(lambda r, c: jnp.where(truncated, r, c), fresh, carried)
    out = {
        "obs": observation(data0.qpos, data0.qvel),
        "action": a,
        "reward": spec.reward(x_velocity, a),
        "next_obs": observation(data.qpos, data.qvel),
        "terminated": jnp.zeros((), bool),
        "truncated": truncated,
        "x_velocity": x_velocity,
        "qpos": data0.qpos,
        "qvel": data0.qvel,
    }
    return next_state, out


def rollout(
    task: str | TaskSpec,
    policy_fn: Callable[[jax.Array, jax.Array], jax.Array],
    state: EnvState,
    num_steps: int,
    key: jax.Array,
    model: mjx.Model | None = None,
) -> tuple[EnvState, Trajectory]:
    """``lax.scan`` of ``num_steps`` batched steps: ``(state, Trajectory [T, B, …])``.

    ``state`` is batched (leading axis B, e.g. from :func:`reset_batch`);
    ``policy_fn(obs [B, 17], key_t) -> action [B, 6]`` is traced, with
    ``key_t = fold_in(key, t)``. Jit it with ``task``/``policy_fn``/``num_steps`` static.
    """
    spec = as_task(task)
    mx = make_model() if model is None else model
    # The spec is static Python (not a pytree), so it is closed over rather than vmapped.
    batched_step = jax.vmap(lambda m, s, a: step(m, spec, s, a), in_axes=(None, 0, 0))

    def body(carry: EnvState, t: jax.Array) -> tuple[EnvState, dict[str, jax.Array]]:
        obs = observation(carry.data.qpos, carry.data.qvel)
        action = policy_fn(obs, jax.random.fold_in(key, t))
        return batched_step(mx, carry, action)

    state, out = jax.lax.scan(body, state, jnp.arange(num_steps))
    return state, Trajectory(**out)


def reset_batch(model: mjx.Model, task: str | TaskSpec, key: jax.Array, num_envs: int,
                forward: bool = True) -> EnvState:
    """``num_envs`` independent resets (leading axis B); ``forward`` as in :func:`reset`."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    spec = as_task(task)
    keys = jax.random.split(key, num_envs)
    return jax.vmap(lambda m, k: reset(m, spec, k, forward), in_axes=(None, 0))(model, keys)


__all__ = [
    "EnvState",
    "from_state",
    "make_model",
    "observation",
    "reset",
    "reset_batch",
    "rollout",
    "step",
]
