"""``prefrl train ppo``: PPO on a half-cheetah task's true reward (batched CPU rollouts).

    prefrl train ppo --task run --total-steps 1000000 --out-dir runs/ppo-run

Writes ``metrics.jsonl`` (one line per update), ``evals.jsonl``, ``last.npz``
(resumable: run the same command again after an interruption; the run
continues bit for bit as if uninterrupted), ``snapshots/step_*.npz`` (at
``--snapshots`` fractions of training) and ``final.npz`` into ``--out-dir``;
ends with one JSON line summarising the run. Running a finished run again
trains nothing and prints its saved result (``--resume false`` starts over).

RLHF: ``--reward-model rm.npz`` makes PPO optimise the learned r̂ (or Â) of a
``prefrl.learners.reward_model`` file instead of the true reward (the true
reward is still logged next to it: ``true_reward`` vs ``proxy_reward`` in
metrics.jsonl, and evaluations use the true reward); ``--reference PATH`` (a
policy file from ``prefrl train bc`` or a PPO checkpoint) with
``--kl-ref-coef β`` subtracts ``β (log π(a|s) − log π_ref(a|s))`` per step::

    prefrl train ppo --task target-speed --reward-model rm.npz \
        --reference bc.npz --kl-ref-coef 0.1 --out-dir runs/rlhf-b0.1

GPU: ``--backend mjx`` runs rollouts, reward, GAE and the update as one
compiled step on MJX (``prefrl.loops.ppo_mjx``; needs ``pip install -e
".[mjx]"``); the ``--mjx-*`` options set its solver. It writes the same
files, evaluates on the C engine, and its ``last.npz`` holds the whole device
state (MJX physics included), so it resumes bit for bit too::

    prefrl train ppo --backend mjx --num-envs 2048 --rollout-steps 32 \
        --num-minibatches 32 --num-epochs 4 --total-steps 20000000 --out-dir runs/ppo-mjx
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from prefrl import config as config_lib
from prefrl.envs.mjx_options import SolverOptions
from prefrl.learners import ppo
from prefrl.loops import ppo as training

BACKENDS = ("cpu", "mjx")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ppo",
        help="PPO on a task's true reward",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_lib.add_dataclass_args(p, training.TrainConfig)
    config_lib.add_dataclass_args(p, ppo.PPOConfig)
    p.add_argument("--reward-model", default=None,
                   help="optimise this learned reward model (.npz) instead of the true reward")
    p.add_argument("--reference", default=None,
                   help="frozen π_ref for --kl-ref-coef; with β=0 the KL is only logged")
    p.add_argument("--init-checkpoint", default=None,
                   help="start from this PPO checkpoint's policy/critic/normalisers")
    p.add_argument("--backend", choices=BACKENDS, default="cpu",
                   help="cpu: MuJoCo C on threads, jitted update; mjx: the whole iteration "
                        "in one jit on MJX (GPU; pip install -e \".[mjx]\")")
    config_lib.add_dataclass_args(p, SolverOptions, prefix="mjx-")
    p.set_defaults(func=run)


def check_memory(config: training.TrainConfig) -> None:
    """Refuse ``--num-envs`` / ``--eval-episodes`` whose rollouts cannot fit in memory."""
    from prefrl import preflight
    from prefrl.envs import make_task

    spec = make_task(config.task)
    # A rollout is [rollout_steps, num_envs]; PPO's update holds a few copies of it.
    preflight.check_memory("--num-envs", config.num_envs, 4 * preflight.trajectory_bytes(
        config.rollout_steps, config.num_envs, obs_dim=spec.obs_dim, act_dim=spec.act_dim))
    preflight.check_memory("--eval-episodes", config.eval_episodes, preflight.trajectory_bytes(
        spec.episode_length, config.eval_episodes, obs_dim=spec.obs_dim, act_dim=spec.act_dim))


def check_task_params(spec: Any, files: dict[str, str | None]) -> None:
    """``ValueError`` naming both values when a file was made with other task parameters."""
    from prefrl.envs import check_same_params
    from prefrl.io import read_task

    for option, path in files.items():
        if path:
            check_same_params(spec, read_task(path), f"{option} {path}")


def run(args: argparse.Namespace) -> int:
    train_config = config_lib.from_args(training.TrainConfig, args)
    ppo_config = config_lib.from_args(ppo.PPOConfig, args)
    check_memory(train_config)
    if train_config.out_dir:
        from prefrl import preflight

        preflight.check_output_dir(train_config.out_dir, "--out-dir")
    check_task_params(train_config.task_spec(), {
        f"--{name.replace('_', '-')}": getattr(args, name, None)
        for name in ("reward_model", "reference", "init_checkpoint")})
    kwargs = training.rlhf_kwargs(
        getattr(args, "reward_model", None), getattr(args, "reference", None), ppo_config
    )
    if train_config.out_dir:  # a last.npz that cannot be resumed: refused before anything runs
        from prefrl.loops.ppo_files import check_resumable

        check_resumable(train_config, ppo_config, getattr(args, "backend", "cpu"))
    if getattr(args, "init_checkpoint", None):  # refused before the run folder is touched
        from prefrl import checkpoints

        checkpoints.load_ppo(args.init_checkpoint, obs_dim=train_config.task_spec().obs_dim)
    if train_config.out_dir:
        from prefrl import locks

        with locks.hold(train_config.out_dir, option="--out-dir", what="run folder"):
            result = _train(args, train_config, ppo_config, kwargs)
    else:
        result = _train(args, train_config, ppo_config, kwargs)
    print(json.dumps(_summary(args, train_config, kwargs, result)))
    return 0


def _train(args: argparse.Namespace, train_config: training.TrainConfig,
           ppo_config: ppo.PPOConfig, kwargs: dict[str, Any]) -> Any:
    log = lambda line: print(line, file=sys.stderr, flush=True)
    init_checkpoint = getattr(args, "init_checkpoint", None)
    if getattr(args, "backend", "cpu") == "mjx":
        from prefrl.rollout import require_mjx

        require_mjx()
        from prefrl.loops import ppo_mjx

        solver = config_lib.from_args(SolverOptions, args, prefix="mjx-")
        result = ppo_mjx.run(train_config, ppo_config, solver=solver, log=log,
                             init_checkpoint=init_checkpoint, **kwargs)
    else:
        result = training.train(train_config, ppo_config, log=log,
                                init_checkpoint=init_checkpoint, **kwargs)
    return result


def _summary(args: argparse.Namespace, train_config: training.TrainConfig,
             kwargs: dict[str, Any], result: Any) -> dict[str, Any]:
    final = result.evaluations[-1] if result.evaluations else {}
    summary = {
        "task": train_config.task,
        "task_params": train_config.task_spec().params_dict,
        "env_steps": result.env_steps,
        "wall_s": round(result.wall_s, 1),
        "mean_return": final.get("mean_return"),
        "std_return": final.get("std_return"),
        "reward": kwargs.get("reward_name", "true"),
        "backend": getattr(args, "backend", "cpu"),
    }
    if result.history:
        last = result.history[-1]
        summary.update(
            proxy_reward=last["proxy_reward"], true_reward=last["true_reward"],
            ref_kl=last["ref_kl"],
        )
    if "mean_speed_error" in final:
        summary["mean_speed_error"] = final["mean_speed_error"]
    if result.out_dir is not None:
        summary["checkpoint"] = str(result.out_dir / "final.npz")
    return summary
