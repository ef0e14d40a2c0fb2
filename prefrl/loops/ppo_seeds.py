"""PPO for several seeds in one process: one batched environment, one vmapped update.

:func:`train_seeds` trains S seeds of :func:`prefrl.loops.ppo.train` at once.
The S × B environments are one :class:`prefrl.rollout.BatchedEnv` whose block
s resets exactly like seed s's own ``BatchedEnv(B, seed=s)``; each control
step is one jitted call of the S stacked policies (``policy_fn(...,
stacked=True)``), and each iteration one ``jit(vmap(update))`` over the
stacked :class:`prefrl.learners.ppo.PPOState`. The keys are the single-seed
loop's, seed by seed, so seed s here computes what ``train`` computes for
seed s, up to the float rounding of batched matrix products (a test checks
rtol 1e-5 after 3 updates; over 1 M steps the chaotic physics lets the two
drift apart like any two float orders would).

Why: the physics threads and the update's matrix products work on S times
larger batches, which amortises the per-step dispatch and the per-update
overheads (``prefrl bench ppo`` measures 3 seeds against 1 in the same run).
This loop writes no files; per-seed checkpoints, logs and resume stay with
``train``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prefrl.io import jsonable
from prefrl.learners import ppo
from prefrl.loops.ppo import (
    TrainConfig,
    TrainResult,
    _check_finite,
    _EpisodeTracker,
)
from prefrl.policies import Policy, policy_fn
from prefrl.rollout import BatchedEnv, evaluate_policy
from prefrl.types import Trajectory


def unstack(tree: Any, index: int) -> Any:
    """Seed ``index``'s slice of a pytree stacked over seeds."""
    return jax.tree.map(lambda x: x[index], tree)


def _by_seed(traj: Trajectory, num_seeds: int, padded: int) -> Trajectory:
    """``[T, S·B, …] -> [padded, T, B, …]`` numpy: each seed's block of environments.

    Rows past S repeat the first seeds' blocks (:class:`_SeedShards` padding).
    """

    def split(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        blocks = np.swapaxes(x.reshape(x.shape[0], num_seeds, -1, *x.shape[2:]), 0, 1)
        return np.ascontiguousarray(np.concatenate([blocks, blocks[: padded - num_seeds]]))

    return jax.tree.map(split, traj)


def _broadcast(tree: Any, num_seeds: int) -> Any:
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_seeds, *jnp.shape(x))), tree)


