"""The online preference loop (Christiano et al. 2017) on MJX, a whole round in one jit (for GPUs).

The same loop as :mod:`prefrl.loops.online` (docs/design.md §4b), with every
buffer on the device and fixed shapes, so a round never leaves the device:

``make_trainer(config, ppo_config, reward_config, oracle) -> OnlineTrainer(init, round, train)``

- ``round(state, r) -> (state, metrics)`` is ``refit_every`` PPO iterations
  of :mod:`prefrl.loops.ppo_mjx` (``Trainer.collect`` then ``Trainer.update``:
  the same PPO learner, on the learned reward whose parameters travel in
  ``PPOState.reward_params``, so refits never recompile). Each rollout is cut
  on a fixed grid (:func:`prefrl.data.segments.grid_segments`) into a
  fixed-size ring-buffer pool (:class:`DevicePool`: obs, actions, mask, and
  the true rewards for the oracle only). On the round's first iteration,
  between its rollout and its update (where the CPU loop labels):
  **selection** (``oversample ×`` uniform pairs ranked by ensemble
  disagreement or entropy, or uniform: :func:`prefrl.data.queries.oversample_select`),
  **labels** (:func:`prefrl.oracles.label_traced`: Bradley–Terry on the partial
  return, sampled with temperature β or deterministic at β = 0; label =
  P(σ¹ ≻ σ²)), the schedule's ``n_r`` of them into a label buffer of the
  budget's capacity with a validity mask (:class:`DeviceLabels`), then a
  **refit** (``fit.fit``: the reward-model learner's Bradley–Terry ensemble
  loss, minibatch Adam steps, warm start) and r̂ standardised on this rollout.
- ``train(key, inputs) -> (state, metrics [R])`` is ``init`` then a
  ``lax.scan`` of ``round`` over all rounds, so ``jax.jit(jax.vmap(train))``
  runs several seeds and hyper-parameter values (:class:`OnlineInputs`: PPO
  and reward-model learning rates, the oracle's β, the adaptive-KL start) in
  one compiled call.
- :func:`prefrl.loops.online_mjx_run.run` is the host loop over a jitted
  ``round`` behind ``prefrl train online --backend mjx``: one JSON line per
  round, the final policy evaluated on the C engine, ``final.npz`` (a PPO
  checkpoint) and ``reward_model.npz``.

Differences from the CPU loop, all for static shapes: a round is the
``refit_every`` updates after its labels, and the run is a whole number of
rounds (``ceil(num_updates / refit_every)``); windows that cross an episode
end are masked rather than dropped; held-out accuracy uses the rational
partial-return oracle only. Not supported (:func:`check_supported` names
them): the regret oracle (``expert``), ``reference``, ``offline_dataset``,
``initial_rollouts > 1``, resume.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from prefrl import evaluation, oracles
from prefrl.data import pairs, queries
from prefrl.data.segments import grid_segments
from prefrl.envs import parse_task_params
from prefrl.envs.mjx_options import GPU, SolverOptions
from prefrl.learners import ppo
from prefrl.learners import reward_model as rm
from prefrl.loops import fit as fit_loop
from prefrl.loops import ppo_mjx
from prefrl.loops.active import pool_preferences
from prefrl.loops.online_config import OnlineConfig, default_reward_config
from prefrl.loops.ppo import TrainConfig
from prefrl.types import PairBatch

Array = jax.Array
PRNGKey = jax.Array
Metrics = dict[str, Array]

FIT_METRICS = ("fit_train_loss", "fit_train_accuracy", "valid_accuracy", "reward_pearson",
               "heldout_acc_partial_return", "skipped")


class OnlineInputs(NamedTuple):
    """Per-run values that are arrays (``[]`` each; a leading axis to ``vmap`` over runs).

    ``oracle_temperature`` is the oracle's β (used when ``OracleConfig.temperature
    > 0``, which makes labels sampled; it must then be > 0).
    """

    ppo_learning_rate: Array
    kl_coef: Array
    oracle_temperature: Array
    reward_learning_rate: Array


def default_inputs(ppo_config: ppo.PPOConfig, reward_config: rm.RewardModelConfig,
                   oracle: oracles.OracleConfig) -> OnlineInputs:
    """:class:`OnlineInputs` with the configurations' values."""
    f = lambda x: jnp.asarray(x, jnp.float32)
    return OnlineInputs(f(ppo_config.learning_rate), f(ppo_config.kl_init_coef),
                        f(oracle.temperature), f(reward_config.learning_rate))


