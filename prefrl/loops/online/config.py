"""The online loop's settings (:mod:`prefrl.loops.online`) and its default reward model."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from prefrl.config import field
from prefrl.data.queries import ACQUISITIONS
from prefrl.learners import reward_model as rm
from prefrl.loops.online import registry
from prefrl.loops.schedule import SCHEDULES, label_schedule


@dataclasses.dataclass(frozen=True)
class OnlineConfig:
    """The loop's settings (PPO, reward model and oracle have configs of their own)."""

    task: str = field("run", "task name: run, run-backward, target-speed")
    task_param: tuple[str, ...] = field(
        (), "task parameter NAME=VALUE, repeatable (e.g. target_speed=3.0)", repeat=True)
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
    label_from_step: int | None = field(
        None, "env steps before the first labelling round (None: 0, or the policy learner's "
        "own: pebble's warm-up + unsupervised pre-training)")
    segment_length: int = field(25, "steps per segment (k)")
    segment_stride: int = field(25, "steps between segment starts in a rollout")
    pool_capacity: int = field(1024, "segments kept in the FIFO candidate pool")
    selection: str = field("uniform", "query rule (prefrl.data.queries.ACQUISITIONS): uniform, "
                           "disagreement, entropy")
    oversample: int = field(10, "candidates per selected query (B-Pref)")
    valid_fraction: float = field(0.1, "labels held out for validation (not trained on)")
    initial_fit_steps: int = field(300, "reward-fit updates after the first labels")
    reward_learner: str = field(
        "rhat", "what the refits fit (registry.REWARD_LEARNERS): rhat (r̂, BT on Σ r̂), "
        "advantage (Â, BT on Σ γ^t Â with the oracle's γ) or regret_critic (r̂ under the "
        "regret model, BT on Σγ^t r̂ + γ^k V(s_k) − V(s_0), V = the policy's critic; Knox et "
        "al. 2022 with Π = {π}), or none (no reward model: policy_learner cpl); old names "
        "partial_return, regret")
    policy_learner: str = field("ppo", "how the policy improves between rounds "
                                "(registry.POLICY_LEARNERS): ppo (PPO on r̂), advantage_greedy "
                                "(an actor climbing Â; reward_learner advantage) or cpl (π "
                                "fitted to the labels; reward_learner none)")
    initial_rollouts: int = field(
        1, "rollouts of the initial policy whose segments seed the pool (the first is PPO's)")
    offline_dataset: str = field(
        "", "label the whole budget from this dataset's queries at the start, none online "
        "(the snapshot-pool ablation); '' = online")
    offline_label: str = field("partial_return", "which labels of offline_dataset to use")
    heldout_queries: int = field(128, "fresh evaluation queries per round (not in the budget)")
    expert: str = field("", "expert PPO checkpoint whose critic V_E the regret oracle uses")
    oracle_value: str = field(
        "critic", "V of the regret oracle: critic (the expert's V_E) or mc (Monte-Carlo rollouts "
        "of the expert from s_0 and s_k plus γ^H·V_E; prefrl.oracles_mc)")
    mc_rollouts: int = field(16, "M: expert rollouts per state (oracle_value mc)")
    mc_horizon: int = field(200, "H: steps per rollout before the γ^H·V_E tail (oracle_value mc)")
    mc_heldout_queries: int = field(
        16, "of each round's held-out queries, how many the MC oracle labels (regret_mc accuracy)",
        result_free=True)
    mc_heldout_every: int = field(
        4, "MC-label held-out queries every this many rounds only (their env steps are logged)",
        result_free=True)
    reference: str = field("", "frozen π_ref (policy file or PPO checkpoint) for PPO's "
                           "KL penalty (kl_ref_coef of the PPO config); '' = none")
    eval_every: int = field(25, "evaluate the policy every this many updates (0: at the end)",
                            result_free=True)
    eval_episodes: int = field(8, "deterministic evaluation episodes", result_free=True)
    out_dir: str = field("", "output folder (rounds.jsonl, evals.jsonl, last.npz); '' = none",
                         result_free=True)
    checkpoint_every: int = field(25, "write out_dir/last.npz every this many updates",
                                  result_free=True)
    resume: bool = field(True, "resume from out_dir/last.npz when it exists", result_free=True)
    progress: bool = field(True, "progress bar on a terminal", result_free=True)
    num_threads: int | None = field(None, "physics threads (default: all cores)",
                                    result_free=True)

    def __post_init__(self) -> None:
        if self.label_budget < 1:
            raise ValueError(f"label_budget must be >= 1, got {self.label_budget}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; use one of {SCHEDULES}")
        if self.selection not in ACQUISITIONS:
            raise ValueError(f"unknown selection {self.selection!r}; use one of "
                             f"{tuple(ACQUISITIONS)}")
        learner = registry.reward_learner(self.reward_learner)  # ValueError naming the choices
        if self.policy_learner not in registry.POLICY_LEARNERS:
            raise ValueError(f"unknown policy_learner {self.policy_learner!r}; use one of "
                             f"{tuple(registry.POLICY_LEARNERS)}")
        registry.check_pairing(self.policy_learner, learner.name)
        if not learner.fits and ACQUISITIONS[self.selection] is not None:
            raise ValueError(f"selection={self.selection!r} scores queries with the reward "
                             f"ensemble; reward_learner={learner.name!r} fits none (use uniform)")
        if self.oracle_value not in ("critic", "mc"):
            raise ValueError(f"oracle_value must be critic or mc, got {self.oracle_value!r}")
        for name in ("mc_rollouts", "mc_horizon", "mc_heldout_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.mc_heldout_queries < 0:
            raise ValueError(f"mc_heldout_queries must be >= 0, got {self.mc_heldout_queries}")
        if self.oracle_value == "mc" and not self.expert:
            raise ValueError("oracle_value='mc' needs the expert checkpoint (--expert PATH): its "
                             "stochastic policy makes the rollouts and its critic V_E the γ^H "
                             "tail")
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
        if self.label_from_step is not None and (isinstance(self.label_from_step, bool)
                                                 or self.label_from_step < 0):
            raise ValueError(f"label_from_step must be an integer >= 0, got "
                             f"{self.label_from_step!r}")
        if self.pool_capacity < 2:
            raise ValueError(f"pool_capacity must be >= 2, got {self.pool_capacity}")

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.rollout_steps

    @property
    def num_updates(self) -> int:
        return max(1, math.ceil(self.total_steps / self.steps_per_update))

    def round_updates(self) -> np.ndarray:
        """Policy updates (1-based) at whose rollout a round is held.

        Round 0 is at update 1, or at the first update whose rollout starts at or
        after ``label_from_step`` env steps.
        """
        last = max(1, int(self.label_until * self.num_updates))
        first = 1 + math.ceil((self.label_from_step or 0) / self.steps_per_update)
        if first > last:
            raise ValueError(f"label_from_step = {self.label_from_step} leaves no labelling "
                             f"round: the last round falls at env step "
                             f"{(last - 1) * self.steps_per_update} (total_steps "
                             f"{self.total_steps}, label_until {self.label_until})")
        return np.arange(first, last + 1, self.refit_every)

    def schedule_counts(self) -> np.ndarray:
        """Labels per round (exactly ``label_budget`` in all)."""
        updates = self.round_updates()
        steps = (updates[1:] - 1) * self.steps_per_update
        if self.offline_dataset:
            return np.concatenate([[self.label_budget], np.zeros(len(steps), np.int64)])
        return label_schedule(self.label_budget, steps, kind=self.schedule,
                              initial_fraction=self.initial_fraction, tau=self.schedule_tau)


def default_reward_config(**overrides: Any) -> rm.RewardModelConfig:
    """The online loop's reward model: a small ensemble refitted often, warm-started.

    3 × (64, 64) leaky-ReLU members on (s, a), Adam 1e-3, 64 queries a step,
    40 steps a refit (300 for the first labels: ``OnlineConfig.initial_fit_steps``):
    sized so that fits cost a small share of PPO's wall-clock. Tuned on seeds
    10–11 only (``experiments/bench/online_fit_cost_tuning.py``): against 100 / 600
    steps the final returns did not drop (``run`` 7045 / 5213 vs 6561 / 5268,
    ``target-speed`` −413 / −427 vs −462 / −395) and the fit's share of a run's
    wall-clock fell from ~25 % to 11–17 % (on a shared box).
    """
    base = dict(assumption="partial_return", hidden=(64, 64), ensemble_size=3,
                learning_rate=1e-3, batch_size=64, num_steps=40, eval_every=40,
                chunk_pairs=64, normalize=False)
    base.update(overrides)
    return rm.RewardModelConfig(**base)


__all__ = ["OnlineConfig", "default_reward_config"]
