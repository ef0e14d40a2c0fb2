"""Online preference-based RL on the C engine (Christiano et al. 2017): the host loop.

Each PPO update (docs/design.md §4b):

1. **A rollout** of the current policy on the batched C-engine environments,
   cut into the segment pool (:meth:`prefrl.loops.online.core.Core.observe`).
   The true rewards travel along for the oracle only.
2. **A labelling round** every ``refit_every`` updates, the online core's round
   (:mod:`prefrl.loops.online.core`): a jitted select, a labeller (the
   scripted oracles, jitted; or host code: a Monte-Carlo oracle, a dataset, a
   person), a jitted add → refit → standardise. ``n`` follows a
   :mod:`prefrl.loops.schedule` with an exact budget; queries the oracle
   skips count against it.
3. **The policy learner's update** (registry.POLICY_LEARNERS; PPO by default)
   on the newest rollout with the current r̂, whose parameters travel in its
   state: a refit never recompiles the update.

**The critic across refits.** Each refit changes the reward PPO optimises.
PPO's PopArt statistics rescale V when the *scale* of the value targets moves,
but V still predicts returns of the old reward; the critic relearns within a
few updates. Standardising r̂ on the current policy's state-actions keeps
consecutive rewards on the same scale, so the jump is in shape only; per-round
records log PPO's value loss on the updates just before and just after each
refit (``value_loss_before``/``value_loss_after``).

**Defaults, and why uniform selection.** Tuned on seeds 10 and 11 only (the
benchmark reports seeds 0–4). With ensemble *disagreement* and a 4096-segment
pool, ``target-speed`` failed: the policy overshot v* = 2 (4.8 m/s, return
−3173, worse than random) because every member had learned "faster is better"
from the early, slow segments, so the members *agreed* on the overshooting
segments and disagreement kept querying old ones; held-out accuracy on fresh
queries from the current policy fell to 0.16–0.4 while training accuracy was 1.
Uniform queries from a 1024-segment pool (the last ~8 PPO updates at 64 × 64)
ask about what the policy does now.

Per round, ``rounds.jsonl`` records labels used, the true and proxy reward of
the newest rollout, the Pearson correlation of r̂ with r on it, held-out
accuracy on fresh queries from the current policy under each rational oracle
(labelled separately, never trained on, outside the budget), and the wall
time split between rollouts, the policy's updates, selection/labelling and
fitting. ``last.npz`` is the whole :class:`~prefrl.loops.online.core.OnlineState`
through the one file scheme plus the environments' arrays: a killed run resumes
bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from prefrl import oracles
from prefrl.envs import parse_task_params
from prefrl.io import atomic_write_json
from prefrl.learners import ppo
from prefrl.learners import reward_model as rm
from prefrl.loops.online import core as core_lib
from prefrl.loops.online import files, inputs, registry
from prefrl.loops.online.config import OnlineConfig, default_reward_config
from prefrl.loops.online.files import RunLog
from prefrl.rollout import BatchedEnv, evaluate_policy


class OnlineResult(dict):
    """``final`` evaluation, per-round ``rounds``, ``evaluations``, timings and the state."""


class _Built(NamedTuple):
    """What one run's settings compile to (cached: runs with equal settings share it)."""

    core: core_lib.Core
    policy: registry.PolicyLearner
    labeller: core_lib.Labeller
    observe: Callable[..., Any]
    select: Callable[..., Any]
    label: Callable[..., Any]
    add_refit: Callable[..., Any]
    heldout: Callable[..., Any]
    update: Callable[..., Any]
    init: Callable[..., Any]


