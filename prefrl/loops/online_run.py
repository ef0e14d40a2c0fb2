"""One online run's host state and its steps: rollouts, selection, labels, refits, evaluation.

:class:`Run` holds the environments, the segment pool, the labelled pairs, the
PPO and reward-model states and the named PRNG keys; :mod:`prefrl.loops.online`
drives it. Every jitted function here takes arrays of fixed shapes (padded
query counts, a fixed-capacity pool), so each compiles once per run.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prefrl import evaluation, oracles
from prefrl.data import queries
from prefrl.data.pool import LabelBuffer, SegmentPool
from prefrl.data.segments import segment
from prefrl.learners import ppo
from prefrl.learners import reward_model as rm
from prefrl.loops import active
from prefrl.loops import fit as fit_loop
from prefrl.loops.online_config import OnlineConfig
from prefrl.policies import Policy, policy_fn
from prefrl.rollout import evaluate_policy

_standardize = jax.jit(fit_loop.standardize_on_steps, static_argnums=0)


# ``[N]`` segment scores of the ensemble's standardised r̂ under the fit's own model
# (Σ r̂ for partial return; Σ γ^t r̂ with PPO's γ for the regret learner).
_segment_scores = jax.jit(rm.segment_scores, static_argnums=0)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _critic_gap(config: ppo.PPOConfig, act_dim: int, state: Any, first_obs: jax.Array,
                final_obs: jax.Array, gamma_k: float) -> jax.Array:
    value = ppo.make_acting(config, act_dim).value
    return gamma_k * value(state, final_obs) - value(state, first_obs)


_evaluate = jax.jit(rm.evaluate, static_argnums=0, static_argnames="chunk")


@functools.partial(jax.jit, static_argnums=1)
def _acquisition(probs: jax.Array, method: str) -> jax.Array:
    return queries.acquisition(probs, method)


def for_ppo(state: Any) -> Any:
    # What PPO needs of the reward model: parameters and standardisation (no optimiser).
    return state.replace(opt_state=None)


# --------------------------------------------------------------------------- one run


class Run:
    """The mutable host state of one online run (environments, buffers, keys, logs)."""

    def __init__(self, config: OnlineConfig, ppo_config: ppo.PPOConfig,
                 reward_config: rm.RewardModelConfig, oracle: oracles.OracleConfig,
                 env_factory: Callable[[int, int], Any] | None, log: Callable[[str], None] | None):
        from prefrl.envs import parse_task_params

        self.c, self.ppo_config, self.oracle = config, ppo_config, oracle
        self.log = log
        self.task = parse_task_params(config.task, config.task_param)
        if env_factory is None:
            env_factory = functools.partial(_batched_env, self.task, config.num_threads)
        self.env = env_factory(config.num_envs, config.seed)
        self.eval_env = env_factory(config.eval_episodes, config.seed + 1_000_003)
        self.obs_dim, self.act_dim = int(self.env.obs_dim), int(self.env.act_dim)
        self.value_fn, self.critic_discount = _critic(config, oracle, self.obs_dim)
        self.reward_config = dataclasses.replace(reward_config, normalize=False)
        if config.reward_learner == "regret":
            # The regret score discounts r̂ with PPO's γ, the γ of its critic V.
            if reward_config.discount not in (1.0, ppo_config.discount):
                raise ValueError(f"reward_learner='regret' scores segments with PPO's γ = "
                                 f"{ppo_config.discount}; the reward config's discount is "
                                 f"{reward_config.discount}")
            self.reward_config = dataclasses.replace(self.reward_config,
                                                     discount=ppo_config.discount)
        self.fit_config = self.reward_config
        self.model = rm.model(self.fit_config)
        self.counts = config.schedule_counts()
        self.round_updates = config.round_updates()
        self.max_round = int(self.counts.max())
        key = jax.random.key(config.seed)
        names = ("ppo", "rollout", "select", "label", "fit", "heldout", "eval", "initial")
        self.keys = dict(zip(names, jax.random.split(key, len(names)), strict=True))
        ref_params, ref_apply = _reference(config, ppo_config)
        self.learner = ppo.make(ppo_config, self.obs_dim, self.act_dim,
                                num_updates=config.num_updates,
                                reward_fn=rm.PPOReward(self.model),
                                reference_apply=ref_apply)
        self.update = jax.jit(self.learner.update)
        self.policy_apply = ppo.make_policy_apply(ppo_config, self.act_dim)
        self.ppo_state = jax.jit(self.learner.init)(self.keys["ppo"]).replace(ref_params=ref_params)
        self.pool: SegmentPool | None = None
        self._pool_device: tuple[int, Any] | None = None
        self.labels = LabelBuffer(config.label_budget, config.segment_length, self.obs_dim,
                                  self.act_dim)
        self.rm_state: Any = None
        self.value_scale = 0.0  # σ of r̂ when the critic terms were last computed (regret)
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
            probs = active.jitted_pool_preferences(self.model, self.rm_state,
                                                   self.pool_device(), first, second)
            values = np.asarray(_acquisition(probs, method), np.float64)
        chosen = np.asarray(queries.oversample_select(key_s, values, n * self.c.oversample, n))
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
        critic = {}
        if self.c.reward_learner == "regret":
            offset = self.critic_offsets()
            train, valid = train._replace(offset=offset), valid._replace(offset=offset)
            rows = np.asarray(train.weight) > 0
            critic = {"critic_offset_std": float(np.std(offset[rows])) if rows.any() else 0.0}
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
        self.rm_state, raw = _standardize(self.model, state, obs, act)
        self.ppo_state = self.ppo_state.replace(reward_params=for_ppo(self.rm_state))
        self.timing["fit_s"] += time.perf_counter() - t0
        out = {
            **critic,
            "fit_train_loss": float(np.mean(fitted.metrics["train_loss"][-1])),
            "fit_train_accuracy": float(np.mean(fitted.metrics["train_accuracy"][-1])),
            "reward_pearson": evaluation.pearson(np.asarray(raw),
                                                 np.asarray(traj.reward).reshape(-1)),
        }
        if float(np.sum(valid.weight)) > 0:
            v = _evaluate(self.model, self.rm_state, jax.tree.map(jnp.asarray, valid))
            out.update(valid_loss=float(np.mean(v["loss"])),
                       valid_accuracy=float(np.mean(v["accuracy"])))
        return out

    def critic_gaps(self, first_obs: np.ndarray, final_obs: np.ndarray) -> np.ndarray:
        """``γ^k V(s_k) − V(s_0)`` per segment, V = PPO's critic (units of PPO's reward)."""
        gamma_k = float(self.ppo_config.discount) ** int(self.c.segment_length)
        return np.asarray(_critic_gap(self.ppo_config, self.act_dim, self.ppo_state,
                                      jnp.asarray(first_obs), jnp.asarray(final_obs), gamma_k))

    def critic_offsets(self) -> np.ndarray:
        """``[capacity]`` logit offsets of the labelled pairs under the regret learner.

        In r̂'s raw (logit) units: σ · (gap(σ¹) − gap(σ²)), σ = r̂'s std when PPO's
        critic learned it (its μ cancels: both segments have k steps). Zero
        before the first fit, when the critic has seen no r̂.
        """
        a = self.labels.arrays
        if self.rm_state is None:
            self.value_scale = 0.0
            return np.zeros(self.labels.capacity, np.float32)
        self.value_scale = float(self.rm_state.reward_std)
        gap_1 = self.critic_gaps(a["obs_1"][:, 0], a["final_obs_1"])
        gap_2 = self.critic_gaps(a["obs_2"][:, 0], a["final_obs_2"])
        return (self.value_scale * (gap_1 - gap_2)).astype(np.float32)

    def segment_scores(self, seg: Any) -> np.ndarray:
        """``[N]`` each pool segment's score under the learner's own model (for accuracy)."""
        score = np.asarray(_segment_scores(self.model, self.rm_state, seg.obs, seg.action,
                                           seg.mask))
        # Regret learner: the critic terms were in raw units × value_scale, so they are
        # rescaled to the new fit's standardised units (μ cancels between segments).
        if self.c.reward_learner == "regret" and self.value_scale:
            scale = self.value_scale / float(self.rm_state.reward_std)
            score = score + scale * self.critic_gaps(seg.obs[:, 0], seg.next_obs[:, -1])
        return score

    def heldout(self, round_idx: int, rows: np.ndarray) -> dict[str, float]:
        """Accuracy of r̂ on fresh queries among the newest rollout's segments, per oracle."""
        n = self.c.heldout_queries
        if n == 0 or rows.shape[0] < 2 or self.rm_state is None:
            return {}
        key = jax.random.fold_in(self.keys["heldout"], round_idx)
        k_pairs, k_pr, k_rg = jax.random.split(key, 3)
        f, s = queries.uniform_pairs(k_pairs, rows.shape[0], n)
        f, s = rows[np.asarray(f)], rows[np.asarray(s)]
        score = self.segment_scores(self.pool_device())
        out = {}
        oracle_models = [("partial_return", 1.0)]
        if self.value_fn is not None:
            oracle_models.append(("regret", self.critic_discount))
        for (model, gamma), k in zip(oracle_models, (k_pr, k_rg), strict=False):
            rational = oracles.OracleConfig(model=model, discount=gamma)
            lab = self.label(k, f, s, rational)
            out[f"heldout_acc_{model}"] = evaluation.preference_accuracy(
                score[f], score[s], lab.label)
        return out

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
    from prefrl.envs import check_same_params, parse_task_params
    from prefrl.io import read_task
    from prefrl.loops.ppo import load_reference

    check_same_params(parse_task_params(config.task, config.task_param),
                      read_task(config.reference), f"reference {config.reference}")
    return load_reference(config.reference)


