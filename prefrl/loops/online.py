"""Online preference-based RL (Christiano et al. 2017, "Deep RL from human preferences").

One run alternates, on the batched C-engine environments:

1. **RL on the current learned reward.** PPO collects a ``[T, B]`` rollout
   with its current policy and updates on ``r̂(s, a)``, computed *inside* the
   jitted PPO update from ``state.reward_params`` — a refit replaces those
   parameters and never recompiles the update (docs/design.md §4b).
2. **A candidate pool from the current policy.** Every rollout is cut into
   segments of ``segment_length`` steps that join a bounded FIFO pool
   (:class:`prefrl.data.pool.SegmentPool`). The true rewards travel along for
   the oracle only; nothing the learner sees is computed from them.
3. **Query selection** every ``refit_every`` PPO updates (a *round*):
   ``oversample × n`` uniform candidate pairs from the pool, of which the ``n``
   with the largest ensemble disagreement (variance of P(σ¹≻σ²) across
   members) or entropy are kept (B-Pref's oversample-then-select), or ``n``
   uniform ones.
4. **Labels** from any project oracle (:func:`prefrl.oracles.label_queries`,
   the same function the offline pipeline uses, every irrationality
   included). ``n`` follows a :mod:`prefrl.loops.schedule` with an exact
   budget; queries the oracle skips count against it.
5. **A refit** of the reward ensemble on every label so far: warm start from
   the current members, a fresh bootstrap resample per member, a held-out
   validation slice (every ``1/valid_fraction``-th label), then
   standardisation of r̂ to mean 0 / std 1 on the newest rollout's
   state-actions, so PPO always sees a unit-scale reward.

**The critic across refits.** Each refit changes the reward PPO optimises.
PPO's PopArt statistics rescale V when the *scale* of the value targets moves,
but V still predicts returns of the old reward; the critic relearns within a
few updates (its targets are GAE returns of the new reward). Standardising r̂
on the current policy's state-actions keeps consecutive rewards on the same
scale, so the jump is in shape only; per-round records log PPO's value loss
on the updates just before and just after each refit (``value_loss_before``/
``value_loss_after``) to show its size.

**Defaults, and why uniform selection.** Tuned on seeds 10 and 11 only (the
benchmark reports seeds 0–4). With ensemble *disagreement* and a 4096-segment
pool, ``target-speed`` failed: the policy overshot v* = 2 (4.8 m/s, return
−3173, worse than random) because every member had learned "faster is better"
from the early, slow segments, so the members *agreed* on the overshooting
segments and disagreement kept querying old ones; held-out accuracy on fresh
queries from the current policy fell to 0.16–0.4 while training accuracy was 1.
Uniform queries from a 1024-segment pool (the last ~8 PPO updates at 64 × 64)
ask about what the policy does now: ``target-speed`` −408 at 1 M steps
(normalised 0.89), and on ``run`` 6301 / 6485 (disagreement: 6782 / 6557).

Per round, ``rounds.jsonl`` records labels used, the true and proxy reward of
the newest rollout, the Pearson correlation of r̂ with r on it, held-out
accuracy on fresh queries from the current policy under each oracle
(labelled separately, never trained on, outside the budget), and the wall
time split between rollouts, PPO, selection/labelling and fitting.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prefrl import evaluation, oracles
from prefrl.config import field
from prefrl.data import pairs, queries
from prefrl.data.pool import LabelBuffer, SegmentPool
from prefrl.data.segments import segment
from prefrl.learners import ppo
from prefrl.learners import reward_model as rm
from prefrl.loops import fit as fit_loop
from prefrl.loops.schedule import SCHEDULES, label_schedule
from prefrl.policies import Policy, policy_fn
from prefrl.rollout import evaluate_policy

SELECTIONS = ("uniform", "disagreement", "entropy")


@dataclasses.dataclass(frozen=True)
class OnlineConfig:
    """The loop's settings (PPO, reward model and oracle have configs of their own)."""

    task: str = field("run", "task name: run, run-backward, target-speed")
    total_steps: int = field(1_000_000, "environment steps of PPO")
    num_envs: int = field(64, "parallel environments (B)")
    rollout_steps: int = field(64, "steps per environment per PPO update (T)")
    seed: int = field(0, "seed of everything in the run")
    label_budget: int = field(1000, "labels of the whole run (skipped queries count)")
    schedule: str = field("hyperbolic", "label schedule: constant or hyperbolic")
    initial_fraction: float = field(0.25, "share of the budget labelled before any RL")
    schedule_tau: float = field(250_000.0, "hyperbolic schedule's time constant (env steps)")
    refit_every: int = field(8, "PPO updates per labelling round")
    label_until: float = field(1.0, "fraction of training after which no round is held")
    segment_length: int = field(25, "steps per segment (k)")
    segment_stride: int = field(25, "steps between segment starts in a rollout")
    pool_capacity: int = field(1024, "segments kept in the FIFO candidate pool")
    selection: str = field("uniform", "query selection: uniform, disagreement, entropy")
    oversample: int = field(10, "candidates per selected query (B-Pref)")
    valid_fraction: float = field(0.1, "labels held out for validation (not trained on)")
    initial_fit_steps: int = field(600, "reward-fit updates after the first labels")
    initial_rollouts: int = field(
        1, "rollouts of the initial policy whose segments seed the pool (the first is PPO's)")
    offline_dataset: str = field(
        "", "label the whole budget from this dataset's queries at the start, none online "
        "(the snapshot-pool ablation); '' = online")
    offline_label: str = field("partial_return", "which labels of offline_dataset to use")
    heldout_queries: int = field(128, "fresh evaluation queries per round (not in the budget)")
    expert: str = field("", "expert PPO checkpoint whose critic V_E the regret oracle uses")
    reference: str = field("", "frozen π_ref (policy file or PPO checkpoint) for PPO's "
                           "KL penalty (kl_ref_coef of the PPO config); '' = none")
    eval_every: int = field(25, "evaluate the policy every this many updates (0: at the end)")
    eval_episodes: int = field(8, "deterministic evaluation episodes")
    out_dir: str = field("", "output folder (rounds.jsonl, evals.jsonl, last.npz); '' = none")
    checkpoint_every: int = field(25, "write out_dir/last.npz every this many updates")
    resume: bool = field(True, "resume from out_dir/last.npz when it exists")
    progress: bool = field(True, "progress bar on a terminal")
    num_threads: int | None = field(None, "physics threads (default: all cores)")

    def __post_init__(self) -> None:
        if self.label_budget < 1:
            raise ValueError(f"label_budget must be >= 1, got {self.label_budget}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; use one of {SCHEDULES}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"unknown selection {self.selection!r}; use one of {SELECTIONS}")
        for name in ("total_steps", "num_envs", "rollout_steps", "refit_every", "segment_length",
                     "segment_stride", "oversample", "initial_fit_steps", "eval_episodes",
                     "initial_rollouts", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.segment_length > self.rollout_steps:
            raise ValueError(f"segment_length {self.segment_length} is longer than the rollout "
                             f"(rollout_steps {self.rollout_steps})")
        if not 0.0 <= self.initial_fraction <= 1.0:
            raise ValueError(f"initial_fraction must be in [0, 1], got {self.initial_fraction}")
        if not 0.0 < self.label_until <= 1.0:
            raise ValueError(f"label_until must be in (0, 1], got {self.label_until}")
        if not 0.0 <= self.valid_fraction < 0.5:
            raise ValueError(f"valid_fraction must be in [0, 0.5), got {self.valid_fraction}")
        if self.heldout_queries < 0 or self.eval_every < 0:
            raise ValueError("heldout_queries and eval_every must be >= 0")
        if self.pool_capacity < 2:
            raise ValueError(f"pool_capacity must be >= 2, got {self.pool_capacity}")

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.rollout_steps

    @property
    def num_updates(self) -> int:
        return max(1, math.ceil(self.total_steps / self.steps_per_update))

    def round_updates(self) -> np.ndarray:
        """PPO updates (1-based) at whose rollout a round is held; round 0 at update 1."""
        last = max(1, int(self.label_until * self.num_updates))
        return np.arange(1, last + 1, self.refit_every)

    def schedule_counts(self) -> np.ndarray:
        """Labels per round (exactly ``label_budget`` in all)."""
        updates = self.round_updates()
        steps = (updates[1:] - 1) * self.steps_per_update
        if self.offline_dataset:
            return np.concatenate([[self.label_budget], np.zeros(len(steps), np.int64)])
        return label_schedule(self.label_budget, steps, kind=self.schedule,
                              initial_fraction=self.initial_fraction, tau=self.schedule_tau)


class OnlineResult(dict):
    """``final`` evaluation, per-round ``rounds``, ``evaluations``, timings and the states."""


# --------------------------------------------------------------------------- the learned reward


def learned_reward(obs: jax.Array, action: jax.Array, next_obs: jax.Array,
                   extras: Mapping[str, Any]) -> jax.Array:
    """PPO's ``reward_fn``: the reward model in ``extras["reward_params"]`` (standardised r̂).

    A module-level function, so PPO's jitted update is shared by every run
    with the same settings; the model's parameters arrive as an argument.
    """
    del next_obs
    return rm.reward_fn(extras["reward_params"])(obs, action)


@jax.jit
def _reward_and_stats(state: Any, obs: jax.Array, action: jax.Array) -> tuple[jax.Array, ...]:
    raw = rm.reward_fn(state.replace(reward_mean=jnp.zeros(()), reward_std=jnp.ones(())))(
        obs, action)
    return raw, jnp.mean(raw), jnp.std(raw)


@jax.jit
def _segment_returns(state: Any, obs: jax.Array, action: jax.Array, mask: jax.Array
                     ) -> jax.Array:
    """``[N]`` partial return of the ensemble-mean r̂ over each segment (for accuracy)."""
    return jnp.sum(rm.reward_fn(state)(obs, action) * mask, axis=-1)


_evaluate = jax.jit(rm.evaluate, static_argnames="chunk")


@functools.partial(jax.jit, static_argnums=1)
def _acquisition(probs: jax.Array, method: str) -> jax.Array:
    return queries.acquisition(probs, method)


@jax.jit
def _pool_probs(state: Any, pool: Any, first: jax.Array, second: jax.Array) -> jax.Array:
    """``[M, C]``: each member's P(σ¹ ≻ σ²) for candidate queries of the pool."""
    batch = pairs.gather(pool, first, second, jnp.zeros(first.shape, jnp.float32))
    return rm.ensemble_preferences(state, batch)


def _for_ppo(state: Any) -> Any:
    # What PPO needs of the reward model: parameters and standardisation (no optimiser).
    return state.replace(opt_state=None)


# --------------------------------------------------------------------------- one run


class _Run:
    """The mutable host state of one online run (environments, buffers, keys, logs)."""

    def __init__(self, config: OnlineConfig, ppo_config: ppo.PPOConfig,
                 reward_config: rm.RewardModelConfig, oracle: oracles.OracleConfig,
                 env_factory: Callable[[int, int], Any] | None, log: Callable[[str], None] | None):
        from prefrl.envs import make_task

        self.c, self.ppo_config, self.oracle = config, ppo_config, oracle
        self.log = log
        self.task = make_task(config.task)
        if env_factory is None:
            env_factory = functools.partial(_batched_env, self.task, config.num_threads)
        self.env = env_factory(config.num_envs, config.seed)
        self.eval_env = env_factory(config.eval_episodes, config.seed + 1_000_003)
        self.obs_dim, self.act_dim = int(self.env.obs_dim), int(self.env.act_dim)
        self.value_fn = _critic(config, oracle, self.obs_dim)
        self.reward_config = dataclasses.replace(reward_config, normalize=False)
        self.fit_config = self.reward_config
        self.counts = config.schedule_counts()
        self.round_updates = config.round_updates()
        self.max_round = int(self.counts.max())
        key = jax.random.key(config.seed)
        names = ("ppo", "rollout", "select", "label", "fit", "heldout", "eval", "initial")
        self.keys = dict(zip(names, jax.random.split(key, len(names)), strict=True))
        ref_params, ref_apply = _reference(config, ppo_config)
        self.learner = ppo.make(ppo_config, self.obs_dim, self.act_dim,
                                num_updates=config.num_updates, reward_fn=learned_reward,
                                reference_apply=ref_apply)
        self.update = jax.jit(self.learner.update)
        self.policy_apply = ppo.make_policy_apply(ppo_config, self.act_dim)
        self.ppo_state = self.learner.init(self.keys["ppo"]).replace(ref_params=ref_params)
        self.pool: SegmentPool | None = None
        self._pool_device: tuple[int, Any] | None = None
        self.labels = LabelBuffer(config.label_budget, config.segment_length, self.obs_dim,
                                  self.act_dim)
        self.rm_state: Any = None
        self.labels_used = 0
        self.timing = {"rollout_s": 0.0, "ppo_s": 0.0, "select_label_s": 0.0, "fit_s": 0.0,
                       "eval_s": 0.0}
        self.rounds: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        self.round_at = {int(u): r for r, u in enumerate(self.round_updates)}
        self.wall_before = 0.0

    def start_fresh(self) -> None:
        """Reset the environments and fill the pool with any extra initial rollouts."""
        self.env.reset()
        for extra in range(1, self.c.initial_rollouts):
            self.rollout(0, extra=extra)

    # ----------------------------------------------------------------- pieces

    def rollout(self, update_idx: int, extra: int = 0) -> Any:
        """PPO's rollout of ``update_idx`` (``extra > 0``: an extra initial-pool rollout)."""
        behaviour = policy_fn(Policy(self.policy_apply, ppo.policy_bundle(self.ppo_state)))
        key = jax.random.fold_in(self.keys["rollout"], update_idx)
        if extra:
            key = jax.random.fold_in(jax.random.fold_in(self.keys["initial"], extra), 0)
        t0 = time.perf_counter()
        traj = self.env.rollout(behaviour, self.c.rollout_steps, key)
        self.timing["rollout_s"] += time.perf_counter() - t0
        segs = segment(traj, self.c.segment_length, self.c.segment_stride)
        if self.pool is None:
            self.pool = SegmentPool(self.c.pool_capacity, segs)
        rows = self.pool.add(segs, tag=update_idx)
        return traj, rows

    def select(self, round_idx: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` queries from the pool: ``oversample × n`` uniform candidates, the best ``n`` kept.

        Candidates are drawn at a fixed count and scored all at once (one
        compile for every round); only the first ``oversample × n`` compete.
        Ties (and ``uniform``) are broken by a seeded random order.
        """
        num_candidates = max(2, self.c.oversample * self.max_round)
        key_c, key_s = jax.random.split(jax.random.fold_in(self.keys["select"], round_idx))
        first, second = queries.uniform_pairs(key_c, self.pool.count, num_candidates)
        method = self.c.selection if self.rm_state is not None else "uniform"
        if method == "uniform":
            values = np.zeros(num_candidates)
        else:
            probs = _pool_probs(self.rm_state, self.pool_device(), first, second)
            values = np.asarray(_acquisition(probs, method), np.float64)
        values[min(n * self.c.oversample, num_candidates):] = -np.inf
        tie_break = np.asarray(jax.random.uniform(key_s, (num_candidates,)))
        chosen = np.lexsort((tie_break, -values))[:n]
        return np.asarray(first)[chosen], np.asarray(second)[chosen]

    def pool_device(self) -> Any:
        """The pool's arrays on the device, copied once per round."""
        if self._pool_device is None or self._pool_device[0] != self.pool.version:
            self._pool_device = (self.pool.version,
                                 jax.tree.map(jnp.asarray, self.pool.segments()))
        return self._pool_device[1]

    def ppo_batch(self, traj: Any) -> Any:
        """The rollout as PPO's update sees it (its ``reward`` field is logged, never learned)."""
        return jax.tree.map(jnp.asarray, traj)

    def label(self, key: jax.Array, first: np.ndarray, second: np.ndarray,
              oracle: oracles.OracleConfig) -> oracles.Labels:
        """The oracle's labels, padded to a fixed query count so one compile serves every round."""
        size = max(self.max_round, self.c.heldout_queries, 1)
        out = oracles.label_queries(oracle, key, self.pool_device(), _pad(first, size),
                                    _pad(second, size),
                                    self.value_fn if oracle.model == "regret" else None)
        n = first.shape[0]
        return jax.tree.map(lambda x: np.asarray(x)[:n], out)

    def refit(self, round_idx: int, traj: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        key = jax.random.fold_in(self.keys["fit"], round_idx)
        train, valid = self.labels.batch(0), self.labels.batch(1)
        init = None if self.rm_state is None else self.rm_state.params
        train = jax.tree.map(jnp.asarray, train)
        # The first fit is several refits in a row: one compiled fit serves every round.
        repeats = -(-self.c.initial_fit_steps // self.fit_config.num_steps) if init is None else 1
        for i in range(repeats):
            fitted = _fit(jax.random.fold_in(key, i), self.fit_config, train, init)
            fit_loop.check_finite(jax.device_get(fitted.metrics))
            init = fitted.state.params
        state = fitted.state
        obs = jnp.asarray(traj.obs).reshape(-1, self.obs_dim)
        act = jnp.asarray(traj.action).reshape(-1, self.act_dim)
        raw, mean, std = _reward_and_stats(state, obs, act)
        self.rm_state = state.replace(reward_mean=mean, reward_std=std + 1e-8)
        self.ppo_state = self.ppo_state.replace(reward_params=_for_ppo(self.rm_state))
        self.timing["fit_s"] += time.perf_counter() - t0
        out = {
            "fit_train_loss": float(np.mean(fitted.metrics["train_loss"][-1])),
            "fit_train_accuracy": float(np.mean(fitted.metrics["train_accuracy"][-1])),
            "reward_pearson": evaluation.pearson(np.asarray(raw),
                                                 np.asarray(traj.reward).reshape(-1)),
        }
        if float(np.sum(valid.weight)) > 0:
            v = _evaluate(self.rm_state, jax.tree.map(jnp.asarray, valid))
            out.update(valid_loss=float(np.mean(v["loss"])),
                       valid_accuracy=float(np.mean(v["accuracy"])))
        return out

    def heldout(self, round_idx: int, rows: np.ndarray) -> dict[str, float]:
        """Accuracy of r̂ on fresh queries among the newest rollout's segments, per oracle."""
        n = self.c.heldout_queries
        if n == 0 or rows.shape[0] < 2 or self.rm_state is None:
            return {}
        key = jax.random.fold_in(self.keys["heldout"], round_idx)
        k_pairs, k_pr, k_rg = jax.random.split(key, 3)
        f, s = queries.uniform_pairs(k_pairs, rows.shape[0], n)
        f, s = rows[np.asarray(f)], rows[np.asarray(s)]
        seg = self.pool_device()
        score = np.asarray(_segment_returns(self.rm_state, seg.obs, seg.action, seg.mask))
        out = {}
        oracle_models = [("partial_return", 1.0)]
        if self.value_fn is not None:
            oracle_models.append(("regret", float(self.oracle_discount)))
        for (model, gamma), k in zip(oracle_models, (k_pr, k_rg), strict=False):
            rational = oracles.OracleConfig(model=model, discount=gamma)
            lab = self.label(k, f, s, rational)
            out[f"heldout_acc_{model}"] = evaluation.preference_accuracy(
                score[f], score[s], lab.label)
        return out

    @property
    def oracle_discount(self) -> float:
        return self.oracle.discount if self.oracle.model == "regret" else _critic_discount(self.c)

    def evaluate(self, update_idx: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        key = jax.random.fold_in(self.keys["eval"], update_idx)
        policy = policy_fn(Policy(self.policy_apply, ppo.policy_bundle(self.ppo_state)),
                           deterministic=True)
        result = evaluate_policy(self.eval_env, policy, key,
                                 target_speed=self.task.params_dict.get("target_speed"))
        self.timing["eval_s"] += time.perf_counter() - t0
        result.update(update=update_idx, env_steps=update_idx * self.c.steps_per_update)
        return result

    def close(self) -> None:
        for e in (self.env, self.eval_env):
            if hasattr(e, "close"):
                e.close()


@functools.partial(jax.jit, static_argnums=(1,))
def _fit(key: jax.Array, config: rm.RewardModelConfig, train: Any, init_params: Any) -> Any:
    return fit_loop.fit(key, config, train, None, init_params=init_params)


def _pad(x: Any, size: int) -> np.ndarray:
    # Host-side padding to a fixed query count: the jitted consumers compile once.
    x = np.asarray(x, np.int32)
    if x.shape[0] > size:
        raise ValueError(f"{x.shape[0]} queries exceed the padded size {size}")
    return np.concatenate([x, np.zeros((size - x.shape[0],), np.int32)])


def _batched_env(task: Any, num_threads: int | None, num_envs: int, seed: int) -> Any:
    from prefrl.rollout import BatchedEnv

    return BatchedEnv(task, num_envs=num_envs, seed=seed, num_threads=num_threads,
                      dtype=np.float32)


def _reference(config: OnlineConfig, ppo_config: ppo.PPOConfig) -> tuple[Any, Any]:
    """``(params, apply)`` of π_ref, or ``(None, None)``."""
    if not config.reference:
        if ppo_config.kl_ref_coef > 0:
            raise ValueError("kl_ref_coef > 0 needs a reference policy (reference / --reference)")
        return None, None
    from prefrl.loops.ppo import load_reference

    return load_reference(config.reference)


def _critic_discount(config: OnlineConfig) -> float:
    from prefrl.io import load_npz

    if not config.expert:
        return 0.99
    _, header = load_npz(config.expert, kind="ppo_checkpoint")
    return float(header["discount"])


def _critic(config: OnlineConfig, oracle: oracles.OracleConfig, obs_dim: int) -> Any:
    """V_E of the expert checkpoint (true-reward units), or None without an expert."""
    if not config.expert:
        if oracle.model == "regret":
            raise ValueError("the regret oracle needs an expert critic: set expert "
                             "(--expert PATH to a PPO checkpoint trained on the true reward)")
        return None
    from prefrl import checkpoints

    if not Path(config.expert).is_file():
        raise FileNotFoundError(f"expert checkpoint {config.expert} not found")
    _, header = checkpoints.load_ppo(config.expert, obs_dim=obs_dim)
    if header.get("task") not in (None, config.task):
        raise ValueError(f"expert {config.expert} was trained on task {header.get('task')!r}, "
                         f"the run is on {config.task!r}")
    if oracle.model == "regret" and abs(float(header["discount"]) - oracle.discount) > 1e-9:
        raise ValueError(f"the regret oracle's discount {oracle.discount} differs from the "
                         f"expert critic's γ = {header['discount']}")
    return checkpoints.load_value_fn(config.expert, obs_dim=obs_dim)


# --------------------------------------------------------------------------- the loop


def train(
    config: OnlineConfig,
    ppo_config: ppo.PPOConfig | None = None,
    reward_config: rm.RewardModelConfig | None = None,
    oracle: oracles.OracleConfig | None = None,
    *,
    env_factory: Callable[[int, int], Any] | None = None,
    log: Callable[[str], None] | None = None,
    callback: Callable[[Any, dict[str, Any]], None] | None = None,
    stop_after_updates: int | None = None,
) -> OnlineResult:
    """Run the online loop; returns the final evaluation, per-round records and timings.

    ``env_factory(num_envs, seed)`` builds environments (default: the C-engine
    :class:`prefrl.rollout.BatchedEnv` of ``config.task``). With
    ``config.out_dir``, writes ``rounds.jsonl``, ``evals.jsonl``,
    ``result.json`` and, every ``checkpoint_every`` updates, ``last.npz``:
    the whole run (PPO and reward states, labelled pairs, pool, schedule
    position, the environments' physics and RNG states), from which a killed
    run resumes exactly (``config.resume``). ``callback(run, record)`` is
    called after each round with the run's host state (tests, custom logs).
    ``stop_after_updates`` stops early as if killed (for tests of resume).
    """
    ppo_config = ppo.PPOConfig() if ppo_config is None else ppo_config
    reward_config = default_reward_config() if reward_config is None else reward_config
    oracle = oracles.OracleConfig() if oracle is None else oracle
    run = _Run(config, ppo_config, reward_config, oracle, env_factory, log)
    out_dir = Path(config.out_dir) if config.out_dir else None
    start = _start(run, out_dir)
    bar = _progress_bar(config, start)
    t_start = time.perf_counter()
    update_idx = start
    try:
        for update_idx in range(start + 1, config.num_updates + 1):
            if stop_after_updates is not None and update_idx > stop_after_updates:
                update_idx -= 1
                break
            _iteration(run, update_idx, out_dir, callback)
            if out_dir is not None and (update_idx % config.checkpoint_every == 0
                                        or update_idx == config.num_updates):
                _save(run, out_dir / "last.npz", update_idx, time.perf_counter() - t_start)
            if bar is not None:
                bar.update(1)
                score = f"{run.evals[-1]['mean_return']:.0f}" if run.evals else "-"
                bar.set_postfix({"labels": run.labels_used, "eval": score})
    finally:
        if bar is not None:
            bar.close()
        run.close()
    wall = run.wall_before + time.perf_counter() - t_start
    result = OnlineResult(
        final=run.evals[-1] if run.evals else {}, rounds=run.rounds, evaluations=run.evals,
        history=run.history, labels_used=run.labels_used, wall_s=wall, timing=dict(run.timing),
        env_steps=update_idx * config.steps_per_update, updates=update_idx,
        schedule=[int(x) for x in run.counts], ppo_state=run.ppo_state, reward_state=run.rm_state,
        pool=run.pool, labels=run.labels, ppo_update=run.update,
    )
    if out_dir is not None and update_idx == config.num_updates:
        from prefrl.io import atomic_write_json

        atomic_write_json(out_dir / "result.json", _summary(result))
    return result


def _iteration(run: _Run, update_idx: int, out_dir: Path | None,
               callback: Callable[[Any, dict[str, Any]], None] | None) -> None:
    """One PPO update: rollout, a labelling round when due, the update, an evaluation when due."""
    c = run.c
    traj, rows = run.rollout(update_idx)
    round_idx = run.round_at.get(update_idx)
    if round_idx is not None:
        record = _round(run, round_idx, update_idx, traj, rows)
        run.rounds.append(record)
        _write(out_dir, "rounds.jsonl", record, run.log)
        if callback is not None:
            callback(run, record)
    t0 = time.perf_counter()
    run.ppo_state, metrics = run.update(run.ppo_state, run.ppo_batch(traj))
    metrics = jax.device_get(metrics)
    run.timing["ppo_s"] += time.perf_counter() - t0
    if bool(metrics["nonfinite"]):
        raise ValueError(f"PPO update {update_idx} produced non-finite values")
    run.history.append({"update": update_idx, "value_loss": float(metrics["value_loss"]),
                        "proxy_reward": float(metrics["proxy_reward"]),
                        "true_reward": float(metrics["true_reward"])})
    _note_value_loss(run.rounds, run.history, run.round_at, update_idx)
    if update_idx == c.num_updates or (c.eval_every and update_idx % c.eval_every == 0):
        result = run.evaluate(update_idx)
        result["labels_used"] = run.labels_used
        run.evals.append(result)
        _write(out_dir, "evals.jsonl", {k: v for k, v in result.items() if k != "returns"}, None)


# --------------------------------------------------------------------------- checkpoints

KIND = "online_checkpoint"


def _start(run: _Run, out_dir: Path | None) -> int:
    """Prepare the output folder; resume from ``last.npz`` when asked. Returns the update done."""
    c = run.c
    if out_dir is None:
        run.start_fresh()
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    last = out_dir / "last.npz"
    if c.resume and last.exists():
        done = _load(run, last)
        # The logs hold exactly what the checkpoint has seen: no repeated lines after resume.
        from prefrl.io import atomic_write_text

        for name, records in (("rounds.jsonl", run.rounds), ("evals.jsonl", run.evals)):
            lines = [json.dumps(_jsonable({k: v for k, v in r.items() if k != "returns"}))
                     for r in records]
            atomic_write_text(out_dir / name, "".join(line + "\n" for line in lines))
        if run.log:
            run.log(f"resuming {last} at update {done}/{c.num_updates}")
        return done
    if (out_dir / "result.json").exists() and c.resume:
        raise FileExistsError(f"{out_dir} holds a finished run (result.json); use another "
                              "out_dir or resume=False to overwrite it")
    for name in ("rounds.jsonl", "evals.jsonl", "result.json", "last.npz"):
        (out_dir / name).unlink(missing_ok=True)
    run.start_fresh()
    return 0


def _save(run: _Run, path: Path, update_idx: int, wall: float) -> None:
    from prefrl.checkpoints import flatten
    from prefrl.config import to_dict
    from prefrl.io import save_npz

    if not hasattr(run.env, "state_dict"):
        raise TypeError("checkpoints of the online loop need environments with state_dict()")
    arrays = flatten(
        jax.device_get(run.ppo_state.replace(reward_params=None, ref_params=None)), "ppo")
    if run.rm_state is not None:
        rm_part = {"params": run.rm_state.params, "mean": run.rm_state.reward_mean,
                   "std": run.rm_state.reward_std}
        arrays.update(flatten(jax.device_get(rm_part), "reward"))
    arrays.update(run.labels.state_dict())
    arrays.update(run.pool.state_dict())
    arrays.update({f"env.{k}": v for k, v in run.env.state_dict().items()})
    arrays.update({f"eval_env.{k}": v for k, v in run.eval_env.state_dict().items()})
    header = {
        "kind": KIND, "schema_version": 1, "update": update_idx,
        "config": to_dict(run.c), "ppo_config": to_dict(run.ppo_config),
        "reward_config": to_dict(run.reward_config), "oracle": to_dict(run.oracle),
        "labels_used": run.labels_used, "has_reward": run.rm_state is not None,
        "rounds": _jsonable(run.rounds),
        "evals": _jsonable(run.evals), "history": run.history, "timing": run.timing,
        "wall_s": run.wall_before + wall,
    }
    save_npz(path, arrays, header)


def _load(run: _Run, path: Path) -> int:
    from prefrl.checkpoints import unflatten
    from prefrl.config import to_dict
    from prefrl.io import load_npz

    arrays, header = load_npz(path, kind=KIND)
    now = {"config": to_dict(run.c), "ppo_config": to_dict(run.ppo_config),
           "reward_config": to_dict(run.reward_config), "oracle": to_dict(run.oracle)}
    ignore = {"progress", "out_dir", "resume", "checkpoint_every", "num_threads"}
    diff = [f"{part}.{k}" for part, cfg in now.items() for k in cfg
            if k not in ignore and _jsonable(cfg[k]) != header[part].get(k)]
    if diff:
        raise ValueError(f"{path}: cannot resume: the run's settings differ in {diff}; use "
                         "another out_dir or resume=False")
    template = run.ppo_state.replace(reward_params=None, ref_params=None)
    ppo_state = unflatten(template, arrays, "ppo", str(path))
    run.ppo_state = ppo_state.replace(ref_params=run.ppo_state.ref_params)
    run.labels.load_state_dict(arrays)
    segs_example = {k[len("pool."):]: v[:1] for k, v in arrays.items()
                    if k.startswith("pool.") and k[len("pool."):] in _segment_fields()}
    from prefrl.types import Segments

    run.pool = SegmentPool(run.c.pool_capacity, Segments(**segs_example))
    run.pool.load_state_dict(arrays)
    run.env.load_state_dict({k[4:]: v for k, v in arrays.items() if k.startswith("env.")})
    run.eval_env.load_state_dict({k[9:]: v for k, v in arrays.items()
                                  if k.startswith("eval_env.")})
    run.labels_used = int(header["labels_used"])
    run.rounds, run.evals, run.history = header["rounds"], header["evals"], header["history"]
    run.timing = {k: float(v) for k, v in header["timing"].items()}
    run.wall_before = float(header["wall_s"])
    if header["has_reward"]:
        state = _reward_template(run)
        part = unflatten(
            {"params": state.params, "mean": state.reward_mean, "std": state.reward_std},
            arrays, "reward", str(path))
        run.rm_state = state.replace(params=part["params"], reward_mean=part["mean"],
                                     reward_std=part["std"])
        run.ppo_state = run.ppo_state.replace(reward_params=_for_ppo(run.rm_state))
    return int(header["update"])


def _segment_fields() -> tuple[str, ...]:
    from prefrl.data.pool import SEGMENT_FIELDS

    return SEGMENT_FIELDS


def _reward_template(run: _Run) -> Any:
    """A reward-model state of the run's shapes (its arrays are replaced on load)."""
    batch = jax.tree.map(jnp.asarray, run.labels.batch(0))
    return rm.make(run.fit_config).init(jax.random.key(0), batch)


def _round(run: _Run, round_idx: int, update_idx: int, traj: Any, rows: np.ndarray
           ) -> dict[str, Any]:
    """Select, label, store and refit; returns the round's record."""
    c = run.c
    n = int(run.counts[round_idx])
    t0 = time.perf_counter()
    record: dict[str, Any] = {"round": round_idx, "update": update_idx,
                              "env_steps": (update_idx - 1) * c.steps_per_update}
    if n > 0 and c.offline_dataset:
        seg, first, second, lab = _dataset_labels(run, n)
    elif n > 0:
        first, second = run.select(round_idx, n)
        seg = run.pool.segments()
        lab = run.label(jax.random.fold_in(run.keys["label"], round_idx), first, second,
                        run.oracle)
    if n > 0:
        # Every 1/valid_fraction-th label (by position in the run) is held out.
        pos = run.labels.count + np.arange(n)
        every = int(round(1 / c.valid_fraction)) if c.valid_fraction > 0 else 0
        split = (pos % every == every - 1) if every else np.zeros(n, bool)
        run.labels.add(seg, first, second, lab.label, lab.keep.astype(np.float32),
                       split.astype(np.float32))
        run.labels_used += n
        record["skipped"] = int(n - np.sum(lab.keep))
    run.timing["select_label_s"] += time.perf_counter() - t0
    record.update(labels=n, labels_used=run.labels_used,
                  true_reward=float(np.mean(traj.reward)))
    if n > 0 or run.rm_state is None:
        record.update(run.refit(round_idx, traj))
    t0 = time.perf_counter()
    record.update(run.heldout(round_idx, rows))
    run.timing["select_label_s"] += time.perf_counter() - t0
    record["wall"] = dict(run.timing)
    return record


def _dataset_labels(run: _Run, n: int) -> tuple[Any, np.ndarray, np.ndarray, oracles.Labels]:
    """``n`` queries of ``offline_dataset`` (a seeded subset) with its stored labels."""
    from prefrl.data import dataset as dataset_io

    data, header = dataset_io.load(run.c.offline_dataset)
    if header.get("task") not in (None, run.c.task):
        raise ValueError(f"{run.c.offline_dataset}: dataset of task {header.get('task')!r}, "
                         f"the run is on {run.c.task!r}")
    if data.segments.length != run.c.segment_length:
        raise ValueError(f"{run.c.offline_dataset}: segments of length {data.segments.length}; "
                         f"set segment_length={data.segments.length}")
    if run.c.offline_label not in data.labels:
        raise ValueError(f"{run.c.offline_dataset} has no labels {run.c.offline_label!r}; "
                         f"it has {sorted(data.labels)}")
    if data.num_queries < n:
        raise ValueError(f"{run.c.offline_dataset} has {data.num_queries} queries, the budget "
                         f"is {n}")
    rows = np.sort(np.random.default_rng(run.c.seed).permutation(data.num_queries)[:n])
    label = np.asarray(data.labels[run.c.offline_label], np.float32)[rows]
    mask = data.label_mask.get(run.c.offline_label) if data.label_mask else None
    keep = np.ones(n, bool) if mask is None else np.asarray(mask, bool)[rows]
    lab = oracles.Labels(label=label, keep=keep, score_1=np.zeros(n), score_2=np.zeros(n))
    return data.segments, np.asarray(data.first)[rows], np.asarray(data.second)[rows], lab


def _note_value_loss(rounds: list[dict[str, Any]], history: list[dict[str, Any]],
                     round_at: Mapping[int, int], update_idx: int) -> None:
    # PPO's value loss on the update before a refit and on the one right after it.
    if update_idx in round_at and rounds and rounds[-1]["update"] == update_idx:
        rounds[-1]["value_loss_after"] = history[-1]["value_loss"]
        if len(history) >= 2:
            rounds[-1]["value_loss_before"] = history[-2]["value_loss"]


def default_reward_config(**overrides: Any) -> rm.RewardModelConfig:
    """The online loop's reward model: a small ensemble refitted often, warm-started.

    3 × (64, 64) leaky-ReLU members on (s, a), Adam 1e-3, 64 queries a step,
    100 steps a refit: sized so that fits cost a fraction of PPO's wall-clock.
    """
    base = dict(assumption="partial_return", hidden=(64, 64), ensemble_size=3,
                learning_rate=1e-3, batch_size=64, num_steps=100, eval_every=100,
                chunk_pairs=64, normalize=False)
    base.update(overrides)
    return rm.RewardModelConfig(**base)


def _progress_bar(config: OnlineConfig, start: int) -> Any:
    import sys

    if not config.progress or not sys.stderr.isatty():
        return None  # a bar only on a terminal: logs and CI stay free of its frames
    from tqdm import tqdm

    return tqdm(total=config.num_updates, initial=start, unit="upd", dynamic_ncols=True)


def _write(out_dir: Path | None, name: str, record: Mapping[str, Any],
           log: Callable[[str], None] | None) -> None:
    line = json.dumps(_jsonable(record))
    if out_dir is not None:
        with open(out_dir / name, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    if log is not None:
        log(line)


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic | np.ndarray):
        return np.asarray(x).tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _summary(result: OnlineResult) -> dict[str, Any]:
    keep = ("labels_used", "wall_s", "timing", "env_steps", "schedule")
    out = {k: result[k] for k in keep}
    out["final"] = {k: v for k, v in result["final"].items()}
    out["rounds"] = result["rounds"]
    out["evaluations"] = [{k: v for k, v in e.items() if k != "returns"}
                          for e in result["evaluations"]]
    return _jsonable(out)


__all__ = ["OnlineConfig", "OnlineResult", "default_reward_config", "learned_reward", "train"]
