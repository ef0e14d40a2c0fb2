"""One task's shared state and one cell of the learner-assumption study.

:class:`TaskContext` loads and checks a task's inputs (labelled pool, library
Π, expert) and keeps what its cells share (rollouts, splits, fitted reward
models, EPIC samples); :func:`run_cell` fits one learner on one label set for
one seed and evaluates it (the study: :mod:`prefrl.studies.learner_assumption`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prefrl import checkpoints, evaluation
from prefrl.data import pairs
from prefrl.learners import reward_model as rm
from prefrl.learners import successor_features as sf
from prefrl.loops import fit as reward_fit
from prefrl.policies import PolicyFn, policy_fn, random_policy
from prefrl.studies.learner_assumption_config import (
    LABELS,
    LEARNERS,
    LearnerAssumptionConfig,
    named_key,
    repo_root,
)
from prefrl.studies.learner_assumption_data import (
    RMValue,
    SeedSplit,
    TrueReward,
    accuracies,
    canonical,
    epic_sample,
    load_task_data,
    pair_batch,
    seed_split,
    strip,
)
from prefrl.studies.learner_assumption_fit import (
    fit_awr,
    fit_regret_sf,
    fit_rm,
    rm_config,
    rm_scores,
    train_ppo,
)
from prefrl.studies.learner_assumption_library import (
    fit_rollouts,
    heldout_rollouts,
    load_library,
    start_indices,
)

Array = jax.Array


class TaskContext:
    """What the cells of one task share, built lazily and kept in memory.

    Built eagerly (so bad input fails before any fitting): the labelled pool,
    the library Π (when ``regret_sf_ppo`` runs) and the expert. Lazily: the
    library's and the held-out rollouts, each seed's split, fitted reward
    models (r̂ feeds ``reward_ppo`` and φ of ``regret_sf_ppo``; Â feeds both
    advantage learners), EPIC samples and C(r).
    """

    def __init__(self, config: LearnerAssumptionConfig, name: str):
        self.config = config
        self.data = load_task_data(config, name)
        self.library = load_library(config, self.data.spec) if (
            "regret_sf_ppo" in config.learners) else None
        experts = Path(config.experts_dir) if config.experts_dir else (
            repo_root() / "experiments" / "experts")
        self.expert_path = experts / name / "final.npz"
        if not self.expert_path.is_file():
            raise FileNotFoundError(f"expert {self.expert_path} not found (reference return)")
        checkpoints.load_ppo(self.expert_path, obs_dim=self.data.spec.obs_dim)
        self._cache: dict[Any, Any] = {}

    def _memo(self, key: Any, build: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def _starts(self) -> tuple[np.ndarray, np.ndarray]:
        n = int(self.data.segments.obs.shape[0])
        return self._memo("starts", lambda: start_indices(self.config, self.data.name,
                                                          np.arange(n)))

    def rollouts(self) -> sf.LibraryRollouts:
        """Π's rollouts ``[Π, T, B]``: fresh resets, then the pool's start states."""
        return self._memo("rollouts", lambda: fit_rollouts(
            self.config, self.data.spec, self.data.segments, self.library.policies,
            self._starts()[0]))

    def heldout_rollouts(self) -> sf.LibraryRollouts:
        """Rollouts of Π from other resets and other pool start states (ψ-fit quality)."""
        return self._memo("heldout", lambda: heldout_rollouts(
            self.config, self.data.spec, self.data.segments, self.library.policies,
            self._starts()[1]))

    def split(self, seed: int) -> SeedSplit:
        return self._memo(("split", seed), lambda: seed_split(self.config, self.data, seed))

    def rm_model(self, assumption: str) -> rm.RewardModel:
        """What the arrays of :meth:`reward_model`'s states mean (config and network)."""
        return rm.model(rm_config(self.config, assumption))

    def reward_model(self, label: str, seed: int, assumption: str) -> rm.RewardModelState:
        """r̂ (``partial_return``) or Â (``advantage``) fitted on ``label`` for ``seed``."""
        def build() -> rm.RewardModelState:
            split = self.split(seed)
            train = pair_batch(self.data, split.train, label)
            pairs.validate(train, what=f"{self.data.name} {label} training labels")
            key = named_key(self.config, self.data.name, seed, label, assumption)
            result = fit_rm(key, rm_config(self.config, assumption), train,
                            pair_batch(self.data, split.valid, label))
            reward_fit.check_finite(result.metrics)
            return result.state

        return self._memo(("rm", label, seed, assumption), build)

    def scores(self, model: rm.RewardModel, state: rm.RewardModelState) -> np.ndarray:
        """``[N]`` scores of every pool segment under the reward model's own assumption."""
        seg = self.data.segments
        f32 = lambda x: jnp.asarray(x, jnp.float32)
        return np.asarray(rm_scores(model, state, f32(seg.obs), f32(seg.action), f32(seg.mask)))

    def epic(self, value_fn: Callable[..., Array], params: Any, seed: int) -> float:
        """EPIC distance of ``value_fn(params, ·)`` to the task's reward (held-out steps)."""
        sample = self._memo(("epic", seed), lambda: epic_sample(
            self.config, self.data, self.split(seed), seed))
        truth = self._memo(("epic_true", seed), lambda: np.asarray(canonical(
            TrueReward(self.data.spec), None, sample, self.config.discount)))
        learned = np.asarray(canonical(value_fn, params, sample, self.config.discount))
        return evaluation.pearson_distance(evaluation.pearson(learned, truth))

    def evaluate(self, policy: PolicyFn) -> dict[str, float]:
        """True return etc. of ``policy`` (the same start states for every policy)."""
        from prefrl.rollout import evaluate_on_task

        cfg = self.config
        out = evaluate_on_task(self.data.spec, policy, episodes=cfg.eval_episodes,
                               seed=cfg.seed * 1000 + 10_007,
                               num_steps=cfg.eval_steps or None)
        res = {"return": out["mean_return"], "return_std": out["std_return"],
               "mean_speed": out["mean_speed"]}
        if "mean_speed_error" in out:
            res["speed_error"] = out["mean_speed_error"]
        return res

    def reference(self) -> dict[str, dict[str, float]]:
        """The expert's (deterministic) and a uniform random policy's evaluation."""
        expert, _ = checkpoints.load_policy(self.expert_path, deterministic=True,
                                            obs_dim=self.data.spec.obs_dim)
        return {"expert": self.evaluate(expert),
                "random": self.evaluate(random_policy(self.data.spec.act_dim))}


