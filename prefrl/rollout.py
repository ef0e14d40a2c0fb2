"""Batched rollouts of the half-cheetah tasks on either backend (DESIGN §5).

CPU backend — :class:`BatchedEnv`: ``B`` environments, each a persistent
``mujoco.MjData`` stepped by MuJoCo's C engine (``mj_step`` with ``nstep = 5``,
exactly Gymnasium HalfCheetah-v5's ``do_simulation``, solver warm-start
included), split into one contiguous chunk per thread (``mj_step`` releases the
GIL). The policy is one jitted call per control step for the whole batch.
Because each environment keeps its own ``MjData`` and its own reset generator,
the batched rollout reproduces Gymnasium's HalfCheetah-v5 bit for bit.
(``mujoco.rollout`` with ``nstep = 5`` per control step was the alternative:
its state vector omits the solver warm-start, so every control step would
restart the solver cold and drift from Gymnasium (measured: max |Δqpos| 9e-9
after 50 steps, 0.76 after 200 on random actions). ``prefrl bench rollout``
compares this stepper with open-loop ``mujoco.rollout``.)

MJX backend — :func:`mjx_rollout`: the same tasks in pure JAX
(``prefrl.envs.mjx``), ``jit`` + ``vmap`` + ``lax.scan`` end to end, for GPUs.

Both return the same time-major :class:`prefrl.types.Trajectory` ``[T, B, …]``,
so nothing downstream knows which backend ran.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import mujoco
import numpy as np

from prefrl import policies
from prefrl.envs.tasks import TaskSpec, as_task, model_path
from prefrl.policies import PolicyFn
from prefrl.types import Trajectory


def reset_rng(seed: int, index: int) -> np.random.Generator:
    """The reset-noise generator of environment ``index`` in a ``BatchedEnv(seed=seed)``.

    ``SeedSequence(seed).spawn`` children: independent streams for every
    ``(seed, index)`` — unlike ``seed + index``, two seeds never share an
    environment's stream. Assign it to a Gymnasium env's ``np_random`` to make
    that env reset exactly like environment ``index``.
    """
    child = np.random.SeedSequence(entropy=seed, spawn_key=(index,))
    return np.random.Generator(np.random.PCG64(child))


def observation(qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
    """``[..., nq], [..., nv] -> [..., 17]``: HalfCheetah-v5's ``(qpos[1:], qvel)``."""
    return np.concatenate([qpos[..., 1:], qvel], axis=-1)


_KEY_BLOCK = 256


@jax.jit
def _key_block(key: jax.Array, block: int) -> jax.Array:
    # Step keys come in fixed-size blocks, key_t = split(fold_in(key, t // 256), 256)[t % 256],
    # so one compiled function serves every num_steps (splitting into T keys directly
    # recompiles for each new T, which costs seconds on a loaded CPU).
    return jax.random.split(jax.random.fold_in(key, block), _KEY_BLOCK)