def train(
    config: OnlineConfig,
    ppo_config: ppo.PPOConfig | None = None,
    reward_config: rm.RewardModelConfig | None = None,
    oracle: oracles.OracleConfig | None = None,
    *,
    env_factory: Callable[[int, int], Any] | None = None,
    labeller: core_lib.Labeller | None = None,
    log: Callable[[str], None] | None = None,
    callback: Callable[[core_lib.OnlineState, dict[str, Any]], None] | None = None,
    stop_after_updates: int | None = None,
    policy_config: Any = None,
) -> OnlineResult:
    """Run the online loop on the C engine; returns the final evaluation, records and state.

    ``env_factory(num_envs, seed)`` builds environments (default: the C-engine
    :class:`prefrl.rollout.BatchedEnv` of ``config.task``). ``labeller``:
    where labels come from (default: the scripted ``oracle``,
    :func:`~prefrl.loops.online.core.scripted_labeller`). With
    ``config.out_dir``, writes ``rounds.jsonl``, ``evals.jsonl``,
    ``result.json`` and, every ``checkpoint_every`` updates, ``last.npz``,
    from which a killed run resumes exactly (``config.resume``).
    ``callback(state, record)`` is called after each round, before the record
    is written (tests, custom logs: it may add fields, e.g. who labelled).
    A host labeller's rounds (``labeller.traced`` False: a person) are each
    preceded by a checkpoint, so a run killed while it waits resumes there.
    ``stop_after_updates`` stops early as if killed (tests of resume).
    ``policy_config``: the policy learner's own settings (its registered
    config class, e.g. :class:`prefrl.learners.cpl.OnlineCPLConfig`; default
    its defaults; PPO reads ``ppo_config``). ``config.oracle_value="mc"``
    labels with the Monte-Carlo regret oracle (:mod:`prefrl.loops.online.mc`).
    Settings that cannot work are refused before anything runs or is written.
    """
    if reward_config is not None and not registry.reward_learner(config.reward_learner).fits:
        raise ValueError(f"reward_learner={config.reward_learner!r} fits no reward model (policy "
                         f"learner {config.policy_learner!r} learns from the labels directly): "
                         "pass no reward_config")
    ppo_config = ppo.PPOConfig() if ppo_config is None else ppo_config
    reward_config = default_reward_config() if reward_config is None else reward_config
    oracle = oracles.OracleConfig() if oracle is None else oracle
    spec = registry.POLICY_LEARNERS[config.policy_learner]
    if policy_config is None and spec.config is not None:
        policy_config = spec.config()
    if spec.config is not None and not isinstance(policy_config, spec.config):
        raise TypeError(f"policy_learner={config.policy_learner!r} takes a "
                        f"{spec.config.__name__}, got {type(policy_config).__name__}")
    if labeller is None and spec.check is not None:
        spec.check(oracle)
    config = registry.resolve(config, policy_config)
    config.round_updates()  # ValueError when label_from_step leaves no round
    task = parse_task_params(config.task, config.task_param)
    own_labeller = labeller is None and config.oracle_value == "mc"
    if own_labeller:
        from prefrl.loops.online.mc import mc_labeller

        labeller = mc_labeller(config, oracle, task, num_threads=config.num_threads)
    env = eval_env = None
    try:
        if env_factory is None:
            env_factory = functools.partial(_batched_env, task, config.num_threads)
        env = env_factory(config.num_envs, config.seed)
        eval_env = env_factory(config.eval_episodes, config.seed + 1_000_003)
        dims = (int(env.obs_dim), int(env.act_dim), int(env.nq), int(env.nv))
        built = _build(_shape_key(config), ppo_config, reward_config, oracle, dims, labeller,
                       policy_config)
        return _train(config, ppo_config, reward_config, oracle, built, env, eval_env, task,
                      dims, log, callback, stop_after_updates, policy_config)
    finally:
        for e in (env, eval_env):
            if e is not None and hasattr(e, "close"):
                e.close()
        if own_labeller and labeller.close is not None:
            labeller.close()