def run_cell(config: LearnerAssumptionConfig, ctx: TaskContext, label: str, learner: str,
             seed: int) -> dict[str, Any]:
    """Fit one learner on one label set for one seed; evaluate it (``learner_assumption``).

    Returns ``{"task", "label", "learner", "seed", "fingerprint", "metrics",
    "wall_s"}``; ``metrics`` holds :data:`METRICS` (``epic_r`` is None for
    ``advantage_greedy``, which hands no reward to RL) and learner details.
    """
    if label not in LABELS or learner not in LEARNERS:
        raise ValueError(f"unknown cell ({label!r}, {learner!r}); labels {LABELS}, learners "
                         f"{LEARNERS}")
    t0 = time.perf_counter()
    data, split = ctx.data, ctx.split(seed)
    metrics: dict[str, Any] = {}
    policy: PolicyFn
    if learner in ("reward_ppo", "regret_sf_ppo"):
        model = ctx.rm_model("partial_return")
        r_hat = ctx.reward_model(label, seed, "partial_return")
        if learner == "reward_ppo":
            value_fn, params, scores = RMValue(model), strip(r_hat), ctx.scores(model, r_hat)
        else:
            fitted = fit_regret_sf(config, data, split, label, model, r_hat, seed,
                                   rollouts=ctx.rollouts(), heldout=ctx.heldout_rollouts())
            value_fn, params, scores = fitted.value_fn, fitted.params, fitted.scores
            metrics.update(fitted.metrics)
    else:
        model = ctx.rm_model("advantage")
        a_hat = ctx.reward_model(label, seed, "advantage")
        value_fn, params, scores = RMValue(model), strip(a_hat), ctx.scores(model, a_hat)
    metrics.update(accuracies(scores, data, split.test))
    metrics["train_acc"] = accuracies(scores, data, split.train)[
        "acc_pr" if label == "partial_return" else "acc_regret"]
    key_policy = named_key(config, data.name, seed, label, learner, "policy")
    if learner == "advantage_greedy":
        seg = data.segments
        adv = np.asarray(value_fn(params, jnp.asarray(seg.obs, jnp.float32),
                                  jnp.asarray(seg.action, jnp.float32), None))
        awr_policy, awr_metrics = fit_awr(config, data, split, adv, key_policy)
        metrics.update(awr_metrics)
        metrics["epic_r"] = None
        policy = policy_fn(awr_policy, deterministic=True)
    else:
        metrics["epic_r"] = ctx.epic(value_fn, params, seed)
        reference = None
        if config.kl_ref_coef > 0:
            reference, _ = fit_awr(config, data, split, None,
                                   named_key(config, data.name, seed, "reference"))
        policy, ppo_metrics = train_ppo(config, data, value_fn, params, seed,
                                        f"{learner}/{label}", reference)
        metrics.update(ppo_metrics)
    metrics.update(ctx.evaluate(policy))
    return {"task": data.name, "label": label, "learner": learner, "seed": int(seed),
            "fingerprint": config.fingerprint(), "metrics": metrics,
            "wall_s": time.perf_counter() - t0}


__all__ = ["TaskContext", "run_cell"]
