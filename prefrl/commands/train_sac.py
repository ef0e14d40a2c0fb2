"""``prefrl train sac``: SAC on a half-cheetah task's true reward (C engine, replay buffer).

    prefrl train sac --task run --total-steps 300000 --out-dir runs/sac-run

Soft Actor-Critic (Haarnoja et al. 2018; ``prefrl.learners.sac``): twin Q and a
tanh-Gaussian actor (256×256 ReLU), Adam 3e-4, batch 256, τ = 0.005, α tuned
towards the target entropy −|A|, ``--warmup-steps`` uniform-random steps, then
``--updates-per-step`` gradient updates per environment step. Writes
``metrics.jsonl`` (one line per ``--log-every`` steps), ``evals.jsonl``,
``snapshots/step_*.npz`` and ``final.npz`` (policy files: ``prefrl eval
--checkpoint …/final.npz``) and ``last.npz`` (the whole state with the replay
buffer and the environments: run the same command again after an
interruption and it continues bit for bit) into ``--out-dir``; ends with one
JSON line. Running a finished run again trains nothing (``--resume false``
starts over).
"""

from __future__ import annotations

import argparse
import json
import sys

from prefrl import config as config_lib
from prefrl.learners import sac
from prefrl.loops import sac as training


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sac",
        help="SAC on a task's true reward",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_lib.add_dataclass_args(p, training.SACTrainConfig)
    config_lib.add_dataclass_args(p, sac.SACConfig)
    p.set_defaults(func=run)


def check_memory(tc: training.SACTrainConfig, config: sac.SACConfig) -> None:
    """Refuse a replay buffer or ``--eval-episodes`` that cannot fit in memory."""
    from prefrl import preflight
    from prefrl.envs import make_task

    spec = make_task(tc.task)
    rows = min(config.buffer_size, tc.total_steps)
    # A stored transition: obs, next_obs, action, reward, terminated (float32, bool).
    # The buffer, and its copies while last.npz is written.
    preflight.check_memory("--buffer-size", rows,
                           3 * rows * (4 * (2 * spec.obs_dim + spec.act_dim + 1) + 1))
    preflight.check_memory("--eval-episodes", tc.eval_episodes, preflight.trajectory_bytes(
        spec.episode_length, tc.eval_episodes, obs_dim=spec.obs_dim, act_dim=spec.act_dim))


def run(args: argparse.Namespace) -> int:
    # Both configs are checked (ValueError naming the setting) before anything is written.
    train_config = config_lib.from_args(training.SACTrainConfig, args)
    sac_config = config_lib.from_args(sac.SACConfig, args)
    check_memory(train_config, sac_config)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    result = training.train(train_config, sac_config, log=log)
    final = result.evaluations[-1] if result.evaluations else {}
    summary = {
        "algo": "sac",
        "task": train_config.task,
        "task_params": train_config.task_spec().params_dict,
        "env_steps": result.env_steps,
        "updates": int(result.state.step),
        "wall_s": round(result.wall_s, 1),
        "mean_return": final.get("mean_return"),
        "std_return": final.get("std_return"),
        "reward": "true",
    }
    if "mean_speed_error" in final:
        summary["mean_speed_error"] = final["mean_speed_error"]
    if result.out_dir is not None:
        summary["checkpoint"] = str(result.out_dir / "final.npz")
    print(json.dumps(summary))
    return 0