def _critic(config: OnlineConfig, oracle: oracles.OracleConfig, obs_dim: int
            ) -> tuple[Any, float]:
    """``(V_E, γ)`` of the expert checkpoint (true-reward units), or ``(None, 0.99)``."""
    if not config.expert:
        if oracle.model == "regret":
            raise ValueError("the regret oracle needs an expert critic: set expert "
                             "(--expert PATH to a PPO checkpoint trained on the true reward)")
        return None, 0.99
    from prefrl import checkpoints

    if not Path(config.expert).is_file():
        raise FileNotFoundError(f"expert checkpoint {config.expert} not found")
    _, header = checkpoints.load_ppo(config.expert, obs_dim=obs_dim)
    if header.get("task") not in (None, config.task):
        raise ValueError(f"expert {config.expert} was trained on task {header.get('task')!r}, "
                         f"the run is on {config.task!r}")
    from prefrl.envs import check_same_params, parse_task_params

    check_same_params(parse_task_params(config.task, config.task_param), header,
                      f"expert {config.expert}")
    if oracle.model == "regret" and abs(float(header["discount"]) - oracle.discount) > 1e-9:
        raise ValueError(f"the regret oracle's discount {oracle.discount} differs from the "
                         f"expert critic's γ = {header['discount']}")
    return checkpoints.load_value_fn(config.expert, obs_dim=obs_dim), float(header["discount"])


# --------------------------------------------------------------------------- the loop


def jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic | np.ndarray):
        return np.asarray(x).tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