@struct.dataclass
class DevicePool:
    """A ring buffer of segments ``[P, k, …]`` on the device (oldest replaced first)."""

    obs: Array  # [P, k, obs]
    action: Array  # [P, k, act]
    reward: Array  # [P, k] true reward: the oracle's only
    mask: Array  # [P, k]
    count: Array  # int32 []: rows filled (≤ P)
    head: Array  # int32 []: next row to write


@struct.dataclass
class DeviceLabels:
    """Labelled queries, capacity = the label budget; rows ``< count`` are filled."""

    pairs: PairBatch  # [L, …]; weight None
    keep: Array  # [L] float: 0 where the oracle skipped the query
    split: Array  # [L] float: 1 = held out for validation (never trained on)
    count: Array  # int32 []


@struct.dataclass
class OnlineState:
    """The whole run: PPO + environments (the learned reward inside), pool, labels, key."""

    train: ppo_mjx.MJXTrainState
    pool: DevicePool
    labels: DeviceLabels
    inputs: OnlineInputs
    key: PRNGKey  # the rounds' selection/label/fit keys: fold_in(key, round)


class OnlineTrainer(NamedTuple):
    """Pure functions of one MJX online run (see the module docstring) and its sizes."""

    init: Callable[[PRNGKey, OnlineInputs], OnlineState]
    round: Callable[[OnlineState, Array], tuple[OnlineState, Metrics]]
    train: Callable[[PRNGKey, OnlineInputs], tuple[OnlineState, Metrics]]
    ppo: ppo_mjx.Trainer
    model: rm.RewardModel
    counts: np.ndarray  # [R] labels per round, summing to the budget
    num_rounds: int
    segments_per_rollout: int


def check_supported(config: OnlineConfig, oracle: oracles.OracleConfig) -> None:
    """``ValueError`` naming each setting the MJX loop does not support."""
    refused = []
    if config.expert or oracle.model != "partial_return":
        refused.append("the regret oracle (--oracle-model regret / --expert): V_E is not on MJX")
    if config.reference:
        refused.append("--reference (π_ref's KL penalty)")
    if config.offline_dataset:
        refused.append("--offline-dataset (labels come from the device pool only)")
    if config.initial_rollouts != 1:
        refused.append("--initial-rollouts other than 1")
    if config.reward_learner != "partial_return":
        refused.append("--reward-learner regret (the fixed-critic regret fit is CPU-only)")
    if refused:
        raise ValueError("not supported by --backend mjx: " + "; ".join(refused)
                         + "; use --backend cpu")


def ppo_train_config(config: OnlineConfig, num_updates: int) -> TrainConfig:
    """The :class:`TrainConfig` of the PPO part (``num_updates`` whole updates)."""
    return TrainConfig(task=config.task, task_param=config.task_param,
                       total_steps=num_updates * config.steps_per_update,
                       num_envs=config.num_envs, rollout_steps=config.rollout_steps,
                       seed=config.seed, eval_every=0, eval_episodes=config.eval_episodes,
                       checkpoint_every=0, progress=False, num_threads=config.num_threads)


def _sizes(config: OnlineConfig) -> tuple[int, np.ndarray, int]:
    """``(num_rounds, counts [R], segments per rollout)``; ``ValueError`` for impossible sizes."""
    num_rounds = math.ceil(config.num_updates / config.refit_every)
    counts = config.schedule_counts()
    counts = np.concatenate([counts, np.zeros(num_rounds - counts.size, np.int64)])
    per_rollout = ((config.rollout_steps - config.segment_length) // config.segment_stride
                   + 1) * config.num_envs
    if per_rollout < 2:
        raise ValueError(f"a rollout gives {per_rollout} segment(s); a query needs 2 (raise "
                         "num_envs or rollout_steps, or lower segment_length)")
    if config.pool_capacity < per_rollout:
        raise ValueError(f"pool_capacity {config.pool_capacity} is smaller than one rollout's "
                         f"{per_rollout} segments; the device pool needs at least that many")
    return num_rounds, counts, per_rollout


