"""``prefrl eval``: roll a policy checkpoint out on a task's true reward.

    prefrl eval --checkpoint experiments/experts/run/final.npz --task run --episodes 10

Runs ``--episodes`` full episodes in parallel (one ``BatchedEnv`` of that
many environments, reset with ``--seed``) and ends with one JSON line holding
``mean_return``, ``std_return``, ``returns``, ``mean_speed`` and, for
``target-speed``, ``mean_speed_error`` (mean |v_x − v*| over every step of
every episode).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from prefrl.config import parse_int, parse_seed


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a policy checkpoint on a task's true reward",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True,
                   help="policy checkpoint (.npz), or a training folder (its final.npz)")
    p.add_argument("--task", default=None, help="task name (default: the checkpoint's task)")
    p.add_argument("--task-param", action="append", default=[], metavar="NAME=VALUE",
                   help="task parameter, repeatable (e.g. target_speed=3.0; default: the "
                        "checkpoint's); must match the checkpoint's for its own task")
    p.add_argument("--episodes", type=parse_int, default=10, help="number of episodes")
    p.add_argument("--seed", type=parse_seed, default=12345,
                   help="seed of the resets and the policy")
    p.add_argument(
        "--stochastic", action="store_true", help="sample actions (default: tanh(mean))"
    )
    p.set_defaults(func=run)


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file; a training folder stands for its ``final.npz`` (said on stderr)."""
    folder = Path(path)
    if not folder.is_dir():
        return path
    final = folder / "final.npz"
    if not final.is_file():
        raise FileNotFoundError(f"--checkpoint {path} is a folder without final.npz; "
                                "give a checkpoint file")
    print(f"prefrl eval: --checkpoint {path} is a folder; using {final}", file=sys.stderr)
    return str(final)


def _recorded_task(path: str) -> str:
    """The task a policy file records (PPO header or offline policy ``meta``)."""
    from prefrl import checkpoints
    from prefrl.config import ConfigError
    from prefrl.envs import TASKS
    from prefrl.io import load_npz, read_kind

    kind = read_kind(path)
    if kind == checkpoints.POLICY_KIND:
        _, header = load_npz(path, kind=kind)
        task = (header.get("meta") or {}).get("task")
        if task not in TASKS:
            raise ConfigError(f"{path}: a {header.get('algo', 'offline')!r} policy file that "
                              f"records no half-cheetah task (its dataset's task: {task!r}); "
                              "pass --task (e.g. --task run)")
        return str(task)
    _, header = load_npz(path, kind=checkpoints.PPO_KIND)
    if "task" not in header:
        raise ConfigError(f"{path}: records no task; pass --task")
    return str(header["task"])


def evaluate_checkpoint(
    checkpoint_path: str,
    task: str | None = None,
    episodes: int = 10,
    seed: int = 12345,
    deterministic: bool = True,
    task_params: Sequence[str] = (),
) -> dict:
    """Evaluate a checkpoint; returns the result dict printed by ``prefrl eval``.

    Without ``task`` the checkpoint's task and task parameters are used;
    ``task_params`` (``NAME=VALUE``) that differ from the checkpoint's for
    its own task are refused (``ValueError`` naming both values).
    """
    from prefrl import checkpoints, preflight
    from prefrl.config import ConfigError
    from prefrl.envs import check_same_params, parse_task_params
    from prefrl.io import read_task
    from prefrl.rollout import evaluate_on_task

    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {episodes}")
    checkpoint_path = resolve_checkpoint(checkpoint_path)
    recorded = read_task(checkpoint_path)
    if task is None:
        task = _recorded_task(checkpoint_path)
        if not task_params and recorded.get("task") == task:
            task_params = [f"{k}={v!r}" for k, v in (recorded.get("task_params") or {}).items()]
    spec = parse_task_params(task, task_params)
    check_same_params(spec, recorded, f"--checkpoint {checkpoint_path}")
    # One environment per episode, each keeping a whole episode.
    preflight.check_memory("--episodes", episodes, preflight.trajectory_bytes(
        spec.episode_length, episodes, obs_dim=spec.obs_dim, act_dim=spec.act_dim))
    policy_fn, info = checkpoints.load_policy(
        checkpoint_path, deterministic=deterministic, obs_dim=spec.obs_dim
    )
    if int(info["act_dim"]) != spec.act_dim:
        raise ValueError(
            f"{checkpoint_path}: action size {info['act_dim']} != task {task!r}'s {spec.act_dim}"
        )
    result = evaluate_on_task(spec, policy_fn, episodes=episodes, seed=seed,
                              discount=float(info.get("discount", 0.99)))
    result.update(
        checkpoint=str(checkpoint_path),
        task=task,
        task_params=spec.params_dict,
        trained_on=info.get("task"),
        deterministic=deterministic,
        seed=seed,
    )
    return result


def run(args: argparse.Namespace) -> int:
    result = evaluate_checkpoint(
        args.checkpoint, args.task, args.episodes, args.seed, deterministic=not args.stochastic,
        task_params=args.task_param,
    )
    print(json.dumps(result))
    return 0
