"""The settings of the demo (``prefrl demo``): every budget, and the quick smoke-test budgets."""

from __future__ import annotations

import dataclasses
from typing import Any

from prefrl.config import field

LABELS = ("partial_return", "regret")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Every knob of ``prefrl demo``; the defaults finish in ≤ 10 min on 2 CPU cores."""

    task: str = field("target-speed", "task name (run, run-backward, target-speed)")
    experts: str = field(
        "", "folder of the task's PPO checkpoints ('' = the shipped experiments/experts/<task>)"
    )
    out_dir: str = field("runs/demo", "output folder (results.json, demo.png, PPO runs)")
    seed: int = field(0, "seed of every stage (data, labels, fits, PPO, evaluation)")
    # behaviour data
    max_checkpoints: int = field(
        6, "behaviour policies: the final expert plus up to this many − 1 earlier checkpoints"
    )
    random_policy: bool = field(True, "add a uniform random behaviour policy to the pool")
    overshoot_experts: str = field(
        "", "folder of a faster expert (e.g. run) whose checkpoints join the pool, so labels "
        "show that faster than v* is worse; '' = the 'run' folder beside --experts if present, "
        "'none' = skip"
    )
    overshoot_checkpoints: int = field(
        2, "checkpoints of the overshoot expert to roll out (its earliest and final first)"
    )
    num_envs: int = field(8, "environments per behaviour policy")
    steps_per_checkpoint: int = field(400, "steps each environment runs per behaviour policy")
    segment_length: int = field(25, "segment length k (steps)")
    stride: int = field(25, "steps between segment starts")
    # labels
    num_queries: int = field(2000, "queries, each labelled by both oracles")
    test_fraction: float = field(0.2, "fraction of queries held out for preference accuracy")
    valid_fraction: float = field(0.1, "fraction of the rest used for early stopping")
    # reward models
    rm_steps: int = field(400, "reward-model updates")
    rm_ensemble: int = field(3, "reward-model ensemble size")
    rm_hidden: tuple[int, ...] = field((64, 64), "reward-model hidden widths")
    rm_batch_size: int = field(64, "queries per reward-model update")
    rm_learning_rate: float = field(1e-3, "reward-model Adam step size")
    # PPO on the learned rewards
    ppo_steps: int = field(500_000, "environment steps of each PPO run (one per learned reward)")
    ppo_envs: int = field(32, "PPO parallel environments")
    ppo_rollout_steps: int = field(64, "PPO steps per environment per update")
    ppo_epochs: int = field(5, "PPO epochs per update")
    # online: the same PPO budget, on a reward refitted on its own segments' labels
    online_labels: int = field(
        500, "labels of the online row (Christiano et al. 2017's loop); 0 = no online row")
    online_refit_every: int = field(16, "PPO updates per labelling round of the online row")
    # offline
    bc_steps: int = field(2000, "behaviour-cloning steps (also CPL's initial policy)")
    cpl_steps: int = field(4000, "CPL steps per label set")
    cpl_labels: tuple[str, ...] = field(LABELS, "label sets CPL learns from")
    cpl_bc_weight: float = field(
        1.0, "CPL-BC's BC term (0 = plain CPL); on the preferred segments, as in "
        "`prefrl bench cpl`")
    offline_hidden: tuple[int, ...] = field((128, 128), "BC / CPL policy hidden widths")
    # evaluation
    eval_episodes: int = field(8, "evaluation episodes per policy (1000 steps each)")
    progress: bool = field(True, "show PPO progress bars")

    def __post_init__(self) -> None:
        positive = ("max_checkpoints", "overshoot_checkpoints", "num_envs",
                    "steps_per_checkpoint", "segment_length", "stride", "num_queries",
                    "rm_steps", "rm_ensemble", "rm_batch_size",
                    "ppo_steps", "ppo_envs", "ppo_rollout_steps", "ppo_epochs", "bc_steps",
                    "cpl_steps", "eval_episodes")
        bad = {n: getattr(self, n) for n in positive if int(getattr(self, n)) < 1}
        if bad:
            raise ValueError(f"these DemoConfig values must be >= 1: {bad}")
        if self.online_labels < 0 or self.online_refit_every < 1:
            raise ValueError("online_labels must be >= 0 and online_refit_every >= 1, got "
                             f"{self.online_labels}, {self.online_refit_every}")
        if self.segment_length > self.steps_per_checkpoint:
            raise ValueError(
                f"segment_length {self.segment_length} exceeds steps_per_checkpoint "
                f"{self.steps_per_checkpoint}: no segment fits in a rollout"
            )
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")
        if not self.rm_learning_rate > 0:
            raise ValueError(f"rm_learning_rate must be > 0, got {self.rm_learning_rate}")
        unknown = [n for n in self.cpl_labels if n not in LABELS]
        if unknown or len(set(self.cpl_labels)) != len(self.cpl_labels):
            raise ValueError(f"cpl_labels must be distinct names from {LABELS}, got "
                             f"{list(self.cpl_labels)}")
        if not self.rm_hidden or min(self.rm_hidden) < 1:
            raise ValueError(f"rm_hidden must be positive widths, got {self.rm_hidden}")
        if not self.offline_hidden or min(self.offline_hidden) < 1:
            raise ValueError(f"offline_hidden must be positive widths, got {self.offline_hidden}")
        if self.ppo_envs * self.ppo_rollout_steps % 4:
            raise ValueError("ppo_envs × ppo_rollout_steps must be divisible by 4 (minibatches)")
        from prefrl.envs.tasks import make_task

        make_task(self.task)  # unknown task names fail here, listing the valid ones


# Every budget shrunk so the whole pipeline is a smoke test: about a minute of CPU,
# almost all of it compiling each stage once.
QUICK: dict[str, Any] = {
    "max_checkpoints": 2,
    "overshoot_checkpoints": 1,
    "num_envs": 2,
    "steps_per_checkpoint": 60,
    "segment_length": 10,
    "stride": 10,
    "num_queries": 60,
    "rm_steps": 20,
    "rm_ensemble": 2,
    "rm_hidden": (16,),
    "rm_batch_size": 16,
    "ppo_steps": 512,
    "ppo_envs": 4,
    "ppo_rollout_steps": 64,
    "ppo_epochs": 1,
    "bc_steps": 20,
    "cpl_steps": 20,
    "online_labels": 20,
    "online_refit_every": 1,
    "offline_hidden": (16,),
    "eval_episodes": 2,
    "progress": False,
}


def quick_config(**overrides: Any) -> DemoConfig:
    """:data:`QUICK` budgets (a smoke test of every stage), with ``overrides`` on top."""
    return DemoConfig(**{**QUICK, **overrides})