def make_trainer(config: OnlineConfig, ppo_config: ppo.PPOConfig,
                 reward_config: rm.RewardModelConfig | None = None,
                 oracle: oracles.OracleConfig | None = None, *,
                 solver: SolverOptions | None = GPU) -> OnlineTrainer:
    """Build the pure functions of an MJX online run (module docstring); checks the settings."""
    reward_config = default_reward_config() if reward_config is None else reward_config
    oracle = oracles.OracleConfig() if oracle is None else oracle
    check_supported(config, oracle)
    if ppo_config.kl_ref_coef > 0:
        raise ValueError("--ppo-kl-ref-coef > 0 needs --reference, not supported by --backend mjx")
    c = config
    num_rounds, counts, per_rollout = _sizes(c)
    fit_config = dataclasses.replace(reward_config, normalize=False)
    model = rm.model(fit_config)
    learner = rm.make(fit_config, model.network)
    trainer = ppo_mjx.make_trainer(ppo_train_config(c, num_rounds * c.refit_every), ppo_config,
                                   solver=solver, reward_fn=rm.PPOReward(model))
    spec = parse_task_params(c.task, c.task_param)
    k, budget = c.segment_length, c.label_budget
    max_round = max(int(counts.max()), 1)
    counts_dev = jnp.asarray(counts, jnp.int32)

    def init(key: PRNGKey, inputs: OnlineInputs) -> OnlineState:
        ppo_key, rm_key, loop_key = jax.random.split(key, 3)
        empty = _empty_pairs(budget, k, spec.obs_dim, spec.act_dim)
        reward = learner.init(rm_key, empty).replace(opt_state=None)
        ts = trainer.init(ppo_key, ppo_mjx.RunInputs(
            learning_rate=inputs.ppo_learning_rate, kl_coef=inputs.kl_coef,
            reward_params=reward))
        z = lambda *shape: jnp.zeros((c.pool_capacity, k, *shape), jnp.float32)
        pool = DevicePool(obs=z(spec.obs_dim), action=z(spec.act_dim), reward=z(), mask=z(),
                          count=jnp.zeros((), jnp.int32), head=jnp.zeros((), jnp.int32))
        labels = DeviceLabels(pairs=empty, keep=jnp.zeros(budget), split=jnp.zeros(budget),
                              count=jnp.zeros((), jnp.int32))
        return OnlineState(train=ts, pool=pool, labels=labels, inputs=inputs, key=loop_key)

    def label_and_refit(state: OnlineState, ts: ppo_mjx.MJXTrainState, traj: Any,
                        segs: Any, round_idx: Array) -> tuple[Any, DeviceLabels, Metrics]:
        """Select, label, append, refit, standardise: the CPU loop's ``_round`` on device."""
        n = counts_dev[round_idx]
        k_sel, k_lab, k_fit, k_held = jax.random.split(
            jax.random.fold_in(state.key, round_idx), 4)
        reward = ts.ppo.reward_params
        first, second = _select(c, model, k_sel, state.pool, reward, round_idx, n, max_round)
        beta = state.inputs.oracle_temperature if oracle.temperature > 0 else None
        lab = oracles.label_traced(oracle, k_lab, state.pool, first, second, temperature=beta)
        labels = _append(c, state.labels, state.pool, first, second, lab, n)
        reward, fit_metrics = _refit(c, fit_config, model, k_fit, labels, reward, round_idx,
                                     state.inputs.reward_learning_rate)
        reward, raw = fit_loop.standardize_on_steps(model, reward, traj.obs, traj.action)
        metrics = {**fit_metrics,
                   "reward_pearson": evaluation.pearson_array(raw.ravel(), traj.reward.ravel()),
                   "heldout_acc_partial_return": _heldout(c, model, reward, k_held, segs),
                   "skipped": jnp.sum(jnp.where(jnp.arange(max_round) < n, 1.0 - lab.keep, 0.0))}
        return ts.replace(ppo=ts.ppo.replace(reward_params=reward)), labels, metrics

    def round_fn(state: OnlineState, round_idx: Array) -> tuple[OnlineState, Metrics]:
        round_idx = jnp.asarray(round_idx, jnp.int32)
        labelled = counts_dev[round_idx] > 0

        def iteration(carry: OnlineState, i: Array) -> tuple[OnlineState, tuple[Metrics, ...]]:
            ts, traj = trainer.collect(carry.train)
            segs = grid_segments(traj, k, c.segment_stride)
            carry = carry.replace(pool=_push(carry.pool, segs))
            # i and round_idx are not batched under vmap: a real cond, the refit runs once.
            ts, labels, fit_metrics = jax.lax.cond(
                (i == 0) & labelled,
                lambda: label_and_refit(carry, ts, traj, segs, round_idx),
                lambda: (ts, carry.labels, {n: jnp.float32(jnp.nan) for n in FIT_METRICS}))
            ts, metrics = trainer.update(ts, traj)
            return carry.replace(train=ts, labels=labels), (metrics, fit_metrics)

        state, (metrics, fit_metrics) = jax.lax.scan(iteration, state,
                                                     jnp.arange(c.refit_every))
        return state, _round_metrics(metrics, fit_metrics, state, counts_dev[round_idx])

    def train(key: PRNGKey, inputs: OnlineInputs) -> tuple[OnlineState, Metrics]:
        return jax.lax.scan(round_fn, init(key, inputs), jnp.arange(num_rounds))

    return OnlineTrainer(init=init, round=round_fn, train=train, ppo=trainer, model=model,
                         counts=counts, num_rounds=num_rounds, segments_per_rollout=per_rollout)