def _train(config: OnlineConfig, ppo_config: ppo.PPOConfig,
           reward_config: rm.RewardModelConfig, oracle: oracles.OracleConfig, built: _Built,
           env: Any, eval_env: Any, task: Any, dims: tuple[int, int, int, int],
           log: Callable[[str], None] | None,
           callback: Callable[[core_lib.OnlineState, dict[str, Any]], None] | None,
           stop_after_updates: int | None, policy_config: Any = None) -> OnlineResult:
    c, core, policy = config, built.core, built.policy
    names = ("policy", "rollout", "core", "eval", "initial")
    keys = dict(zip(names, jax.random.split(jax.random.key(c.seed), len(names)), strict=True))
    fresh = built.init(keys["core"], keys["policy"])
    out_dir = Path(c.out_dir) if c.out_dir else None
    settings = files.run_settings(c, ppo_config, reward_config, oracle, policy_config)
    records = RunLog()
    state, start = files.start(out_dir, c, settings, fresh, policy, env, eval_env, records,
                               log)
    if start == 0:
        env.reset()
        for extra in range(1, c.initial_rollouts):
            key = jax.random.fold_in(jax.random.fold_in(keys["initial"], extra), 0)
            traj = env.rollout(policy.behaviour(state.policy), c.rollout_steps, key)
            state, _ = built.observe(state, jax.tree.map(jnp.asarray, traj), jnp.int32(0))
    round_at = {int(u): r for r, u in enumerate(c.round_updates())}
    bar = files.progress_bar(c, start)
    t_start = time.perf_counter()
    update_idx = start
    try:
        for update_idx in range(start + 1, c.num_updates + 1):
            if stop_after_updates is not None and update_idx > stop_after_updates:
                update_idx -= 1
                break
            state = _iteration(c, built, state, keys, update_idx, round_at.get(update_idx),
                               env, eval_env, task, records, out_dir, log, callback)
            # A host labeller may wait on a person: a checkpoint just before its round lets a
            # killed run resume at that round (its answers kept by the labeller).
            next_round = round_at.get(update_idx + 1)
            before_host_round = (not built.labeller.traced and next_round is not None
                                 and core.counts[next_round] > 0)
            if out_dir is not None and (update_idx % c.checkpoint_every == 0
                                        or update_idx == c.num_updates or before_host_round):
                files.save(out_dir / "last.npz", state, policy, env, eval_env, settings,
                           records, update_idx, time.perf_counter() - t_start)
            if bar is not None:
                bar.update(1)
                score = f"{records.evals[-1]['mean_return']:.0f}" if records.evals else "-"
                bar.set_postfix({"labels": records.labels_used, "eval": score})
    finally:
        if bar is not None:
            bar.close()
    wall = records.wall_before + time.perf_counter() - t_start
    result = OnlineResult(
        final=records.evals[-1] if records.evals else {}, rounds=records.rounds,
        evaluations=records.evals, history=records.history, labels_used=records.labels_used,
        wall_s=wall, timing=dict(records.timing), env_steps=update_idx * c.steps_per_update,
        updates=update_idx, schedule=[int(x) for x in core.counts], state=state,
        ppo_state=state.policy, reward_state=state.reward, reward_model=core.model,
        ppo_update=built.update)
    if out_dir is not None and update_idx == c.num_updates:
        atomic_write_json(out_dir / "result.json", files.summary(result))
    return result


def _iteration(c: OnlineConfig, built: _Built, state: core_lib.OnlineState,
               keys: Mapping[str, jax.Array], update_idx: int, round_idx: int | None,
               env: Any, eval_env: Any, task: Any, records: RunLog, out_dir: Path | None,
               log: Callable[[str], None] | None,
               callback: Callable[[core_lib.OnlineState, dict[str, Any]], None] | None
               ) -> core_lib.OnlineState:
    """One policy update: rollout, a labelling round when due, the update, an evaluation."""
    policy, timing = built.policy, records.timing
    t0 = time.perf_counter()
    traj = env.rollout(policy.behaviour(state.policy), c.rollout_steps,
                       jax.random.fold_in(keys["rollout"], update_idx))
    traj = jax.tree.map(jnp.asarray, traj)
    timing["rollout_s"] += time.perf_counter() - t0
    state, rows = built.observe(state, traj, jnp.int32(update_idx))
    record = None
    if round_idx is not None:
        state, record = _round(c, built, state, round_idx, update_idx, traj, rows, records)
        records.rounds.append(record)
    t0 = time.perf_counter()
    policy_state, metrics = built.update(state.policy, traj)
    metrics = jax.device_get(metrics)
    state = state.replace(policy=policy_state)
    timing["ppo_s"] += time.perf_counter() - t0
    if bool(metrics.get("nonfinite", False)):
        raise ValueError(f"policy update {update_idx} produced non-finite values")
    records.history.append({"update": update_idx, **{
        k: float(metrics[k]) for k in ("value_loss", "proxy_reward", "true_reward")
        if k in metrics}})
    if record is not None:
        # Logged after the update, so the record holds the policy's view of the new reward.
        if len(records.history) >= 1 and "value_loss" in records.history[-1]:
            record["value_loss_after"] = records.history[-1]["value_loss"]
            if len(records.history) >= 2:
                record["value_loss_before"] = records.history[-2]["value_loss"]
        if "proxy_reward" in records.history[-1]:
            record["proxy_reward"] = records.history[-1]["proxy_reward"]
        if callback is not None:  # before the record is written: it may add to it
            callback(state, record)
        files.write_record(out_dir, "rounds.jsonl", record, log)
    if update_idx == c.num_updates or (c.eval_every and update_idx % c.eval_every == 0):
        t0 = time.perf_counter()
        result = evaluate_policy(eval_env, policy.greedy(state.policy),
                                 jax.random.fold_in(keys["eval"], update_idx),
                                 target_speed=task.params_dict.get("target_speed"))
        timing["eval_s"] += time.perf_counter() - t0
        result.update(update=update_idx, env_steps=update_idx * c.steps_per_update,
                      labels_used=records.labels_used)
        records.evals.append(result)
        files.write_record(out_dir, "evals.jsonl",
                           {k: v for k, v in result.items() if k != "returns"}, None)
    return state


