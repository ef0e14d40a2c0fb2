"""Settings of the label-model × learner-assumption study (``learner_assumption``).

:class:`LearnerAssumptionConfig` holds every budget (``experiments/learner_assumption.py``
parses it); :data:`QUICK` shrinks them to a smoke test; :func:`named_key` gives
every random draw of the study its own key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any, Literal

import jax

from prefrl import config as config_lib
from prefrl.config import field

PRNGKey = jax.Array

LABELS = ("partial_return", "regret")
LEARNERS = ("reward_ppo", "regret_sf_ppo", "advantage_ppo", "advantage_greedy")
PPO_LEARNERS = ("reward_ppo", "regret_sf_ppo", "advantage_ppo")
METRICS = ("acc_pr", "acc_regret", "epic_r", "return")
TASKS = ("target-speed", "run")
RESULT_STEM = "learner_assumption"

# Fields that do not change any cell's numbers (which cells run, where, how loudly).
_NOT_FINGERPRINTED = ("tasks", "labels", "learners", "seeds", "out_dir", "progress",
                      "bootstrap_reps")



@dataclasses.dataclass(frozen=True)
class LearnerAssumptionConfig:
    """Every budget of the study (``experiments/learner_assumption.py``)."""

    tasks: tuple[str, ...] = field(TASKS, "tasks; each needs DATA_DIR/TASK.npz, EXPERTS_DIR/TASK/")
    labels: tuple[str, ...] = field(LABELS, "label models (rows)")
    learners: tuple[str, ...] = field(LEARNERS, "learners (columns)")
    seeds: int = field(3, "seeds per cell (resample segment halves, queries, initialisations)")
    seed: int = field(0, "base seed")
    data_dir: str = field("", "folder of the labelled pools TASK.npz ('' = experiments/data)")
    experts_dir: str = field("", "folder of expert folders TASK/ ('' = experiments/experts)")
    library: tuple[str, ...] = field(
        (), "regret-SF library Π: checkpoint files or folders (empty = the task expert's "
        "snapshots + final.npz)")
    library_final: bool = field(
        True, "keep the final expert in Π (false: the ablation; its critic is the regret "
        "oracle's)")
    out_dir: str = field("experiments/results/learner_assumption",
                         "output folder: cells/ and the JSON + Markdown report")
    discount: float = field(0.99, "γ of the regret model and labels, ψ, EPIC and PPO")
    # queries
    num_train: int = field(2000, "training queries per seed (incl. validation)")
    num_test: int = field(1000, "held-out queries per seed (on the held-out segment half)")
    valid_fraction: float = field(0.1, "training queries held out for early stopping")
    # r̂ and Â (prefrl.learners.reward_model)
    rm_hidden: tuple[int, ...] = field((64, 64), "reward-model hidden widths")
    rm_ensemble: int = field(3, "reward-model ensemble size")
    rm_steps: int = field(600, "reward-model updates")
    rm_batch_size: int = field(64, "queries per reward-model update")
    rm_learning_rate: float = field(1e-3, "reward-model Adam step size")
    eval_every: int = field(50, "updates between validation checks (r̂, Â, w)")
    # regret r̂ via successor features (prefrl.learners.regret_sf)
    phi: Literal["frozen", "learned"] = field(
        "frozen", "φ: the partial-return r̂'s last hidden layer, or learned with ψ refits")
    phi_width: int = field(32, "learned φ: feature width d")
    phi_hidden: tuple[int, ...] = field((64, 64), "learned φ: hidden widths")
    refit_every: int = field(250, "learned φ: updates between ψ refits")
    library_reset_envs: int = field(32, "library rollouts per policy from fresh resets")
    library_pool_envs: int = field(32, "library rollouts per policy from pool segment starts")
    library_steps: int = field(300, "steps of every library rollout (T)")
    heldout_envs: int = field(16, "held-out rollouts per policy for the ψ-fit quality")
    heldout_steps: int = field(500, "steps of every held-out rollout (tail weight γ^(T/2))")
    psi_hidden: tuple[int, ...] = field((128, 128), "ψ network hidden widths (one per π)")
    psi_method: Literal["mc", "td"] = field("mc", "ψ targets: Monte-Carlo or one-step TD")
    psi_rounds: int = field(4, "ψ target recomputations")
    psi_steps_per_round: int = field(250, "ψ gradient steps per round")
    psi_batch_size: int = field(1024, "ψ rows per step (0: all)")
    psi_learning_rate: float = field(1e-3, "ψ Adam step size")
    sf_steps: int = field(1000, "updates of w (and learned φ) on the preference loss")
    sf_batch_size: int = field(64, "queries per w update")
    sf_learning_rate: float = field(1e-3, "w Adam step size")
    sf_l2: float = field(0.0, "L2 penalty on w (and learned φ)")
    gpi_temperature: float = field(0.0, "τ of the soft GPI maximum (0 = max)")
    # Â used greedily (prefrl.learners.advantage_policy)
    awr_steps: int = field(3000, "AWR updates")
    awr_batch_size: int = field(16, "segments per AWR update")
    awr_beta: float = field(1.0, "AWR temperature β (Â is standardised)")
    awr_hidden: tuple[int, ...] = field((256, 256), "AWR policy hidden widths")
    awr_learning_rate: float = field(3e-4, "AWR Adam step size")
    # PPO on a learned reward (prefrl.loops.ppo)
    ppo_steps: int = field(1_000_000, "environment steps of each PPO run")
    ppo_envs: int = field(64, "PPO environments")
    ppo_rollout_steps: int = field(64, "PPO steps per environment per update")
    ppo_epochs: int = field(10, "PPO epochs per update")
    ppo_minibatches: int = field(32, "PPO minibatches per epoch")
    kl_ref_coef: float = field(0.0, "β_KL to π_ref = BC on the training segments (0: none)")
    # evaluation
    eval_episodes: int = field(8, "evaluation episodes per policy")
    eval_steps: int = field(0, "steps per evaluation episode (0 = the task's 1000)")
    epic_transitions: int = field(1000, "EPIC transitions (held-out segments' steps)")
    bootstrap_reps: int = field(2000, "bootstrap replicates of the IQM intervals")
    progress: bool = field(False, "PPO progress bars")

    def __post_init__(self) -> None:
        unknown = {
            "labels": [x for x in self.labels if x not in LABELS],
            "learners": [x for x in self.learners if x not in LEARNERS],
        }
        for name, bad in unknown.items():
            if bad or not getattr(self, name):
                valid = LABELS if name == "labels" else LEARNERS
                raise ValueError(f"{name} must be a non-empty subset of {valid}, got "
                                 f"{list(getattr(self, name))}")
        if not self.tasks:
            raise ValueError("tasks must name at least one task")
        from prefrl.envs.tasks import make_task

        for task in self.tasks:
            make_task(task)  # unknown names fail here, listing the valid ones
        positive = ("seeds", "num_train", "num_test", "heldout_envs", "heldout_steps",
                    "rm_ensemble", "rm_steps",
                    "rm_batch_size", "eval_every", "phi_width", "refit_every", "library_steps",
                    "psi_rounds", "psi_steps_per_round", "sf_steps", "sf_batch_size",
                    "awr_steps", "awr_batch_size", "ppo_steps", "ppo_envs", "ppo_rollout_steps",
                    "ppo_epochs", "ppo_minibatches", "eval_episodes", "epic_transitions",
                    "bootstrap_reps")
        bad = {n: getattr(self, n) for n in positive if int(getattr(self, n)) < 1}
        nonneg = ("library_reset_envs", "library_pool_envs", "psi_batch_size", "eval_steps")
        bad.update({n: getattr(self, n) for n in nonneg if int(getattr(self, n)) < 0})
        if bad:
            raise ValueError(f"invalid LearnerAssumptionConfig values: {bad}")
        if self.library_reset_envs + self.library_pool_envs < 1:
            raise ValueError("library rollouts need library_reset_envs + library_pool_envs >= 1")
        if not 0.0 < self.discount < 1.0:
            raise ValueError(f"discount must be in (0, 1) (successor features), got "
                             f"{self.discount}")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in (0, 1), got {self.valid_fraction}")
        if self.phi not in ("frozen", "learned"):
            raise ValueError(f"phi must be 'frozen' or 'learned', got {self.phi!r}")
        if (self.ppo_envs * self.ppo_rollout_steps) % self.ppo_minibatches:
            raise ValueError("ppo_envs × ppo_rollout_steps must be divisible by ppo_minibatches")
        for name in ("rm_learning_rate", "psi_learning_rate", "sf_learning_rate",
                     "awr_learning_rate", "awr_beta"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.sf_l2 < 0 or self.kl_ref_coef < 0 or self.gpi_temperature < 0:
            raise ValueError("sf_l2, kl_ref_coef and gpi_temperature must be >= 0")

    @property
    def num_valid(self) -> int:
        return max(1, int(round(self.valid_fraction * self.num_train)))

    def fingerprint(self) -> str:
        """A hash of every setting that changes a cell's numbers (not which cells run)."""
        values = {k: v for k, v in config_lib.to_dict(self).items()
                  if k not in _NOT_FINGERPRINTED}
        return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


