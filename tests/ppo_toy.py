"""A 1-D point mass in pure JAX, for PPO's learning tests (no MuJoCo).

State ``x``; action ``a ∈ [-1, 1]``; ``x' = x + 0.25 a``; reward ``−x'²``.
Episodes start at ``x ~ U(−2, 2)`` and are truncated after ``horizon`` steps
(a time limit: the observation ``[x, |x|]`` does not show time, so PPO must
bootstrap at truncation). The optimal policy drives ``x`` to 0.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from prefrl.types import Trajectory

OBS_DIM = 2
ACT_DIM = 1


def _obs(x: jax.Array, t: jax.Array, horizon: int) -> jax.Array:
    del t, horizon
    return jnp.stack([x, jnp.abs(x)], axis=-1)


def reset(key: jax.Array, num_envs: int) -> tuple[jax.Array, jax.Array]:
    x = jax.random.uniform(key, (num_envs,), minval=-2.0, maxval=2.0)
    return x, jnp.zeros((num_envs,), jnp.int32)


def rollout(
    policy: Callable[[jax.Array, jax.Array], jax.Array],
    env_state: tuple[jax.Array, jax.Array],
    key: jax.Array,
    num_steps: int,
    horizon: int = 10,
    nan_reward: bool = False,
) -> tuple[tuple[jax.Array, jax.Array], Trajectory]:
    """``policy(obs [B, 2], key) -> action [B, 1]``; returns the env state and a [T, B] rollout."""

    def step(carry, step_key):
        x, t = carry
        act_key, reset_key = jax.random.split(step_key)
        obs = _obs(x, t, horizon)
        action = jnp.clip(policy(obs, act_key), -1.0, 1.0)
        nx = x + 0.25 * action[:, 0]
        nt = t + 1
        reward = -(nx**2)
        if nan_reward:
            reward = reward * jnp.nan
        truncated = nt >= horizon
        next_obs = _obs(nx, nt, horizon)
        rx, rt = reset(reset_key, x.shape[0])
        x2 = jnp.where(truncated, rx, nx)
        t2 = jnp.where(truncated, rt, nt)
        zeros = jnp.zeros_like(x)
        traj = Trajectory(
            obs=obs,
            action=action,
            reward=reward,
            next_obs=next_obs,
            terminated=jnp.zeros_like(truncated),
            truncated=truncated,
            x_velocity=zeros,
            qpos=x[:, None],
            qvel=zeros[:, None],
        )
        return (x2, t2), traj

    return jax.lax.scan(step, env_state, jax.random.split(key, num_steps))


class PointMassBatchedEnv:
    """Host-side stand-in for ``prefrl.rollout.BatchedEnv`` on the point mass.

    Same interface: ``reset() -> obs [B, 2]`` and
    ``rollout(policy_fn, num_steps, key) -> Trajectory [T, B, …]`` with
    ``policy_fn(obs_np [B, 2], key) -> action [B, 1]`` called once per step;
    the environment state persists between rollouts.
    """

    obs_dim = OBS_DIM
    act_dim = ACT_DIM
    nq = nv = 1  # qpos = the position, qvel = 0 (a stand-in for the physics state)

    def __init__(self, num_envs: int, seed: int, horizon: int = 10, nan_reward: bool = False):
        import numpy as np

        self.num_envs = num_envs
        self.horizon = horizon
        self.nan_reward = nan_reward
        self._rng = np.random.default_rng(seed)
        self.reset()

    @property
    def episode_length(self) -> int:
        return self.horizon

    def reset(self):
        import numpy as np

        self._x = self._rng.uniform(-2.0, 2.0, self.num_envs).astype(np.float32)
        self._t = np.zeros(self.num_envs, np.int32)
        return self._observe()

    def _observe(self):
        import numpy as np

        return np.stack([self._x, np.abs(self._x)], axis=-1).astype(np.float32)

    def rollout(self, policy_fn, num_steps: int, key):
        import numpy as np

        fields = {k: [] for k in ("obs", "action", "reward", "next_obs", "truncated")}
        for t in range(num_steps):
            obs = self._observe()
            action = np.clip(np.asarray(policy_fn(obs, jax.random.fold_in(key, t))), -1, 1)
            self._x = self._x + 0.25 * action[:, 0]
            self._t = self._t + 1
            reward = -(self._x**2)
            if self.nan_reward:
                reward = reward * np.nan
            truncated = self._t >= self.horizon
            fields["obs"].append(obs)
            fields["action"].append(action.astype(np.float32))
            fields["reward"].append(reward.astype(np.float32))
            fields["next_obs"].append(self._observe())
            fields["truncated"].append(truncated)
            n = int(truncated.sum())
            self._x[truncated] = self._rng.uniform(-2.0, 2.0, n)
            self._t[truncated] = 0
        arr = {k: np.stack(v) for k, v in fields.items()}
        zeros = np.zeros_like(arr["reward"])
        return Trajectory(
            obs=arr["obs"],
            action=arr["action"],
            reward=arr["reward"],
            next_obs=arr["next_obs"],
            terminated=np.zeros_like(arr["truncated"]),
            truncated=arr["truncated"],
            x_velocity=zeros,
            qpos=arr["obs"][..., :1],
            qvel=zeros[..., None],
        )

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue bit for bit (the RNG as JSON bytes)."""
        import json

        import numpy as np

        rng = json.dumps(self._rng.bit_generator.state).encode()
        return {"x": self._x.copy(), "t": self._t.copy(), "rng": np.frombuffer(rng, np.uint8)}

    def load_state_dict(self, state: dict) -> None:
        import json

        import numpy as np

        self._x = np.array(state["x"])
        self._t = np.array(state["t"])
        self._rng.bit_generator.state = json.loads(bytes(np.asarray(state["rng"])).decode())

    def close(self) -> None:
        pass
