"""The online preference loop on MJX, a whole round in one jit (for GPUs).

The online core's round (:mod:`prefrl.loops.online.core`) inside the compiled
program of :mod:`prefrl.loops.ppo_mjx`, with every buffer on the device:

``make_trainer(config, ppo_config, reward_config, oracle) -> OnlineTrainer(init, round, train)``

- ``round(state, r) -> (state, metrics)`` is ``refit_every`` PPO iterations
  (``Trainer.collect`` then ``Trainer.update``; the learned reward's parameters
  travel in ``PPOState.reward_params``, so refits never recompile). Each
  rollout joins the pool through ``Core.observe``; on the round's first
  iteration, between its rollout and its update (where the CPU backend
  labels), ``Core.traced_round`` selects, labels with the scripted oracle
  (traced), adds, refits and standardises.
- ``train(key, inputs) -> (state, metrics [R])`` is ``init`` then a
  ``lax.scan`` of ``round`` over all rounds, so ``jax.jit(jax.vmap(train))``
  runs several seeds and hyper-parameter values (:class:`OnlineInputs`) in one
  compiled call.
- :func:`prefrl.loops.online.mjx_run.run` is the host loop over a jitted
  ``round`` behind ``prefrl train online --backend mjx``.

Differences from the CPU backend, all for static shapes or traced code: the
run is a whole number of rounds (``ceil(num_updates / refit_every)``); a round
without labels does not refit; held-out accuracy uses the rational
partial-return oracle only. Not supported (:func:`check_supported` names
them): the regret oracle (``expert``: V_E is not on MJX), host labellers,
``reference``, ``offline_dataset``, ``initial_rollouts > 1``.
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

from prefrl import oracles
from prefrl.envs import parse_task_params
from prefrl.envs.mjx_options import GPU, SolverOptions
from prefrl.envs.tasks import load_model
from prefrl.learners import ppo
from prefrl.learners import reward_model as rm
from prefrl.loops import ppo_mjx
from prefrl.loops.online import core as core_lib
from prefrl.loops.online.config import OnlineConfig, default_reward_config
from prefrl.loops.online.core import OnlineState
from prefrl.loops.ppo import TrainConfig

Array = jax.Array
PRNGKey = jax.Array
Metrics = dict[str, Array]


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


class OnlineTrainer(NamedTuple):
    """Pure functions of one MJX online run (see the module docstring) and its sizes."""

    init: Callable[[PRNGKey, OnlineInputs], OnlineState]
    round: Callable[[OnlineState, Array], tuple[OnlineState, Metrics]]
    train: Callable[[PRNGKey, OnlineInputs], tuple[OnlineState, Metrics]]
    labelled_round: Callable[..., tuple[OnlineState, Metrics]]
    ppo: ppo_mjx.Trainer
    core: core_lib.Core
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
    if config.policy_learner != "ppo":
        refused.append(f"--policy-learner {config.policy_learner} (MJX runs PPO)")
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


def round_counts(config: OnlineConfig) -> tuple[int, np.ndarray]:
    """``(num_rounds, counts [R])``: the schedule padded to whole rounds."""
    num_rounds = math.ceil(config.num_updates / config.refit_every)
    counts = config.schedule_counts()
    return num_rounds, np.concatenate([counts, np.zeros(num_rounds - counts.size, np.int64)])


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
    num_rounds, counts = round_counts(c)
    acting = ppo.make_acting(ppo_config, parse_task_params(c.task, c.task_param).act_dim)
    core = core_lib.make_core(c, reward_config, policy_discount=ppo_config.discount,
                              oracle_discount=oracle.discount,
                              critic=lambda ts, obs: acting.value(ts.ppo, obs), counts=counts)
    trainer = ppo_mjx.make_trainer(ppo_train_config(c, num_rounds * c.refit_every), ppo_config,
                                   solver=solver, reward_fn=rm.PPOReward(core.model))
    spec = parse_task_params(c.task, c.task_param)
    counts_dev = jnp.asarray(counts, jnp.int32)
    physics = load_model()
    nq, nv = int(physics.nq), int(physics.nv)

    def init(key: PRNGKey, inputs: OnlineInputs) -> OnlineState:
        ppo_key, core_key = jax.random.split(key)
        state = core.init(core_key, None, spec.obs_dim, spec.act_dim, nq, nv)
        ts = trainer.init(ppo_key, ppo_mjx.RunInputs(
            learning_rate=inputs.ppo_learning_rate, kl_coef=inputs.kl_coef,
            reward_params=state.reward))
        return state.replace(policy=ts, inputs=inputs)

    def labelled_round(state: OnlineState, traj: Any, rows: Array, round_idx: Array
                       ) -> tuple[OnlineState, Metrics]:
        """The core's traced round (the scripted oracle, β an input); r̂ then reaches PPO."""
        labeller = core_lib.scripted_labeller(oracle,
                                              temperature=state.inputs.oracle_temperature)
        state, metrics = core.traced_round(state, labeller, round_idx, counts_dev[round_idx],
                                           traj, rows, state.inputs.reward_learning_rate)
        ts = state.policy
        return state.replace(policy=ts.replace(ppo=ts.ppo.replace(
            reward_params=state.reward))), metrics

    def round_fn(state: OnlineState, round_idx: Array) -> tuple[OnlineState, Metrics]:
        round_idx = jnp.asarray(round_idx, jnp.int32)
        labelled = counts_dev[round_idx] > 0

        def iteration(carry: OnlineState, i: Array) -> tuple[OnlineState, tuple[Metrics, ...]]:
            ts, traj = trainer.collect(carry.policy)
            carry, rows = core.observe(carry.replace(policy=ts), traj,
                                       round_idx * c.refit_every + i + 1)
            shapes = jax.eval_shape(labelled_round, carry, traj, rows, round_idx)[1]
            # i and round_idx are not batched under vmap: a real cond, the refit runs once.
            carry, fit_metrics = jax.lax.cond(
                (i == 0) & labelled, lambda: labelled_round(carry, traj, rows, round_idx),
                lambda: (carry, {n: jnp.full(s.shape, jnp.nan, s.dtype)
                                 for n, s in shapes.items()}))
            ts, metrics = trainer.update(carry.policy, traj)
            return carry.replace(policy=ts), (metrics, fit_metrics)

        state, (metrics, fit_metrics) = jax.lax.scan(iteration, state,
                                                     jnp.arange(c.refit_every))
        return state, _round_metrics(metrics, fit_metrics, state, counts_dev[round_idx])

    def train(key: PRNGKey, inputs: OnlineInputs) -> tuple[OnlineState, Metrics]:
        return jax.lax.scan(round_fn, init(key, inputs), jnp.arange(num_rounds))

    return OnlineTrainer(init=init, round=round_fn, train=train,
                         labelled_round=labelled_round, ppo=trainer, core=core,
                         model=core.model, counts=counts, num_rounds=num_rounds,
                         segments_per_rollout=core.sizes.segments_per_rollout)


def _round_metrics(metrics: Metrics, fit_metrics: Metrics, state: OnlineState, n: Array
                   ) -> Metrics:
    """One round's record: PPO means over its updates, the refit's values (NaN: none)."""
    episodes = metrics["train_episodes"]
    total = jnp.sum(episodes)
    returns = jnp.sum(jnp.where(episodes > 0, metrics["train_episode_return"] * episodes, 0.0))
    out = {name: value[0] for name, value in fit_metrics.items()}
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
    "OnlineInputs", "OnlineTrainer", "check_supported", "default_inputs", "jitted_trainer",
    "make_trainer", "ppo_train_config", "round_counts",
]
