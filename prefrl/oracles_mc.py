"""A faithful regret oracle: V^{π_E}(s) from Monte-Carlo rollouts of the expert (issue #24).

The regret oracle of :mod:`prefrl.oracles` scores a segment with the expert's
critic, ``Σ_t γ^t r_t + γ^k V_E(s_k) − V_E(s_0)`` (Knox et al. 2022, "Models
of human preference for learning reward functions"), so the critic's error
enters every label at full weight, worst on states the expert never visits.
Here V comes from the expert's own behaviour instead (docs/design.md §3, §4b):

    V̂(s) = (1/M) Σ_{m<M} [ Σ_{t<H} γ^t r(s_t^m, a_t^m) + γ^H V_E(s_H^m) ],
    s_0^m = s,  a_t^m ~ π_E(·|s_t^m),

M rollouts of the *stochastic* expert, H steps each, started at the physics
state (qpos, qvel) with the root x position set to 0 (no reward depends on x),
with no time limit inside (PPO bootstraps at its time limit, so V_E is the
infinite-horizon value; ``prefrl bench expert_value`` treats it the same).
Labels are then exact for A^{π_E} (not A*: the expert is not optimal) up to
the γ^H-weighted tail and the MC noise, std/√M.

A segment pool only needs, per segment, ``reward [k]``, ``action`` of the last
step and the physics state at its FIRST and LAST step (``qpos``/``qvel``
``[N, k or 2, …]``: index 0 and −1). s_k is one environment step from
s_{k-1} with a_{k-1} (deterministic dynamics; the solver warm-start is lost,
``prefrl bench oracle_fidelity`` measures what that changes). Where a
segment's s_k is another pool segment's s_0 (stride = length: its
``next_obs[-1]`` equals the other's ``obs[0]`` bit for bit) that stored state
is used and each shared endpoint is rolled out once.

Public: :class:`MCConfig`, :class:`MCExpert` / :func:`load_expert`,
:func:`mc_values`, :func:`final_states`, :func:`label_queries_mc` and the host
labeller :class:`MCLabeller` (``label(key, segments, first, second) -> Labels``).
Host code (the C engine); the scoring is :func:`prefrl.oracles.segment_scores`
and :func:`prefrl.oracles.label_scores`, so every irrationality but the
myopic one (which needs V at every step) applies unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from prefrl.config import ConfigError, field
from prefrl.oracles import Labels, OracleConfig, label_scores, segment_scores

Array = jax.Array
ValueFn = Callable[[Any], Any]

DEFAULT_ROLLOUTS = 16  # M: chosen from the measured MC variance (README, oracle fidelity)
DEFAULT_HORIZON = 200  # H: γ^H = 0.99^200 ≈ 0.13
VALUES = ("critic", "mc")


@dataclasses.dataclass(frozen=True)
class MCConfig:
    """Settings of the Monte-Carlo value estimate V̂(s) (see the module docstring)."""

    expert: str | None = field(
        None, "PPO expert checkpoint: its stochastic policy rolls out, its critic gives the tail")
    rollouts: int = field(DEFAULT_ROLLOUTS, "M: expert rollouts per state")
    horizon: int = field(DEFAULT_HORIZON, "H: steps per rollout, then γ^H·V_E(s_H)")
    num_envs: int = field(1024, "environments stepped together (the S·M rollouts in chunks)")

    def __post_init__(self) -> None:
        if not self.expert:
            raise ConfigError(
                "the Monte-Carlo regret oracle needs the expert checkpoint (--expert PATH): "
                "its policy makes the rollouts and its critic V_E the γ^H tail")
        for name, option in (("rollouts", "--mc-rollouts"), ("horizon", "--mc-horizon"),
                             ("num_envs", "num_envs")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ConfigError(f"{option} must be an integer >= 1, got {value!r}")

    @property
    def steps_per_state(self) -> int:
        """Env steps one V̂(s) costs: M·H."""
        return self.rollouts * self.horizon


class MCExpert(NamedTuple):
    """What the rollouts need: the stochastic actor, V_E, its γ and the task."""

    actor: Any  # prefrl.policies.Actor (stochastic): act_with_noise(obs [B, 17], noise [B, act])
    value_fn: ValueFn  # obs [..., 17] -> V_E [...], true-reward units
    discount: float
    task: Any  # prefrl.envs.TaskSpec (reward parameters included)


class MCValues(NamedTuple):
    """V̂ of S states from M rollouts each."""

    value: np.ndarray  # [S] mean of the M returns
    stderr: np.ndarray  # [S] std of the M returns / √M (NaN for M = 1)
    returns: np.ndarray  # [S, M] each rollout's Σ γ^t r_t + γ^H V_E(s_H)
    env_steps: int  # S·M·H


class Endpoints(NamedTuple):
    """The parts of a segment pool ``[N, …]`` the MC oracle reads."""

    reward: np.ndarray  # [N, k]
    mask: np.ndarray  # [N, k]
    action_last: np.ndarray  # [N, act]: a_{k-1}
    qpos_first: np.ndarray  # [N, nq]: s_0
    qvel_first: np.ndarray  # [N, nv]
    qpos_last: np.ndarray  # [N, nq]: s_{k-1}
    qvel_last: np.ndarray  # [N, nv]
    obs_first: np.ndarray | None  # [N, obs]: obs[:, 0], to find shared endpoints
    next_obs_last: np.ndarray | None  # [N, obs]: next_obs[:, -1]


# --------------------------------------------------------------------------- loading


def load_expert(config: MCConfig, task: Any, *, discount: float | None = None,
                trajectory_header: Mapping[str, Any] | None = None) -> MCExpert:
    """Load the expert of ``config.expert`` for ``task`` (a name or TaskSpec).

    The checkpoint must be a true-reward PPO expert of the same task and
    parameters, with ``discount`` (the regret score's γ) when given
    (:func:`prefrl.data.labelling.check_critic`). Raises FileNotFoundError /
    FileFormatError naming the file.
    """
    from prefrl import checkpoints
    from prefrl.data.labelling import check_critic
    from prefrl.envs import as_task

    spec = as_task(task)
    _, header = checkpoints.load_ppo(config.expert, obs_dim=spec.obs_dim)
    check_critic(header, dict(trajectory_header or spec.to_header()),
                 discount=float(header["discount"]) if discount is None else discount,
                 obs_dim=spec.obs_dim, where=str(config.expert))
    actor, _ = checkpoints.load_policy(config.expert, deterministic=False, obs_dim=spec.obs_dim)
    value_fn = checkpoints.load_value_fn(config.expert, obs_dim=spec.obs_dim)
    return MCExpert(actor, value_fn, float(header["discount"]), spec)


def make_env(task: Any, num_envs: int, horizon: int, num_threads: int | None = None) -> Any:
    """A ``BatchedEnv`` whose time limit (``horizon + 1``) never cuts a rollout short."""
    from prefrl.envs import as_task
    from prefrl.rollout import BatchedEnv

    spec = dataclasses.replace(as_task(task), episode_length=int(horizon) + 1)
    return BatchedEnv(spec, num_envs=int(num_envs), num_threads=num_threads)


class EnvCache:
    """:func:`make_env` envs of power-of-two sizes up to ``max_envs``, made on first use.

    ``cache(count)`` is the env that runs ``count`` rollouts with the least
    padding (at most twice ``count``, at least 16, at most ``max_envs``): a
    small online batch does not pay for ``max_envs`` environments. Any function
    here that takes ``env`` also takes an ``EnvCache``.
    """

    def __init__(self, task: Any, max_envs: int, horizon: int,
                 num_threads: int | None = None) -> None:
        self.task, self.max_envs, self.horizon = task, int(max_envs), int(horizon)
        self.num_threads = num_threads
        self.envs: dict[int, Any] = {}

    def __call__(self, count: int) -> Any:
        size = min(self.max_envs, max(16, 1 << max(0, int(count) - 1).bit_length()))
        if size not in self.envs:
            self.envs[size] = make_env(self.task, size, self.horizon, self.num_threads)
        return self.envs[size]

    def close(self) -> None:
        for env in self.envs.values():
            env.close()


def _env_for(env: Any, count: int) -> Any:
    return env(count) if isinstance(env, EnvCache) else env


# --------------------------------------------------------------------------- arithmetic


def root_x_zero(qpos: np.ndarray) -> np.ndarray:
    """``qpos [..., nq]`` with the root x position set to 0 (rewards read only velocities)."""
    out = np.array(qpos, np.float64, copy=True)
    out[..., 0] = 0.0
    return out


def discounted_returns(reward_t: np.ndarray, tail: np.ndarray, discount: float) -> np.ndarray:
    """``[H, B], [B] -> [B]``: ``Σ_{t<H} γ^t r_t + γ^H · tail`` (float64)."""
    horizon = reward_t.shape[0]
    weights = discount ** np.arange(horizon, dtype=np.float64)
    return weights @ np.asarray(reward_t, np.float64) + discount**horizon * np.asarray(
        tail, np.float64)


@functools.partial(jax.jit, static_argnums=(3, 4))
def rollout_noise(key: Array, state_ids: Array, copies: Array, horizon: int, act_dim: int
                  ) -> Array:
    """``[H, B, act]`` standard-normal policy noise of rollouts ``(state_ids, copies)``.

    Rollout (i, m) draws from ``fold_in(fold_in(key, i), m)``.

    A rollout's draws depend on the key, its state's index and its copy only,
    not on the chunk it runs in, so V̂ does not depend on ``num_envs``.
    """
    def one(i: Array, m: Array) -> Array:
        k = jax.random.fold_in(jax.random.fold_in(key, i), m)
        return jax.random.normal(k, (horizon, act_dim), jnp.float32)

    return jnp.swapaxes(jax.vmap(one)(state_ids, copies), 0, 1)


def rollout_returns(env: Any, expert: MCExpert, noise: np.ndarray) -> np.ndarray:
    """``[B]`` returns ``Σ_{t<H} γ^t r_t + γ^H V_E(s_H)`` of the expert from ``env``'s state.

    ``noise [H, B, act]`` drives the stochastic expert (one row a step); the
    env must not reach its time limit within H steps (:func:`make_env`).
    """
    horizon = noise.shape[0]
    rewards = np.empty((horizon, env.num_envs))
    for t in range(horizon):
        obs = env.obs.astype(np.float32)
        action = np.asarray(expert.actor.act_with_noise(obs, noise[t]))
        rewards[t] = env.step(action)["reward"]
    tail = np.asarray(expert.value_fn(env.obs.astype(np.float32)), np.float64)
    return discounted_returns(rewards, tail, expert.discount)


def _check_states(qpos: np.ndarray, qvel: np.ndarray, env: Any) -> None:
    m = env.model
    if qpos.ndim != 2 or qvel.ndim != 2 or qpos.shape[1] != m.nq or qvel.shape[1] != m.nv \
            or qpos.shape[0] != qvel.shape[0]:
        raise ValueError(f"qpos/qvel must be [S, nq={m.nq}] and [S, nv={m.nv}], got "
                         f"{qpos.shape} and {qvel.shape}")


def _chunks(total: int, size: int) -> list[np.ndarray]:
    return [np.arange(lo, min(lo + size, total)) for lo in range(0, total, size)]


def _pad(rows: np.ndarray, size: int) -> np.ndarray:
    # The last chunk repeats its first row up to the env's size; the copies are discarded.
    return np.concatenate([rows, np.full(size - rows.size, rows[0], rows.dtype)])


def mc_values(expert: MCExpert, key: Array, qpos: np.ndarray, qvel: np.ndarray, *,
              rollouts: int, horizon: int, env: Any) -> MCValues:
    """V̂ of S physics states by M rollouts of the expert each (see the module docstring).

    Args:
      expert: :func:`load_expert`.
      key: PRNG key; rollout m of state i uses ``fold_in(fold_in(key, i), m)``.
      qpos, qvel: ``[S, nq]``, ``[S, nv]``; root x is set to 0 first.
      rollouts, horizon: M, H.
      env: a :func:`make_env` env (time limit > H) or an :class:`EnvCache`;
        its ``num_envs`` rollouts run together, the S·M in chunks.

    Returns:
      :class:`MCValues` (``value [S]``, ``stderr [S]``, ``returns [S, M]``).
    """
    qpos, qvel = root_x_zero(qpos), np.asarray(qvel, np.float64)
    env = _env_for(env, qpos.shape[0] * rollouts)
    _check_states(qpos, qvel, env)
    if rollouts < 1 or horizon < 1:
        raise ValueError(f"rollouts and horizon must be >= 1, got {rollouts}, {horizon}")
    if env.task.episode_length <= horizon:
        raise ValueError(f"env time limit {env.task.episode_length} would cut rollouts of "
                         f"{horizon} steps: build it with make_env")
    num_states = qpos.shape[0]
    state_of = np.repeat(np.arange(num_states), rollouts)  # flat rollout r -> (state, copy)
    copy_of = np.tile(np.arange(rollouts), num_states)
    returns = np.empty(num_states * rollouts)
    for rows in _chunks(returns.size, env.num_envs):
        padded = _pad(rows, env.num_envs)
        env.set_state(qpos[state_of[padded]], qvel[state_of[padded]])
        noise = np.asarray(rollout_noise(key, jnp.asarray(state_of[padded]),
                                         jnp.asarray(copy_of[padded]), int(horizon),
                                         int(env.act_dim)))
        returns[rows] = rollout_returns(env, expert, noise)[: rows.size]
    returns = returns.reshape(num_states, rollouts)
    stderr = (returns.std(axis=1, ddof=1) / np.sqrt(rollouts) if rollouts > 1
              else np.full(num_states, np.nan))
    return MCValues(returns.mean(axis=1), stderr, returns, num_states * rollouts * horizon)


def final_states(qpos_last: np.ndarray, qvel_last: np.ndarray, action_last: np.ndarray, *,
                 env: Any) -> tuple[np.ndarray, np.ndarray]:
    """s_k from s_{k-1} and a_{k-1}: one env step each; ``([n, nq], [n, nv])``, root x 0.

    The dynamics are deterministic; only the solver warm-start of the original
    rollout is lost (``set_state`` restarts it cold).
    """
    qpos_last, qvel_last = root_x_zero(qpos_last), np.asarray(qvel_last, np.float64)
    env = _env_for(env, qpos_last.shape[0])
    _check_states(qpos_last, qvel_last, env)
    qpos_k, qvel_k = np.empty_like(qpos_last), np.empty_like(qvel_last)
    for rows in _chunks(qpos_last.shape[0], env.num_envs):
        padded = _pad(rows, env.num_envs)
        env.set_state(qpos_last[padded], qvel_last[padded])
        env.step(np.asarray(action_last, np.float64)[padded])
        state = env.get_state()
        qpos_k[rows], qvel_k[rows] = state["qpos"][: rows.size], state["qvel"][: rows.size]
    return root_x_zero(qpos_k), qvel_k


# --------------------------------------------------------------------------- segments


def endpoints_of(segments: Any) -> Endpoints:
    """The :class:`Endpoints` of a :class:`~prefrl.types.Segments` or a mapping of pool arrays.

    Needs ``reward [N, k]``, ``action [N, k, act]`` (or ``[N, act]``, the last
    step's), ``qpos [N, k or 2, nq]`` and ``qvel [N, k or 2, nv]`` (index 0 is
    s_0, index −1 is s_{k-1}); ``mask`` (default ones), ``obs`` and
    ``next_obs`` (to find shared endpoints) are optional.
    """
    get: Callable[[str], Any]
    if isinstance(segments, Mapping):
        get = segments.get
    else:
        def get(name: str) -> Any:
            return getattr(segments, name, None)
    missing = [n for n in ("reward", "action", "qpos", "qvel") if get(n) is None]
    if missing:
        raise ValueError(f"the Monte-Carlo oracle needs {missing} of every segment (qpos/qvel "
                         "at the first and last step at least)")
    reward = np.asarray(get("reward"), np.float64)
    action = np.asarray(get("action"), np.float64)
    qpos, qvel = np.asarray(get("qpos"), np.float64), np.asarray(get("qvel"), np.float64)
    if reward.ndim != 2 or qpos.ndim != 3 or qvel.ndim != 3:
        raise ValueError(f"reward must be [N, k] and qpos/qvel [N, k or 2, …], got "
                         f"{reward.shape}, {qpos.shape}, {qvel.shape}")
    mask = np.ones_like(reward) if get("mask") is None else np.asarray(get("mask"), np.float64)
    obs, next_obs = get("obs"), get("next_obs")
    return Endpoints(
        reward=reward, mask=mask, action_last=action[:, -1] if action.ndim == 3 else action,
        qpos_first=qpos[:, 0], qvel_first=qvel[:, 0], qpos_last=qpos[:, -1],
        qvel_last=qvel[:, -1],
        obs_first=None if obs is None else np.asarray(obs)[:, 0],
        next_obs_last=None if next_obs is None else np.asarray(next_obs)[:, -1])


def _shared_starts(ends: Endpoints, used: np.ndarray) -> np.ndarray:
    """``[len(used)]``: the pool row whose s_0 is segment used[i]'s s_k (bit-equal obs), or −1."""
    out = np.full(used.size, -1, np.int64)
    if ends.obs_first is None or ends.next_obs_last is None:
        return out
    starts = {np.ascontiguousarray(row).tobytes(): j for j, row in enumerate(ends.obs_first)}
    for i, u in enumerate(used):
        out[i] = starts.get(np.ascontiguousarray(ends.next_obs_last[u]).tobytes(), -1)
    return out


def endpoint_states(ends: Endpoints, used: np.ndarray, *, env: Any
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """The distinct states whose V̂ the segments ``used`` need.

    Returns ``(qpos [U, nq], qvel [U, nv], at_0 [len(used)], at_k [len(used)],
    stepped)``: segment used[i]'s s_0 is state at_0[i], its s_k state at_k[i];
    ``stepped`` s_k came from :func:`final_states` (the others are another
    segment's stored s_0). Root x is 0 throughout, duplicates are merged.
    """
    shared = _shared_starts(ends, used)
    qpos_k, qvel_k = ends.qpos_first[np.maximum(shared, 0)], ends.qvel_first[np.maximum(shared, 0)]
    step = np.flatnonzero(shared < 0)
    if step.size:
        qpos_k[step], qvel_k[step] = final_states(
            ends.qpos_last[used[step]], ends.qvel_last[used[step]],
            ends.action_last[used[step]], env=env)
    states = np.concatenate([
        np.concatenate([root_x_zero(ends.qpos_first[used]), ends.qvel_first[used]], 1),
        np.concatenate([root_x_zero(qpos_k), qvel_k], 1)])
    unique, inverse = np.unique(states, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    nq = ends.qpos_first.shape[1]
    return (unique[:, :nq], unique[:, nq:], inverse[: used.size], inverse[used.size :],
            int(step.size))


def label_queries_mc(oracle: OracleConfig, mc: MCConfig, expert: MCExpert, key: Array,
                     segments: Any, first: Any, second: Any, *, env: Any
                     ) -> tuple[Labels, dict[str, Any]]:
    """Regret labels of ``(segments[first[q]], segments[second[q]])`` with V = V̂ (MC).

    ``score(σ) = Σ_t γ^t r_t + γ^k V̂(s_k) − V̂(s_0)`` (Knox et al. 2022) via
    :func:`prefrl.oracles.segment_scores`, labels via
    :func:`prefrl.oracles.label_scores` (β, ε, ties, skip as for the critic).
    Only the queried segments' endpoints are rolled out, each distinct state once.

    Keys: ``key`` splits into the rollouts' key and the labels' key.

    Returns:
      ``(Labels [Q], info)``; info: ``env_steps``, ``seconds``, ``states``,
      ``stepped_final_states``, ``segments``, mean ``stderr`` of V̂.
    """
    check_oracle(oracle, expert)
    start = time.perf_counter()
    first, second = np.asarray(first, np.int64), np.asarray(second, np.int64)
    ends = endpoints_of(segments)
    num = ends.reward.shape[0]
    if first.shape != second.shape or first.ndim != 1 or (
            first.size and (min(first.min(), second.min()) < 0
                            or max(first.max(), second.max()) >= num)):
        raise ValueError(f"first/second must be [Q] indices into the {num} segments")
    used = np.unique(np.concatenate([first, second]))
    qpos, qvel, at_0, at_k, stepped = endpoint_states(ends, used, env=env)
    key_mc, key_label = jax.random.split(key)
    values = mc_values(expert, key_mc, qpos, qvel, rollouts=mc.rollouts, horizon=mc.horizon,
                       env=env)
    scores = segment_scores(oracle, jnp.asarray(ends.reward[used], jnp.float32),
                            jnp.asarray(ends.mask[used], jnp.float32),
                            values_0=jnp.asarray(values.value[at_0], jnp.float32),
                            values_k=jnp.asarray(values.value[at_k], jnp.float32))
    pos_1, pos_2 = np.searchsorted(used, first), np.searchsorted(used, second)
    labels = label_scores(oracle, key_label, scores[pos_1], scores[pos_2])
    info = {"env_steps": values.env_steps + stepped, "seconds": time.perf_counter() - start,
            "states": int(qpos.shape[0]), "stepped_final_states": stepped,
            "segments": int(used.size), "queries": int(first.size),
            "mean_stderr": float(np.nanmean(values.stderr)) if mc.rollouts > 1 else None}
    return labels, info


def check_oracle(oracle: OracleConfig, expert: MCExpert) -> None:
    """Refuse an oracle the MC values cannot serve (not regret, myopic, another γ)."""
    if oracle.model != "regret":
        raise ConfigError(f"Monte-Carlo values serve the regret oracle, not {oracle.model!r}")
    if oracle.myopic_discount != 1.0:
        raise ConfigError("the myopic regret teacher needs V at every step of a segment; the "
                          "Monte-Carlo oracle estimates V at s_0 and s_k only (use "
                          "--oracle-value critic, or myopic_discount 1)")
    if abs(oracle.discount - expert.discount) > 1e-12:
        raise ConfigError(f"the regret score's γ {oracle.discount} differs from the expert's "
                          f"{expert.discount}: V̂ and its tail are discounted with the expert's")


class MCLabeller:
    """A host labeller for any loop: ``label(key, segments, first, second) -> Labels``.

    Holds the loaded expert and an :class:`EnvCache` of envs of up to
    ``mc.num_envs`` environments (reused by every call; :meth:`close` stops
    their threads).
    ``segments`` is a :class:`~prefrl.types.Segments` or a mapping of numpy
    pool arrays (:func:`endpoints_of`). ``env_steps``/``seconds`` add up every
    call's cost; ``last_info`` is the latest call's :func:`label_queries_mc` info.
    """

    def __init__(self, oracle: OracleConfig, mc: MCConfig, task: Any, *,
                 expert: MCExpert | None = None,
                 trajectory_header: Mapping[str, Any] | None = None,
                 num_threads: int | None = None) -> None:
        self.oracle, self.mc = oracle, mc
        self.expert = expert or load_expert(mc, task, discount=oracle.discount,
                                            trajectory_header=trajectory_header)
        check_oracle(oracle, self.expert)
        self.env = EnvCache(self.expert.task, mc.num_envs, mc.horizon, num_threads)
        self.env_steps, self.seconds = 0, 0.0
        self.last_info: dict[str, Any] = {}

    def label(self, key: Array, segments: Any, first: Any, second: Any) -> Labels:
        labels, info = label_queries_mc(self.oracle, self.mc, self.expert, key, segments,
                                        first, second, env=self.env)
        self.env_steps += info["env_steps"]
        self.seconds += info["seconds"]
        self.last_info = info
        return labels

    __call__ = label

    def values(self, key: Array, qpos: np.ndarray, qvel: np.ndarray) -> MCValues:
        """:func:`mc_values` of ``[S]`` states with this labeller's expert, M and H."""
        return mc_values(self.expert, key, qpos, qvel, rollouts=self.mc.rollouts,
                         horizon=self.mc.horizon, env=self.env)

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> MCLabeller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["DEFAULT_HORIZON", "DEFAULT_ROLLOUTS", "VALUES", "Endpoints", "EnvCache", "MCConfig",
           "MCExpert", "MCLabeller", "MCValues", "check_oracle", "discounted_returns",
           "endpoint_states", "endpoints_of", "final_states", "label_queries_mc", "load_expert",
           "make_env", "mc_values", "rollout_noise", "rollout_returns", "root_x_zero"]