def _empty_pairs(size: int, length: int, obs_dim: int, act_dim: int) -> PairBatch:
    z = lambda *shape: jnp.zeros((size, *shape), jnp.float32)
    return PairBatch(z(length, obs_dim), z(length, act_dim), z(length), z(length, obs_dim),
                     z(length, act_dim), z(length), z())


def _push(pool: DevicePool, segs: Any) -> DevicePool:
    """Write a rollout's N segments at ``head`` (mod P), replacing the oldest."""
    num, capacity = segs.obs.shape[0], pool.obs.shape[0]
    rows = (pool.head + jnp.arange(num)) % capacity
    put = lambda buf, x: buf.at[rows].set(x.astype(buf.dtype))
    return pool.replace(obs=put(pool.obs, segs.obs), action=put(pool.action, segs.action),
                        reward=put(pool.reward, segs.reward), mask=put(pool.mask, segs.mask),
                        count=jnp.minimum(pool.count + num, capacity),
                        head=(pool.head + num) % capacity)


def _select(c: OnlineConfig, model: rm.RewardModel, key: PRNGKey, pool: DevicePool,
            reward: Any, round_idx: Array, n: Array, max_round: int) -> tuple[Array, Array]:
    """``max_round`` queries ``(first, second)``, best first; the first ``n`` are used.

    ``oversample × max_round`` uniform candidates from the filled rows; only the
    first ``oversample × n`` compete (as :meth:`prefrl.loops.online_run.Run.select`).
    Round 0 has no fitted model yet and is uniform.
    """
    num_candidates = max(2, c.oversample * max_round)
    key_c, key_s = jax.random.split(key)
    first, second = queries.uniform_pairs(key_c, pool.count, num_candidates)
    if c.selection == "uniform":
        values = jnp.zeros(num_candidates)
    else:
        values = queries.acquisition(pool_preferences(model, reward, pool, first, second),
                                     c.selection)
        values = jnp.where(round_idx == 0, 0.0, values)
    chosen = queries.oversample_select(key_s, values, n * c.oversample, max_round)
    return first[chosen], second[chosen]


def _append(c: OnlineConfig, labels: DeviceLabels, pool: DevicePool, first: Array,
            second: Array, lab: oracles.Labels, n: Array) -> DeviceLabels:
    """The first ``n`` labelled queries into rows ``count …``; every 1/valid_fraction-th
    (by position in the run) is held out."""
    pos = labels.count + jnp.arange(first.shape[0])
    # Rows past n go to an index past the end, which mode="drop" discards.
    rows = jnp.where(jnp.arange(first.shape[0]) < n, pos, labels.keep.shape[0])
    every = int(round(1 / c.valid_fraction)) if c.valid_fraction > 0 else 0
    split = (pos % every == every - 1) if every else jnp.zeros(pos.shape, bool)
    new = pairs.gather(pool, first, second, lab.label)
    put = lambda buf, x: buf.at[rows].set(x.astype(buf.dtype), mode="drop")
    batch = PairBatch(*(put(b, x) for b, x in zip(labels.pairs[:7], new[:7], strict=True)))
    return DeviceLabels(pairs=batch, keep=put(labels.keep, lab.keep),
                        split=put(labels.split, split), count=labels.count + n)


def _weights(labels: DeviceLabels, part: int) -> Array:
    filled = jnp.arange(labels.keep.shape[0]) < labels.count
    return (filled & (labels.keep > 0) & (labels.split == part)).astype(jnp.float32)