# Every budget shrunk to a smoke test of every stage on both tasks (about 2–3 min on a
# loaded 2-core machine, nearly all of it compiling each jitted function once).
QUICK: dict[str, Any] = {
    "seeds": 2,
    "out_dir": "runs/learner_assumption_quick",
    "num_train": 120,
    "num_test": 60,
    "rm_hidden": (16,),
    "rm_ensemble": 2,
    "rm_steps": 20,
    "rm_batch_size": 16,
    "eval_every": 10,
    "phi_width": 8,
    "phi_hidden": (16,),
    "refit_every": 10,
    "library_reset_envs": 2,
    "library_pool_envs": 2,
    "library_steps": 20,
    "heldout_envs": 2,
    "heldout_steps": 20,
    "psi_hidden": (16,),
    "psi_rounds": 1,
    "psi_steps_per_round": 5,
    "psi_batch_size": 32,
    "sf_steps": 20,
    "sf_batch_size": 16,
    "awr_steps": 20,
    "awr_batch_size": 4,
    "awr_hidden": (16,),
    "ppo_steps": 512,
    "ppo_envs": 4,
    "ppo_rollout_steps": 64,
    "ppo_epochs": 1,
    "ppo_minibatches": 4,
    "eval_episodes": 2,
    "eval_steps": 50,
    "epic_transitions": 64,
    "bootstrap_reps": 200,
}


def quick_config(**overrides: Any) -> LearnerAssumptionConfig:
    """:data:`QUICK` budgets with ``overrides`` on top."""
    return LearnerAssumptionConfig(**{**QUICK, **overrides})


def repo_root() -> Path:
    """The checkout holding ``experiments/`` (data and experts of the study)."""
    import prefrl

    return Path(prefrl.__file__).resolve().parent.parent


def named_key(config: LearnerAssumptionConfig, *names: Any) -> PRNGKey:
    """A key named by its purpose: fold_in(key(seed), crc32("task/seed/purpose"))."""
    tag = zlib.crc32("/".join(str(n) for n in names).encode()) & 0x7FFFFFFF
    return jax.random.fold_in(jax.random.key(config.seed), tag)


__all__ = [
    "LABELS",
    "LEARNERS",
    "METRICS",
    "PPO_LEARNERS",
    "QUICK",
    "RESULT_STEM",
    "TASKS",
    "LearnerAssumptionConfig",
    "named_key",
    "quick_config",
    "repo_root",
]