def _round(c: OnlineConfig, built: _Built, state: core_lib.OnlineState, round_idx: int,
           update_idx: int, traj: Any, rows: jax.Array, records: RunLog
           ) -> tuple[core_lib.OnlineState, dict[str, Any]]:
    """Select, label, add, refit: the core's round with the labeller on the host or traced."""
    core, timing = built.core, records.timing
    n = int(core.counts[round_idx])
    r = jnp.int32(round_idx)
    k_sel, k_lab, k_fit, k_held = core.round_keys(state, r)
    t0 = time.perf_counter()
    record: dict[str, Any] = {"round": round_idx, "update": update_idx,
                              "env_steps": (update_idx - 1) * c.steps_per_update}
    items = None
    if n > 0 and c.offline_dataset:
        items = inputs.dataset_items(c, core, n, r)
    elif n > 0:
        first, second = built.select(state, k_sel, jnp.int32(n))
        if built.labeller.traced:
            labels = built.label(k_lab, state.pool.data, first, second)
        else:  # host labellers (a Monte-Carlo oracle, a person) see only the n asked
            pad = lambda x: jnp.pad(jnp.asarray(x), (0, core.sizes.max_round - n))
            labels = jax.tree.map(pad, built.label(k_lab, state.pool.data, first[:n],
                                                   second[:n]))
        items = core_lib.label_items(state.pool.data, jnp.asarray(first), jnp.asarray(second),
                                     jax.tree.map(jnp.asarray, labels), r)
        record["skipped"] = int(n - np.sum(np.asarray(labels.keep)[:n]))
    if items is not None:
        records.labels_used += n
    timing["select_label_s"] += time.perf_counter() - t0
    record.update(labels=n, labels_used=records.labels_used,
                  true_reward=float(np.mean(np.asarray(traj.reward))))
    if n > 0 or not bool(state.fitted):
        t0 = time.perf_counter()
        if items is None:  # a refit with no new labels (round 0 of an empty schedule)
            items = jax.tree.map(lambda x: jnp.zeros((core.sizes.max_round, *x.shape[1:]),
                                                     x.dtype), state.labels.data)
        state, metrics = built.add_refit(state, items, jnp.int32(n), k_fit, traj.obs,
                                         traj.action, traj.reward)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if metrics.pop("fit_nonfinite"):
            raise ValueError(f"the reward fit of round {round_idx} went non-finite "
                             "(lower the reward learning rate or check the labels)")
        policy_state = built.policy.set_reward(state.policy, state.reward)
        if built.policy.set_labels is not None:
            policy_state = built.policy.set_labels(policy_state, state.labels)
        state = state.replace(policy=policy_state)
        timing["fit_s"] += time.perf_counter() - t0
        record.update({k: v for k, v in metrics.items() if np.isfinite(v)
                       or k == "reward_pearson"})
    t0 = time.perf_counter()
    if c.heldout_queries and bool(state.fitted):
        record.update({k: float(v) for k, v in
                       jax.device_get(built.heldout(state, k_held, rows)).items()})
    timing["select_label_s"] += time.perf_counter() - t0
    if built.labeller.cost is not None:  # e.g. the MC oracle's env steps since the last round
        record.update(built.labeller.cost())
    record["wall"] = dict(timing)
    return state, record


# --------------------------------------------------------------------------- compile once


def _shape_key(config: OnlineConfig) -> OnlineConfig:
    # Settings that do not change the compiled functions (seed included) do not key the cache.
    return dataclasses.replace(config, seed=0, out_dir="", eval_every=0, eval_episodes=1,
                               progress=False, num_threads=None, checkpoint_every=1,
                               resume=False)


def _build(config: OnlineConfig, ppo_config: ppo.PPOConfig,
           reward_config: rm.RewardModelConfig, oracle: oracles.OracleConfig,
           dims: tuple[int, int, int, int], labeller: core_lib.Labeller | None,
           policy_config: Any = None) -> _Built:
    if labeller is None:
        return _build_cached(config, ppo_config, reward_config, oracle, dims, None,
                             policy_config)
    try:
        hash(labeller)
    except TypeError:  # a labeller holding unhashable values: built for this run only
        return _build_uncached(config, ppo_config, reward_config, oracle, dims, labeller,
                               policy_config)
    # The same labeller object again (a run resumed in one process) compiles nothing anew.
    return _build_cached(config, ppo_config, reward_config, oracle, dims, labeller,
                         policy_config)