def _refit(c: OnlineConfig, fit_config: rm.RewardModelConfig, model: rm.RewardModel,
           key: PRNGKey, labels: DeviceLabels, reward: Any, round_idx: Array,
           learning_rate: Array) -> tuple[Any, Metrics]:
    """Warm-started fits on the training labels (round 0: ``initial_fit_steps`` in all)."""
    train = labels.pairs._replace(weight=_weights(labels, 0))
    optimizer = rm.default_optimizer(fit_config, learning_rate)
    repeats = -(-c.initial_fit_steps // fit_config.num_steps)
    members = fit_config.ensemble_size

    def one(i: Array, carry: tuple[Any, Array, Array]) -> tuple[Any, Array, Array]:
        fitted = fit_loop.fit(jax.random.fold_in(key, i), fit_config, train, None,
                              optimizer=optimizer, network=model.network, init_params=carry[0])
        return (fitted.state.params, fitted.metrics["train_loss"][-1],
                fitted.metrics["train_accuracy"][-1])

    zeros = jnp.zeros((members,), jnp.float32)
    num_fits = jnp.where(round_idx == 0, repeats, 1)
    params, loss, accuracy = jax.lax.fori_loop(0, num_fits, one, (reward.params, zeros, zeros))
    reward = reward.replace(params=params, step=reward.step + num_fits * fit_config.num_steps)
    metrics = {"fit_train_loss": jnp.mean(loss), "fit_train_accuracy": jnp.mean(accuracy)}
    valid = labels.pairs._replace(weight=_weights(labels, 1))
    accuracy = jnp.mean(rm.evaluate(model, reward, valid)["accuracy"])
    metrics["valid_accuracy"] = jnp.where(jnp.sum(valid.weight) > 0, accuracy, jnp.nan)
    return reward, metrics


def _heldout(c: OnlineConfig, model: rm.RewardModel, reward: Any, key: PRNGKey, segs: Any
             ) -> Array:
    """Accuracy of r̂ on fresh pairs of the newest rollout's segments, rational PR oracle."""
    if c.heldout_queries == 0:
        return jnp.float32(jnp.nan)
    k_pairs, k_label = jax.random.split(key)
    first, second = queries.uniform_pairs(k_pairs, segs.obs.shape[0], c.heldout_queries)
    lab = oracles.label_traced(oracles.OracleConfig(), k_label, segs, first, second)
    score = rm.segment_scores(model, reward, segs.obs, segs.action, segs.mask)
    correct, total = evaluation.accuracy_sums(score[first], score[second], lab.label)
    return jnp.where(total > 0, correct / jnp.maximum(total, 1.0), jnp.nan)


def _round_metrics(metrics: Metrics, fit_metrics: Metrics, state: OnlineState, n: Array
                   ) -> Metrics:
    """One round's record: PPO means over its updates, the refit's values (NaN: none)."""
    episodes = metrics["train_episodes"]
    total = jnp.sum(episodes)
    returns = jnp.sum(jnp.where(episodes > 0, metrics["train_episode_return"] * episodes, 0.0))
    out = {name: fit_metrics[name][0] for name in FIT_METRICS}
    out.update(
        labels=n, labels_used=state.labels.count,
        true_reward=jnp.mean(metrics["true_reward"]),
        proxy_reward=jnp.mean(metrics["proxy_reward"]),
        value_loss=metrics["value_loss"][-1],
        train_episodes=total,
        train_episode_return=jnp.where(total > 0, returns / jnp.maximum(total, 1), jnp.nan),
        nonfinite=jnp.any(metrics["nonfinite"]))
    return out


@functools.lru_cache(maxsize=4)
def _cached(config: OnlineConfig, ppo_config: ppo.PPOConfig,
            reward_config: rm.RewardModelConfig, oracle: oracles.OracleConfig,
            solver: SolverOptions | None) -> tuple[OnlineTrainer, Any, Any]:
    trainer = make_trainer(config, ppo_config, reward_config, oracle, solver=solver)
    return trainer, jax.jit(trainer.init), jax.jit(trainer.round)


def jitted_trainer(config: OnlineConfig, ppo_config: ppo.PPOConfig,
                   reward_config: rm.RewardModelConfig, oracle: oracles.OracleConfig,
                   solver: SolverOptions | None = GPU
                   ) -> tuple[OnlineTrainer, Callable[..., Any], Callable[..., Any]]:
    """``(trainer, jit(init), jit(round))``, cached: equal settings compile once per process.

    Settings the computation does not depend on (seed, output folder,
    evaluation, progress, threads) do not key the cache.
    """
    shape = dataclasses.replace(config, seed=0, out_dir="", eval_every=0, eval_episodes=1,
                                progress=False, num_threads=None, checkpoint_every=1)
    check_supported(config, oracle)
    return _cached(shape, ppo_config, reward_config, oracle, solver)


__all__ = [
    "DeviceLabels", "DevicePool", "OnlineInputs", "OnlineState", "OnlineTrainer",
    "check_supported", "default_inputs", "jitted_trainer", "make_trainer", "ppo_train_config",
]