class _SeedShards:
    """Where the vmapped update runs: the seed axis split over the local devices.

    XLA runs one computation at a time per CPU device, so on a CPU with one
    host device the update of S seeds uses one core (it is compute-bound,
    ~40 GFLOP/s, while the physics threads wait). With D host devices
    (``--xla_force_host_platform_device_count``, which the ``prefrl`` command
    sets to the core count) the seed axis is sharded over them, padded to a
    multiple of D with copies of the first seeds whose results are dropped.
    Measured on the 2-core box (load ≈ 1.3): one update of 3 seeds 195 ms on
    one device, 110 ms as 4 on two. With one device (a GPU, or plain JAX on a
    CPU) this is the plain ``jit(vmap(update))``.
    """

    def __init__(self, num_seeds: int) -> None:
        devices = jax.local_devices()
        count = min(len(devices), num_seeds)
        self.num_seeds = num_seeds
        self.device = devices[0]
        self.padded = -(-num_seeds // count) * count
        self.sharding = None
        if count > 1:
            mesh = jax.sharding.Mesh(np.array(devices[:count]), ("seeds",))
            self.sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("seeds"))

    def put(self, tree: Any) -> Any:
        """Place ``[padded, …]`` leaves on the shards: one transfer per leaf."""
        return jax.device_put(tree, self.sharding or self.device)

    def jit(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if self.sharding is None:
            return jax.jit(fn)
        return jax.jit(fn, in_shardings=self.sharding, out_shardings=self.sharding)

    def first(self, fn: Callable[[Any], Any], *, split: bool = False) -> Callable[[Any], Any]:
        """``jit`` of ``fn`` on padded leaves, returning the S real seeds on the first device.

        Stacked ``[S, …]``, or with ``split`` a tuple of S per-seed trees. One
        dispatch and one copy (acting parameters each update, evaluation, the
        results), where eager slicing costs a dispatch, and a compile, per leaf.
        """
        def take(tree: Any) -> Any:
            out = fn(tree)
            if split:
                return tuple(jax.tree.map(lambda x, i=i: x[i], out)
                             for i in range(self.num_seeds))
            return jax.tree.map(lambda x: x[: self.num_seeds], out)

        if self.sharding is None:
            return jax.jit(take)
        # Replicated over the shards, then the first device's copy: no computation.
        replicated = jax.sharding.NamedSharding(self.sharding.mesh, jax.sharding.PartitionSpec())
        jitted = jax.jit(take, out_shardings=replicated)
        return lambda tree: jax.device_put(jitted(tree), self.device)


def train_seeds(
    train_config: TrainConfig,
    ppo_config: ppo.PPOConfig,
    seeds: Sequence[int],
    *,
    reward_fn: ppo.RewardFn = ppo.true_reward,
    reward_params: Any = None,
    reference: tuple[Any, ppo.PolicyApply] | None = None,
    stop_after_updates: int | None = None,
    log: Callable[[str], None] | None = None,
) -> list[TrainResult]:
    """Train PPO for every seed in ``seeds`` at once; one :class:`TrainResult` per seed.

    ``train_config.seed`` is replaced by each seed; ``out_dir`` must be None
    (this loop writes no files). ``reward_params``/``reference`` are shared by
    all seeds. Each result's ``history`` holds that seed's per-update metrics
    (``rollout_s``/``update_s`` are the shared wall-clock of the whole batch)
    and its ``evaluations`` the seed's deterministic evaluations (every
    ``eval_every`` updates and at the end, on the single-seed loop's
    evaluation environments and keys). Raises ``ValueError`` on duplicate or
    no seeds, an ``out_dir``, or non-finite rewards or updates (naming the seed).
    """
    tc = train_config
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    if tc.out_dir is not None:
        raise ValueError("train_seeds writes no files: use out_dir=None (or train, per seed)")
    task = tc.task_spec()
    target_speed = task.params_dict.get("target_speed")
    S, B = len(seeds), tc.num_envs
    learner = ppo.make(ppo_config, task.obs_dim, task.act_dim, num_updates=tc.num_updates,
                       reward_fn=reward_fn,
                       reference_apply=None if reference is None else reference[1])
    shards = _SeedShards(S)
    update = shards.jit(jax.vmap(learner.update))
    policy_apply = ppo.make_policy_apply(ppo_config, task.act_dim)

    def init(keys: jax.Array, reward: Any, ref: Any) -> ppo.PPOState:
        state = jax.vmap(learner.init)(keys)
        n = keys.shape[0]
        return state.replace(reward_params=_broadcast(reward, n), ref_params=_broadcast(ref, n))

    # Padding seeds (copies of the first ones) start from their keys: nothing to concatenate.
    padded_seeds = jnp.asarray(seeds + seeds[: shards.padded - S])
    state = jax.jit(init, out_shardings=shards.sharding)(
        jax.vmap(jax.random.key)(padded_seeds), reward_params,
        None if reference is None else reference[0])
    acting_params = shards.first(jax.vmap(ppo.policy_bundle))
    seed_params = shards.first(jax.vmap(ppo.policy_bundle), split=True)
    rollout_keys = jnp.stack([jax.random.key(s + 1) for s in seeds])
    env = BatchedEnv(task, num_envs=S * B, seed=seeds, num_threads=tc.num_threads,
                     dtype=np.float32)
    eval_envs = [BatchedEnv(task, num_envs=tc.eval_episodes, seed=s + 1_000_003,
                            num_threads=tc.num_threads, dtype=np.float32) for s in seeds]

    def run_eval(update_idx: int, bundles: tuple[Any, ...]) -> list[dict[str, Any]]:
        out = []
        for seed, eval_env, bundle in zip(seeds, eval_envs, bundles, strict=True):
            policy = policy_fn(Policy(policy_apply, bundle), deterministic=True)
            key = jax.random.fold_in(jax.random.key(seed + 2), update_idx)
            result = evaluate_policy(eval_env, policy, key, target_speed=target_speed,
                                     discount=ppo_config.discount)
            result.update(update=update_idx, env_steps=update_idx * tc.steps_per_update)
            out.append(result)
        return out

    histories: list[list[dict[str, Any]]] = [[] for _ in seeds]
    evaluations: list[list[dict[str, Any]]] = [[] for _ in seeds]
    trackers = [_EpisodeTracker(B) for _ in seeds]
    last = min(tc.num_updates, stop_after_updates or tc.num_updates)
    env.reset()
    t_start = time.perf_counter()
    try:
        for update_idx in range(1, last + 1):
            keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(rollout_keys, update_idx)
            bundles = acting_params(state)
            behaviour = policy_fn(Policy(policy_apply, bundles), stacked=True)
            t0 = time.perf_counter()
            traj = env.rollout(behaviour, tc.rollout_steps, keys)
            t1 = time.perf_counter()
            reward = np.asarray(traj.reward)
            done = np.asarray(traj.terminated) | np.asarray(traj.truncated)
            for i, seed in enumerate(seeds):
                block = slice(i * B, (i + 1) * B)
                _check_finite(reward[:, block],
                              f"reward in the rollout of update {update_idx} (seed {seed})")
                trackers[i].add(reward[:, block], done[:, block])
            state, metrics = update(state, shards.put(_by_seed(traj, S, shards.padded)))
            metrics = jax.tree.map(lambda x: x[:S], jax.device_get(metrics))
            t2 = time.perf_counter()
            bad = [seed for i, seed in enumerate(seeds) if bool(metrics["nonfinite"][i])]
            if bad:
                raise ValueError(f"PPO update {update_idx} produced non-finite values for "
                                 f"seeds {bad} (learning reward, KL or the learning rate)")
            due = (tc.eval_every and update_idx % tc.eval_every == 0) or (
                update_idx == tc.num_updates)
            results = run_eval(update_idx, seed_params(state)) if due else [None] * S
            for i in range(S):
                record = jsonable(unstack(metrics, i), keep_non_finite=True)
                episodes = trackers[i].pop()
                if episodes:
                    record["train_episode_return"] = float(np.mean(episodes))
                    record["train_episodes"] = len(episodes)
                record.update(update=update_idx, env_steps=update_idx * tc.steps_per_update,
                              rollout_s=t1 - t0, update_s=t2 - t1)
                if results[i] is not None:
                    evaluations[i].append(results[i])
                    record["eval_return"] = results[i]["mean_return"]
                histories[i].append(record)
    finally:
        for e in (env, *eval_envs):
            e.close()
    wall = time.perf_counter() - t_start
    if log:
        steps = last * tc.steps_per_update * S
        log(f"{S} seeds × {last * tc.steps_per_update} env steps in {wall:.1f} s "
            f"({steps / max(wall, 1e-9):.0f} steps/s)")
    states = shards.first(lambda tree: tree, split=True)(state)
    return [TrainResult(state=states[i], history=histories[i],
                        evaluations=evaluations[i], env_steps=last * tc.steps_per_update,
                        wall_s=wall, out_dir=None) for i in range(S)]


__all__ = ["train_seeds", "unstack"]