@functools.lru_cache(maxsize=8)
def _build_cached(config: OnlineConfig, ppo_config: ppo.PPOConfig,
                  reward_config: rm.RewardModelConfig, oracle: oracles.OracleConfig,
                  dims: tuple[int, int, int, int],
                  labeller: core_lib.Labeller | None = None, policy_config: Any = None
                  ) -> _Built:
    return _build_uncached(config, ppo_config, reward_config, oracle, dims, labeller,
                           policy_config)


def _build_uncached(config: OnlineConfig, ppo_config: ppo.PPOConfig,
                    reward_config: rm.RewardModelConfig, oracle: oracles.OracleConfig,
                    dims: tuple[int, int, int, int], labeller: core_lib.Labeller | None,
                    policy_config: Any = None) -> _Built:
    obs_dim, act_dim, nq, nv = dims
    if labeller is None:  # a given labeller brings its own values (e.g. the MC oracle's)
        value_fn, critic_discount = inputs.expert_critic(config, oracle, obs_dim)
        labeller = core_lib.scripted_labeller(oracle, value_fn, critic_discount)
    learner = registry.reward_learner(config.reward_learner)
    fit_config = dataclasses.replace(
        learner.configure(reward_config, ppo_config.discount, oracle.discount), normalize=False)
    spec = registry.POLICY_LEARNERS[config.policy_learner]
    extra = {} if spec.config is None else {"policy_config": policy_config}
    policy = spec.make(config=config, learner_config=ppo_config, obs_dim=obs_dim,
                       act_dim=act_dim, num_updates=config.num_updates,
                       reward_model=rm.model(fit_config),
                       reference=inputs.reference(config, ppo_config), **extra)
    core = core_lib.make_core(config, reward_config, policy_discount=policy.discount,
                              oracle_discount=oracle.discount, critic=policy.critic,
                              policy_score=policy.segment_score)

    def init(core_key: jax.Array, policy_key: jax.Array) -> core_lib.OnlineState:
        state = core.init(core_key, policy.init(policy_key), obs_dim, act_dim, nq, nv)
        # The unfitted r̂ from the start: a learner that updates before the first round
        # (PEBBLE's pre-training) traces its reward with arrays, not None.
        return state.replace(policy=policy.set_reward(state.policy, state.reward))

    def add_refit(state: core_lib.OnlineState, items: core_lib.LabelItem, n: jax.Array,
                  key: jax.Array, obs: jax.Array, action: jax.Array, reward: jax.Array
                  ) -> tuple[core_lib.OnlineState, dict[str, jax.Array]]:
        return core.refit(core.add(state, items, n), key, obs, action, reward)

    def heldout_traced(state: core_lib.OnlineState, key: jax.Array, rows: jax.Array
                       ) -> dict[str, jax.Array]:
        first, second = core.heldout_pairs(key, rows)
        return {f"heldout_acc_{name}": core.heldout_accuracy(state, first, second, lab.label)
                for name, lab in labeller.heldout(key, state.pool.data, first, second).items()}

    if labeller.traced:
        label, heldout = jax.jit(labeller.label), jax.jit(heldout_traced)
    else:
        label = _host_labels(labeller.label)
        heldout = _host_heldout(core, labeller)
    return _Built(core=core, policy=policy, labeller=labeller, observe=jax.jit(core.observe),
                  select=jax.jit(core.select), label=label, add_refit=jax.jit(add_refit),
                  heldout=heldout, update=jax.jit(policy.update), init=jax.jit(init))


def _host_labels(label: Callable[..., oracles.Labels]) -> Callable[..., oracles.Labels]:
    def host(key: jax.Array, pool: Any, first: jax.Array, second: jax.Array) -> oracles.Labels:
        to_np = lambda t: jax.tree.map(np.asarray, jax.device_get(t))
        return label(key, to_np(pool), np.asarray(first), np.asarray(second))
    return host


def _host_heldout(core: core_lib.Core, labeller: core_lib.Labeller) -> Callable[..., Any]:
    pairs_fn, acc_fn = jax.jit(core.heldout_pairs), jax.jit(core.heldout_accuracy)

    def host(state: core_lib.OnlineState, key: jax.Array, rows: jax.Array) -> dict[str, Any]:
        first, second = pairs_fn(key, rows)
        pool = jax.tree.map(np.asarray, jax.device_get(state.pool.data))
        out = labeller.heldout(key, pool, np.asarray(first), np.asarray(second))
        return {f"heldout_acc_{name}": acc_fn(state, first, second, jnp.asarray(lab.label))
                for name, lab in out.items()}
    return host


def _batched_env(task: Any, num_threads: int | None, num_envs: int, seed: int) -> Any:
    return BatchedEnv(task, num_envs=num_envs, seed=seed, num_threads=num_threads,
                      dtype=np.float32)


__all__ = ["OnlineResult", "train"]
