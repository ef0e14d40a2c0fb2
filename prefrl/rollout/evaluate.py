"""Acting on the environments and the project's one evaluator (:func:`evaluate_policy`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from prefrl import policies
from prefrl.envs.tasks import TaskSpec, as_task
from prefrl.policies import PolicyFn
from prefrl.rollout.batched import BatchedEnv
from prefrl.types import Trajectory


# --------------------------------------------------------------------- policies
def policy_from_params(
    apply_fn: Callable[..., Any], params: Any, deterministic: bool = False
) -> PolicyFn:
    """A ``policy_fn(obs, key) -> action`` for a tanh-Gaussian policy network.

    ``apply_fn(params, obs) -> (mean, log_std)`` (e.g. ``GaussianPolicy(...).apply``);
    samples ``tanh(N(mean, σ))``, or ``tanh(mean)`` when ``deterministic``.
    The same as :func:`prefrl.policies.policy_fn` of ``Policy(apply_fn, params)``
    (its docstring gives the measured cost of one call).
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
