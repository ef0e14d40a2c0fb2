"""The C-engine backend: :class:`BatchedEnv`, B environments as one ``mujoco.batch.Batch``.

Why this design and what it measured: :mod:`prefrl.rollout`'s docstring.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import mujoco
import numpy as np
from mujoco import batch as mj_batch

from prefrl.envs.tasks import TaskSpec, as_task, load_model
from prefrl.policies import Actor, PolicyFn
from prefrl.rollout.step_keys import KEY_BLOCK, key_block, noise_block
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


# The components of MuJoCo's mjSTATE_INTEGRATION state row, in row order (mjtState bits),
# named as the MjData fields. Together they are everything mj_step reads from one step to
# the next (the solver warm-start qacc_warmstart included), so saving and restoring them
# continues a simulation bit for bit.
_STATE_FIELDS = ("time", "qpos", "qvel", "act", "history", "qacc_warmstart", "ctrl",
                 "qfrc_applied", "xfrc_applied", "eq_active", "mocap_pos", "mocap_quat",
                 "userdata", "plugin_state", "plastic")
_STATE_DICT_VERSION = 1
_MASK64 = (1 << 64) - 1


def _split128(value: int) -> tuple[int, int]:
    return value >> 64, value & _MASK64


class BatchedEnv:
    """``num_envs`` half-cheetah environments stepped together on all CPU cores.

    Args:
      task: a task name (default parameters) or a :class:`prefrl.envs.TaskSpec`.
      num_envs: B ≥ 1.
      seed: seeds the per-environment reset generators (:func:`reset_rng`). A
        sequence of S seeds splits the B environments into S equal blocks,
        block s resetting exactly like ``BatchedEnv(num_envs=B // S, seed=seeds[s])``:
        several training seeds in one batch (:mod:`prefrl.loops.ppo_seeds`).
      num_threads: physics threads (default: CPU count, at most B).
      dtype: dtype of the float leaves of returned trajectories; float64 (the
        default) keeps MuJoCo's numbers exactly, float32 halves memory.

    ``rollout`` continues from the current state and auto-resets each
    environment after ``task.episode_length`` steps; the state persists
    across calls. :meth:`state_dict` / :meth:`load_state_dict` save and restore
    that state exactly (physics, solver warm-start, episode steps, reset
    generators). Call :meth:`close` (or use ``with``) to stop the threads.
    """

    def __init__(
        self,
        task: str | TaskSpec,
        num_envs: int,
        seed: int | Sequence[int] = 0,
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
        seeds = (seed,) if isinstance(seed, int | np.integer) else tuple(seed)
        if not seeds or self.num_envs % len(seeds):
            raise ValueError(f"num_envs = {self.num_envs} must split into equal blocks, one "
                             f"per seed; got {len(seeds)} seeds")
        self.seeds = tuple(int(x) for x in seeds)
        self.seed = self.seeds[0]

        self.model = load_model()
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
        # qpos and qvel are adjacent in a state row (after time), so (qpos, qvel) and
        # the observation (qpos[1:], qvel) are each one slice of the rows.
        self._qpos_at = mujoco.mj_stateSize(m, mujoco.mjtState.mjSTATE_TIME)

        self._bind(self._new_batch(self.num_threads))
        self._rngs = self._reset_rngs()
        self._steps = np.zeros(self.num_envs, np.int64)  # steps taken in the current episode
        self._is_reset = False

    def _reset_rngs(self) -> list[np.random.Generator]:
        block = self.num_envs // len(self.seeds)
        return [reset_rng(self.seeds[i // block], i % block) for i in range(self.num_envs)]

    def _new_batch(self, num_threads: int) -> mj_batch.Batch:
        # Not persistent: one MjData per thread, each step loads an env's state row and
        # saves it back. persistent=True (one MjData per env) measured no faster here,
        # and results are bit-identical either way.
        return mj_batch.Batch(self.model, self.num_envs, nthread=num_threads)

    def _bind(self, batch: mj_batch.Batch) -> None:
        # Live [B, …] views of the batch's state rows: writes are the next call's state.
        self._batch = batch
        nq, nv, lo = self.model.nq, self.model.nv, self._qpos_at
        self._rows = batch.state  # [B, nstate] mjSTATE_INTEGRATION rows
        self._ctrl = batch.bind("ctrl")
        self._qpos_view = batch.bind("qpos")
        self._qvel_view = batch.bind("qvel")
        self._qposvel = self._rows[:, lo : lo + nq + nv]  # [B, nq + nv]
        self._obs_view = self._rows[:, lo + 1 : lo + nq + nv]  # [B, 17] = (qpos[1:], qvel)
        if not (
            np.shares_memory(self._qposvel[:, :nq], self._qpos_view)
            and np.shares_memory(self._qposvel[:, nq:], self._qvel_view)
        ):
            raise RuntimeError("unexpected MuJoCo state layout: qpos, qvel not adjacent")

    # ------------------------------------------------------------------ state
    @property
    def obs(self) -> np.ndarray:
        """``[B, 17]`` current observations (resets first if never reset)."""
        self._ensure_reset()
        return self._obs_view.astype(self.dtype)

    @property
    def obs_dim(self) -> int:
        return self.task.obs_dim

    @property
    def act_dim(self) -> int:
        return self.task.act_dim

    @property
    def nq(self) -> int:
        """Length of ``qpos`` (the trajectories' physics state; includes the root x)."""
        return int(self.model.nq)

    @property
    def nv(self) -> int:
        """Length of ``qvel``."""
        return int(self.model.nv)

    @property
    def episode_steps(self) -> np.ndarray:
        """``[B]`` steps taken so far in each environment's current episode."""
        return self._steps.copy()

    def _reset_envs(self, ids: np.ndarray | None) -> None:
        # Gymnasium MujocoEnv.reset + HalfCheetahEnv.reset_model, same draws in the same
        # order from each env's own generator (Python per *reset* env: once per episode).
        m, scale = self.model, self.task.reset_noise_scale
        index = range(self.num_envs) if ids is None else ids.tolist()
        qpos = np.empty((len(index), m.nq))
        qvel = np.empty((len(index), m.nv))
        for j, i in enumerate(index):
            rng = self._rngs[i]
            qpos[j] = self._init_qpos + rng.uniform(low=-scale, high=scale, size=m.nq)
            qvel[j] = self._init_qvel + scale * rng.standard_normal(m.nv)
        sel = slice(None) if ids is None else ids
        # mj_resetData, write (qpos, qvel), mj_forward: as MujocoEnv.set_state.
        self._batch.reset(ids, stage=mujoco.mjtStage.mjSTAGE_NONE)
        self._qpos_view[sel] = qpos
        self._qvel_view[sel] = qvel
        self._batch.forward(ids)
        self._steps[sel] = 0

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Reset every environment; returns ``[B, 17]`` observations.

        With ``seed`` the reset generators restart from that seed (so
        ``reset(seed=s)`` always gives the same states); without it they
        continue their streams (the first ``reset()`` of a new env uses the
        constructor's seed).
        """
        if seed is not None:
            self.seed = int(seed)
            self.seeds = (self.seed,)
            self._rngs = self._reset_rngs()
        self._reset_envs(None)
        self._is_reset = True
        return self.obs

    def _ensure_reset(self) -> None:
        if not self._is_reset:
            self.reset()

    def get_state(self) -> dict[str, np.ndarray]:
        """Copy of the physics state ``{"qpos": [B, nq], "qvel": [B, nv], "steps": [B]}``."""
        self._ensure_reset()
        return {
            "qpos": self._qpos_view.copy(),
            "qvel": self._qvel_view.copy(),
            "steps": self._steps.copy(),
        }

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to continue bit for bit, as numpy arrays (``np.savez``-able).

        Keys: the MuJoCo state row of every environment by MjData field
        (``time [B]``, ``qpos [B, nq]``, ``qvel [B, nv]``, ``act``, the solver
        warm-start ``qacc_warmstart [B, nv]``, ``ctrl``, … — all of
        ``mjSTATE_INTEGRATION``); ``episode_steps [B]``; each environment's
        reset generator (PCG64) as ``rng_state [B, 2]`` and ``rng_inc [B, 2]``
        (128-bit integers as uint64 ``(high, low)``), ``rng_has_uint32 [B]``,
        ``rng_uinteger [B]``; ``seed`` and ``version`` (scalars). Resets first
        if the env was never reset. Restore with :meth:`load_state_dict` on an
        env of the same task and ``num_envs`` (any thread count or dtype).
        """
        self._ensure_reset()
        out: dict[str, np.ndarray] = {"version": np.array(_STATE_DICT_VERSION, np.int64)}
        size = 0
        for name in _STATE_FIELDS:
            view = self._batch.bind(name)
            out[name] = view.copy()
            size += view[0].size
        if size != self._rows.shape[1]:  # a MuJoCo with state components unknown here
            raise RuntimeError(
                f"MuJoCo's state row has {self._rows.shape[1]} numbers, the named fields "
                f"{size}: update prefrl.rollout._STATE_FIELDS"
            )
        out["episode_steps"] = self._steps.copy()
        states = [rng.bit_generator.state for rng in self._rngs]
        if any(s["bit_generator"] != "PCG64" for s in states):
            raise RuntimeError("reset generators must be PCG64 (see reset_rng)")
        out["rng_state"] = np.array([_split128(s["state"]["state"]) for s in states], np.uint64)
        out["rng_inc"] = np.array([_split128(s["state"]["inc"]) for s in states], np.uint64)
        out["rng_has_uint32"] = np.array([s["has_uint32"] for s in states], np.int64)
        out["rng_uinteger"] = np.array([s["uinteger"] for s in states], np.uint64)
        out["seed"] = np.array(self.seed, np.int64)
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; stepping then continues bit for bit.

        ValueError if keys are missing or unexpected, or a shape does not
        match this env (e.g. another ``num_envs``).
        """
        B = self.num_envs
        expected = {
            "version": (),
            **{name: self._batch.bind(name).shape for name in _STATE_FIELDS},
            "episode_steps": (B,),
            "rng_state": (B, 2),
            "rng_inc": (B, 2),
            "rng_has_uint32": (B,),
            "rng_uinteger": (B,),
            "seed": (),
        }
        missing, extra = set(expected) - set(state), set(state) - set(expected)
        if missing or extra:
            raise ValueError(
                f"state_dict keys do not match: missing {sorted(missing)}, "
                f"unexpected {sorted(extra)}"
            )
        arrays = {name: np.asarray(state[name]) for name in expected}
        for name, shape in expected.items():
            if arrays[name].shape != shape:
                raise ValueError(
                    f"state_dict[{name!r}] has shape {arrays[name].shape}, expected {shape} "
                    f"(num_envs={B})"
                )
        if int(arrays["version"]) != _STATE_DICT_VERSION:
            raise ValueError(
                f"state_dict version {int(arrays['version'])}, expected {_STATE_DICT_VERSION}"
            )
        steps = arrays["episode_steps"]
        if not np.issubdtype(steps.dtype, np.integer) or (steps < 0).any():
            raise ValueError("state_dict['episode_steps'] must be non-negative integers")
        rngs = []
        for i in range(B):
            hi, lo = (int(x) for x in arrays["rng_state"][i])
            inc_hi, inc_lo = (int(x) for x in arrays["rng_inc"][i])
            bit_generator = np.random.PCG64(0)
            bit_generator.state = {
                "bit_generator": "PCG64",
                "state": {"state": (hi << 64) | lo, "inc": (inc_hi << 64) | inc_lo},
                "has_uint32": int(arrays["rng_has_uint32"][i]),
                "uinteger": int(arrays["rng_uinteger"][i]),
            }
            rngs.append(np.random.Generator(bit_generator))
        for name in _STATE_FIELDS:
            self._batch.bind(name)[...] = arrays[name]
        self._steps = steps.astype(np.int64)
        self._rngs = rngs
        if int(arrays["seed"]) != self.seed:
            self.seed = int(arrays["seed"])
            self.seeds = (self.seed,)
        self._is_reset = True

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
        # mj_resetData, write (qpos, qvel), mj_forward on every row: as _reset_envs.
        self._batch.reset(None, stage=mujoco.mjtStage.mjSTAGE_NONE)
        self._qpos_view[...] = qpos
        self._qvel_view[...] = qvel
        self._batch.forward(None)
        self._steps = steps.copy()
        self._is_reset = True
        return self.obs

    # ----------------------------------------------------------------- stepping
    def _advance(self, action: np.ndarray, next_qposvel: np.ndarray) -> np.ndarray | None:
        """Step every env with validated ``action [B, act]``; ``[B]`` done mask or None.

        Writes s_{t+1} (before any reset) to ``next_qposvel [B, nq + nv]``, then
        resets the envs that reached the episode length.
        """
        self._ctrl[...] = action
        # One call: every env through frame_skip mj_step substeps on the batch's threads.
        self._batch.step(nstep=self._frame_skip)
        next_qposvel[...] = self._qposvel
        steps = self._steps
        steps += 1
        if steps.max() < self.task.episode_length:
            return None
        done = steps >= self.task.episode_length
        self._reset_envs(np.flatnonzero(done))
        return done

    def _fields(
        self, s: np.ndarray, s_next: np.ndarray, action: np.ndarray, truncated: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Trajectory fields from ``[..., nq + nv]`` states s_t, s_{t+1} (vectorised)."""
        nq = self.model.nq
        x_velocity = (s_next[..., 0] - s[..., 0]) / self.dt
        return {
            "obs": s[..., 1:],
            "action": action,
            "reward": self.task.reward(x_velocity, action),
            "next_obs": s_next[..., 1:],
            "terminated": np.zeros(truncated.shape, bool),
            "truncated": truncated,
            "x_velocity": x_velocity,
            "qpos": s[..., :nq],
            "qvel": s[..., nq:],
        }

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

        Returns a dict of ``[B, …]`` float64 arrays with the Trajectory fields for this step.
        """
        self._ensure_reset()
        a = self.validate_action(action)
        s = self._qposvel.copy()
        s_next = np.empty_like(s)
        done = self._advance(a, s_next)
        truncated = np.zeros(self.num_envs, bool) if done is None else done
        fields = self._fields(s, s_next, a, truncated)
        return {k: np.ascontiguousarray(v) for k, v in fields.items()}

    def rollout(self, policy_fn: PolicyFn, num_steps: int, key: jax.Array) -> Trajectory:
        """Run ``num_steps`` control steps from the current state; ``Trajectory [T, B, …]``.

        ``policy_fn(obs [B, 17] float32 numpy, key) -> action [B, act]`` is
        called once per step with its own key ``key_t`` (derived from ``key`` and t
        only, see :func:`prefrl.rollout.step_keys.key_block`). Actions are
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
        # Per step only: the policy call, the action check, one physics call and two
        # [B, 18] copies; observations, rewards and velocities are computed for the
        # whole [T, B] block afterwards.
        s = np.empty((T, B, m.nq + m.nv))
        s_next = np.empty((T, B, m.nq + m.nv))
        actions = np.empty((T, B, self.task.act_dim))
        truncated = np.zeros((T, B), bool)
        qposvel, obs_view = self._qposvel, self._obs_view
        keys: tuple[jax.Array, ...] = ()
        # A stochastic Actor acts with pre-drawn noise: one call draws a block of steps'
        # noise, so the per-step call is the network alone (Actor's docstring: ~100 µs
        # less a step). Its actions equal actor(obs, key_t)'s.
        presample = isinstance(policy_fn, Actor) and not policy_fn.deterministic
        noise = np.empty(0)
        for t in range(T):
            if t % KEY_BLOCK == 0:
                if presample:  # this block's steps, rounded up to 32 (few compiled sizes)
                    steps = min(KEY_BLOCK, -(-(T - t) // 32) * 32)
                    per_seed = (B // policy_fn.num_seeds, self.task.act_dim)
                    noise = np.asarray(noise_block(key, t // KEY_BLOCK, steps, per_seed))
                else:
                    keys = key_block(key, t // KEY_BLOCK)
            if presample:
                action = policy_fn.act_with_noise(obs_view.astype(np.float32),
                                                  noise[t % KEY_BLOCK])
            else:
                action = policy_fn(obs_view.astype(np.float32), keys[t % KEY_BLOCK])
            s[t] = qposvel  # overlaps the policy where JAX dispatches asynchronously
            try:
                actions[t] = self.validate_action(action)
            except ValueError as err:
                raise ValueError(f"policy at step {t}: {err}") from None
            done = self._advance(actions[t], s_next[t])
            if done is not None:
                truncated[t] = done
        fields = self._fields(s, s_next, actions, truncated)
        return Trajectory(
            **{
                k: np.ascontiguousarray(v, dtype=self.dtype) if v.dtype.kind == "f" else v
                for k, v in fields.items()
            }
        )

    # ---------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Stop the physics threads (idempotent); the env stays usable on one thread."""
        if self._batch.nthread > 1:
            rows = self._rows.copy()
            self._bind(self._new_batch(1))
            self._rows[...] = rows

    def __enter__(self) -> BatchedEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"BatchedEnv(task={self.task.name!r}, num_envs={self.num_envs}, seed={self.seed}, "
            f"num_threads={self.num_threads})"
        )


__all__ = ["BatchedEnv", "observation", "reset_rng"]
