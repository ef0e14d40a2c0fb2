"""``prefrl collect``: roll a policy out on B environments and save the trajectory.

    prefrl collect --task run --num-envs 16 --steps 2000 --seed 0 --out data/run.npz
    prefrl collect --task target-speed --checkpoint experiments/experts/run/final.npz ...

Without ``--checkpoint`` the behaviour policy samples uniform random actions
on the action box. With one, it samples the checkpoint's tanh-Gaussian policy
(``--deterministic`` acts with ``tanh(mean)``). The file (``kind =
"trajectory"``, see ``prefrl.data.trajectories``) records the task, its
parameters, the seed and the policy; the last stdout line is a JSON summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

import jax
import numpy as np

from prefrl import config as cfg
from prefrl.config import ConfigError, field


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    """Options of ``prefrl collect``."""

    task: str = field("run", "task name: run, run-backward, target-speed")
    task_param: tuple[str, ...] = field(
        (), "task parameter NAME=VALUE, repeatable (e.g. target_speed=3.0)", repeat=True)
    target_speed: float | None = field(None, "v* of target-speed (same as --task-param "
                                       "target_speed=V)")
    num_envs: int = field(16, "number of environments B stepped together")
    steps: int = field(1000, "control steps per environment (rows of the trajectory)")
    seed: int = field(0, "seed of the resets and of the policy's sampling")
    out: str = field("", "output trajectory file (.npz)")
    checkpoint: str | None = field(None, "policy checkpoint; default: uniform random actions")
    deterministic: bool = field(False, "with --checkpoint: act with tanh(mean) instead of sampling")
    num_threads: int | None = field(None, "physics threads (default: all cores)")
    float32: bool = field(True, "store float32 arrays (False: MuJoCo's float64)")

    def __post_init__(self) -> None:
        from prefrl.envs import TASKS

        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; valid tasks: {sorted(TASKS)}")
        if self.target_speed is not None and self.task != "target-speed":
            raise ValueError("--target-speed applies only to --task target-speed")
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {self.num_envs}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "collect",
        help="roll a policy (or random actions) out and save the trajectory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cfg.add_dataclass_args(p, CollectConfig)
    p.set_defaults(func=run)


def _behaviour_policy(config: CollectConfig, act_dim: int) -> tuple[Any, dict[str, Any]]:
    from prefrl.rollout import random_policy

    if config.checkpoint is None:
        return random_policy(act_dim), {"policy": "uniform_random"}
    from prefrl.checkpoints import load_policy

    policy_fn, _ = load_policy(config.checkpoint, deterministic=config.deterministic)
    return policy_fn, {
        "policy": "checkpoint",
        "checkpoint": str(config.checkpoint),
        "deterministic": config.deterministic,
    }


def collect_task(config: CollectConfig) -> Any:
    """The task with ``--task-param`` (and the older ``--target-speed``) applied."""
    from prefrl.envs import parse_task_params

    params = config.task_param
    if config.target_speed is not None:
        given = [p for p in params if str(p).partition("=")[0].strip() == "target_speed"]
        if given:
            raise ConfigError(f"--target-speed {config.target_speed:g} and --task-param "
                              f"{given[0]} contradict each other; give target_speed once")
        params = (*params, f"target_speed={config.target_speed!r}")
    return parse_task_params(config.task, params)


def collect(config: CollectConfig) -> dict[str, Any]:
    """Run the rollout, write ``config.out``; returns the JSON summary."""
    from prefrl import preflight
    from prefrl.data.trajectories import save_trajectory
    from prefrl.rollout import BatchedEnv

    if not config.out:
        raise ConfigError("give the output file: --out PATH")
    preflight.check_output_file(config.out, "--out")
    spec = collect_task(config)
    itemsize = 4 if config.float32 else 8
    # The file holds [steps, num_envs] rows: name the larger factor.
    option, value = max(("--steps", config.steps), ("--num-envs", config.num_envs),
                        key=lambda pair: pair[1])
    preflight.check_memory(option, value, preflight.trajectory_bytes(
        config.steps, config.num_envs, obs_dim=spec.obs_dim, act_dim=spec.act_dim,
        itemsize=itemsize))
    policy_fn, policy_info = _behaviour_policy(config, spec.act_dim)
    dtype = np.float32 if config.float32 else np.float64
    with BatchedEnv(
        spec,
        num_envs=config.num_envs,
        seed=config.seed,
        num_threads=config.num_threads,
        dtype=dtype,
    ) as env:
        env.reset()
        traj = env.rollout(policy_fn, config.steps, jax.random.key(config.seed))
    save_trajectory(config.out, traj, {"seed": config.seed, **policy_info}, task=spec)
    episodes = int(np.asarray(traj.done).sum())
    return {
        "out": config.out,
        "task": spec.name,
        "task_params": spec.params_dict,
        "num_envs": config.num_envs,
        "steps": config.steps,
        "env_steps": config.num_envs * config.steps,
        "completed_episodes": episodes,
        "mean_reward": float(np.mean(traj.reward)),
        "mean_x_velocity": float(np.mean(traj.x_velocity)),
        **policy_info,
    }


def run(args: argparse.Namespace) -> int:
    config = cfg.from_args(CollectConfig, args)
    print(json.dumps(collect(config)))
    return 0