class BatchedEnv:
    """``num_envs`` half-cheetah environments stepped together on all CPU cores.

    Args:
      task: a task name (default parameters) or a :class:`prefrl.envs.TaskSpec`.
      num_envs: B ≥ 1.
      seed: seeds the per-environment reset generators (:func:`reset_rng`).
      num_threads: physics threads (default: CPU count, at most B).
      dtype: dtype of the float leaves of returned trajectories; float64 (the
        default) keeps MuJoCo's numbers exactly, float32 halves memory.

    ``rollout`` continues from the current state and auto-resets each
    environment after ``task.episode_length`` steps; the state persists
    across calls. Call :meth:`close` (or use ``with``) to stop the threads.
    """

    def __init__(
        self,
        task: str | TaskSpec,
        num_envs: int,
        seed: int = 0,
        num_threads: int | None = None,
        dtype: Any = np.float64,
    ) -> None:
        self.task = as_task(task)
        if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer):
            raise ValueError(f"num_envs must be an int, got {num_envs!r}")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if num_threads is None:
            num_threads = os.cpu_count() or 1
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.num_envs = int(num_envs)
        self.num_threads = min(int(num_threads), self.num_envs)
        self.seed = int(seed)

        self.model = mujoco.MjModel.from_xml_path(model_path())
        m = self.model
        if m.nu != self.task.act_dim or m.nq + m.nv - 1 != self.task.obs_dim:
            raise ValueError("half_cheetah.xml does not match the task's obs/act dimensions")
        self._frame_skip = self.task.frame_skip
        # Gymnasium's dt: model timestep × frame skip (same float expression).
        self.dt = m.opt.timestep * self._frame_skip
        self._init_qpos = m.qpos0.copy()
        self._init_qvel = np.zeros(m.nv)
        self.action_low = m.actuator_ctrlrange[:, 0].copy()
        self.action_high = m.actuator_ctrlrange[:, 1].copy()

        self._datas = [mujoco.MjData(m) for _ in range(self.num_envs)]
        # Cached array views into each MjData: re-creating them per step costs
        # more Python time (under the GIL) than the bookkeeping itself.
        self._views = [(d.ctrl, d.qpos, d.qvel) for d in self._datas]
        self._rngs = [reset_rng(self.seed, i) for i in range(self.num_envs)]
        B = self.num_envs
        self._qpos = np.zeros((B, m.nq))  # s_t of every env
        self._qvel = np.zeros((B, m.nv))
        self._next_qpos = np.zeros((B, m.nq))  # s_{t+1} before any reset
        self._next_qvel = np.zeros((B, m.nv))
        self._steps = np.zeros(B, np.int64)  # steps taken in the current episode
        self._is_reset = False

        bounds = np.linspace(0, B, self.num_threads + 1).astype(int)
        self._chunks = [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        self._pool: ThreadPoolExecutor | None = None
        if self.num_threads > 1:
            # Chunk 0 runs on the calling thread, so the pool needs one thread fewer.
            self._pool = ThreadPoolExecutor(
                max_workers=self.num_threads - 1, thread_name_prefix="prefrl-physics"
            )
            self._finalizer = weakref.finalize(self, self._pool.shutdown, wait=False)

    # ------------------------------------------------------------------ state
    @property
    def obs(self) -> np.ndarray:
        """``[B, 17]`` current observations (resets first if never reset)."""
        self._ensure_reset()
        return observation(self._qpos, self._qvel).astype(self.dtype)

    @property
    def obs_dim(self) -> int:
        return self.task.obs_dim

    @property
    def act_dim(self) -> int:
        return self.task.act_dim

    @property
    def episode_steps(self) -> np.ndarray:
        """``[B]`` steps taken so far in each environment's current episode."""
        return self._steps.copy()

    def _reset_one(self, i: int) -> None:
        # Gymnasium MujocoEnv.reset + HalfCheetahEnv.reset_model, same draws in the same order.
        m, d, rng = self.model, self._datas[i], self._rngs[i]
        scale = self.task.reset_noise_scale
        mujoco.mj_resetData(m, d)
        qpos = self._init_qpos + rng.uniform(low=-scale, high=scale, size=m.nq)
        qvel = self._init_qvel + scale * rng.standard_normal(m.nv)
        d.qpos[:] = qpos
        d.qvel[:] = qvel
        mujoco.mj_forward(m, d)
        self._qpos[i] = d.qpos
        self._qvel[i] = d.qvel
        self._steps[i] = 0

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Reset every environment; returns ``[B, 17]`` observations.

        With ``seed`` the reset generators restart from that seed (so
        ``reset(seed=s)`` always gives the same states); without it they
        continue their streams (the first ``reset()`` of a new env uses the
        constructor's seed).
        """
        if seed is not None:
            self.seed = int(seed)
            self._rngs = [reset_rng(self.seed, i) for i in range(self.num_envs)]
        for i in range(self.num_envs):
            self._reset_one(i)
        self._is_reset = True
        return self.obs

    def _ensure_reset(self) -> None:
        if not self._is_reset:
            self.reset()

    def get_state(self) -> dict[str, np.ndarray]:
        """Copy of the physics state ``{"qpos": [B, nq], "qvel": [B, nv], "steps": [B]}``."""
        self._ensure_reset()
        return {"qpos": self._qpos.copy(), "qvel": self._qvel.copy(), "steps": self._steps.copy()}

    def set_state(self, qpos: Any, qvel: Any, steps: Any = None) -> np.ndarray:
        """Restart every environment from a stored physics state; returns ``[B, 17]`` obs.

        ``qpos [B, nq]``, ``qvel [B, nv]`` (e.g. ``Segments.qpos[:, 0]``, the
        full state of a segment's s_0, root x included); ``steps [B]`` the
        episode steps already taken there (default 0), so the time limit still
        truncates at ``task.episode_length``. The solver warm-start is not part
        of a stored state and restarts cold (measured: obs drift 5e-12 after 60 steps).
        """
        m, B = self.model, self.num_envs
        qpos, qvel = np.asarray(qpos, np.float64), np.asarray(qvel, np.float64)
        if qpos.shape != (B, m.nq) or qvel.shape != (B, m.nv):
            raise ValueError(f"qpos/qvel must be [B, nq] = {(B, m.nq)} and [B, nv] = "
                             f"{(B, m.nv)}, got {qpos.shape} and {qvel.shape}")
        if not (np.isfinite(qpos).all() and np.isfinite(qvel).all()):
            raise ValueError("qpos/qvel contain non-finite values")
        steps = np.zeros(B, np.int64) if steps is None else np.asarray(steps, np.int64)
        if steps.shape != (B,) or (steps < 0).any() or (steps >= self.task.episode_length).any():
            raise ValueError(f"steps must be [B] = ({B},) in [0, {self.task.episode_length}), "
                             f"got {steps}")
        for i, d in enumerate(self._datas):
            mujoco.mj_resetData(m, d)
            d.qpos[:] = qpos[i]
            d.qvel[:] = qvel[i]
            mujoco.mj_forward(m, d)
            self._qpos[i] = d.qpos
            self._qvel[i] = d.qvel
        self._steps = steps.copy()
        self._is_reset = True
        return self.obs

    # ----------------------------------------------------------------- stepping
    def _physics_chunk(self, lo: int, hi: int, ctrl: np.ndarray, resets: frozenset[int]) -> None:
        # Per-env Python work runs under the GIL, so it is kept to the minimum;
        # the bookkeeping of the whole batch is vectorised in _physics.
        m, nstep, datas, views = self.model, self._frame_skip, self._datas, self._views
        next_qpos, next_qvel = self._next_qpos, self._next_qvel
        for i in range(lo, hi):
            d_ctrl, d_qpos, d_qvel = views[i]
            d_ctrl[:] = ctrl[i]
            mujoco.mj_step(m, datas[i], nstep=nstep)
            next_qpos[i] = d_qpos
            next_qvel[i] = d_qvel
            if i in resets:
                self._reset_one(i)  # only this env; the others keep stepping

    def _physics(self, ctrl: np.ndarray) -> None:
        steps = self._steps + 1
        done = steps >= self.task.episode_length
        resets = frozenset(np.flatnonzero(done).tolist())
        if self._pool is None:
            self._physics_chunk(0, self.num_envs, ctrl, resets)
        else:
            futures = [
                self._pool.submit(self._physics_chunk, lo, hi, ctrl, resets)
                for lo, hi in self._chunks[1:]
            ]
            self._physics_chunk(*self._chunks[0], ctrl, resets)
            for f in futures:
                f.result()
        # s_{t+1} becomes the current state, except where _reset_one already wrote a reset state.
        keep = ~done[:, None]
        np.copyto(self._qpos, self._next_qpos, where=keep)
        np.copyto(self._qvel, self._next_qvel, where=keep)
        self._steps = np.where(done, 0, steps)

    def validate_action(self, action: Any) -> np.ndarray:
        """``[B, act]`` -> float64 actions clipped to the box; ValueError on bad shape/values."""
        a = np.asarray(action, dtype=np.float64)
        expected = (self.num_envs, self.task.act_dim)
        if a.shape != expected:
            raise ValueError(f"action has shape {a.shape}, expected {expected} (num_envs, act_dim)")
        if not np.isfinite(a).all():
            bad = np.argwhere(~np.isfinite(a))[0]
            raise ValueError(
                f"action contains non-finite values (first at env {bad[0]}, dim {bad[1]}: "
                f"{a[bad[0], bad[1]]})"
            )
        return np.clip(a, self.action_low, self.action_high)

    def step(self, action: Any) -> dict[str, np.ndarray]:
        """One control step for all envs with ``action [B, act]`` (validated, clipped).

        Returns a dict of ``[B, …]`` arrays with the Trajectory fields for this step.
        """
        self._ensure_reset()
        a = self.validate_action(action)
        qpos, qvel = self._qpos.copy(), self._qvel.copy()
        self._physics(a)
        truncated = self._steps == 0  # just reset after reaching the limit
        x_velocity = (self._next_qpos[:, 0] - qpos[:, 0]) / self.dt
        return {
            "obs": observation(qpos, qvel),
            "action": a,
            "reward": self.task.reward(x_velocity, a),
            "next_obs": observation(self._next_qpos, self._next_qvel),
            "terminated": np.zeros(self.num_envs, bool),
            "truncated": truncated,
            "x_velocity": x_velocity,
            "qpos": qpos,
            "qvel": qvel,
        }

    def rollout(self, policy_fn: PolicyFn, num_steps: int, key: jax.Array) -> Trajectory:
        """Run ``num_steps`` control steps from the current state; ``Trajectory [T, B, …]``.

        ``policy_fn(obs [B, 17] float32 numpy, key) -> action [B, act]`` is
        called once per step with its own key ``key_t`` (derived from ``key`` and t
        only, see ``_key_block``). Actions are
        validated (shape, finite; else ValueError) and clipped to the box;
        the trajectory records the clipped actions. An environment reaching
        the episode length gets ``truncated = True`` at that step, its true
        final state in ``next_obs`` and a fresh reset state in the next row's
        ``obs``; the other environments are unaffected.
        """
        if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
            raise ValueError(f"num_steps must be an int, got {num_steps!r}")
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self._ensure_reset()
        T, B, m = int(num_steps), self.num_envs, self.model
        obs_dim, act_dim, f = self.task.obs_dim, self.task.act_dim, self.dtype
        out = {
            "obs": np.empty((T, B, obs_dim), f),
            "action": np.empty((T, B, act_dim), f),
            "reward": np.empty((T, B), f),
            "next_obs": np.empty((T, B, obs_dim), f),
            "terminated": np.zeros((T, B), bool),
            "truncated": np.zeros((T, B), bool),
            "x_velocity": np.empty((T, B), f),
            "qpos": np.empty((T, B, m.nq), f),
            "qvel": np.empty((T, B, m.nv), f),
        }
        keys: list[jax.Array] = []
        for t in range(T):
            if t % _KEY_BLOCK == 0:
                keys = list(_key_block(key, t // _KEY_BLOCK))
            obs32 = observation(self._qpos, self._qvel).astype(np.float32)
            action = policy_fn(obs32, keys[t % _KEY_BLOCK])
            try:
                step = self.step(action)
            except ValueError as err:
                raise ValueError(f"policy at step {t}: {err}") from None
            for name, value in step.items():
                out[name][t] = value
        return Trajectory(**out)

    # ---------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Stop the physics threads (idempotent)."""
        if self._pool is not None:
            self._finalizer()
            self._pool = None

    def __enter__(self) -> BatchedEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"BatchedEnv(task={self.task.name!r}, num_envs={self.num_envs}, seed={self.seed}, "
            f"num_threads={self.num_threads})"
        )


# --------------------------------------------------------------------- policies
def policy_from_params(
    apply_fn: Callable[..., Any], params: Any, deterministic: bool = False
) -> PolicyFn:
    """A ``policy_fn(obs, key) -> action`` for a tanh-Gaussian policy network.

    ``apply_fn(params, obs) -> (mean, log_std)`` (e.g. ``GaussianPolicy(...).apply``);
    samples ``tanh(N(mean, σ))``, or ``tanh(mean)`` when ``deterministic``.
    The same as :func:`prefrl.policies.policy_fn` of ``Policy(apply_fn, params)``.
    """
    return policies.policy_fn(policies.Policy(apply_fn, params), deterministic=deterministic)


random_policy = policies.random_policy


# --------------------------------------------------------------------- evaluation
def evaluate_policy(
    env: Any,
    policy_fn: PolicyFn,
    key: jax.Array,
    *,
    target_speed: float | None = None,
    discount: float | None = None,
    num_steps: int | None = None,
) -> dict[str, Any]:
    """The project's one evaluator: one episode in each of ``env``'s B environments.

    Resets ``env``, runs ``num_steps`` (default: the task's episode length)
    and returns ``mean_return``/``std_return``/``returns`` (undiscounted sum of
    the task reward per environment), ``episodes``, ``episode_length``,
    ``mean_speed`` (mean v_x) and, with ``target_speed``, ``mean_speed_error``
    (mean |v_x − v*| over all steps); with ``discount``,
    ``mean_discounted_return`` from the initial states. Raises ``ValueError``
    on a non-finite reward.
    """
    env.reset()
    length = int(num_steps) if num_steps is not None else episode_length_of(env)
    traj = env.rollout(policy_fn, length, key)
    reward = np.asarray(traj.reward, np.float64)
    if not np.all(np.isfinite(reward)):
        t, b = np.argwhere(~np.isfinite(reward))[0][:2]
        raise ValueError(f"non-finite evaluation reward (first at step {t}, env {b})")
    returns = reward.sum(axis=0)
    speed = np.asarray(traj.x_velocity, np.float64)
    out: dict[str, Any] = {
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "returns": [float(r) for r in returns],
        "episodes": int(returns.shape[0]),
        "episode_length": length,
        "mean_speed": float(np.mean(speed)),
    }
    if target_speed is not None:
        out["mean_speed_error"] = float(np.mean(np.abs(speed - target_speed)))
    if discount is not None:
        weights = discount ** np.arange(length)
        out["mean_discounted_return"] = float((weights[:, None] * reward).sum(0).mean())
    return out


def evaluate_on_task(
    task: str | TaskSpec,
    policy_fn: PolicyFn,
    *,
    episodes: int,
    seed: int,
    num_steps: int | None = None,
    num_threads: int | None = None,
    discount: float | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_policy` on fresh environments of ``task`` seeded by ``seed``.

    The environments' resets and the policy's key both derive from ``seed``,
    so two policies evaluated with the same seed meet the same start states.
    """
    spec = as_task(task)
    with BatchedEnv(spec, num_envs=int(episodes), seed=int(seed), num_threads=num_threads,
                    dtype=np.float32) as env:
        return evaluate_policy(env, policy_fn, jax.random.key(int(seed)),
                               target_speed=spec.params_dict.get("target_speed"),
                               discount=discount, num_steps=num_steps)


def episode_length_of(env: Any) -> int:
    """The episode length of a ``BatchedEnv`` (or any env with ``task.episode_length``)."""
    if hasattr(env, "episode_length"):
        return int(env.episode_length)
    return int(env.task.episode_length)


def stack_trajectories(trajs: list[Trajectory], axis: int = 0) -> Trajectory:
    """Concatenate trajectories along time (``axis=0``) or batch (``axis=1``)."""
    if not trajs:
        raise ValueError("no trajectories to concatenate")
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=axis), *trajs)


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


__all__ = [
    "BatchedEnv",
    "evaluate_on_task",
    "evaluate_policy",
    "mjx_rollout",
    "observation",
    "policy_from_params",
    "random_policy",
    "reset_rng",
    "stack_trajectories",
]
