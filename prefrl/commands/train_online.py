"""``prefrl train online``: online preference-based RL (Christiano et al. 2017).

PPO trains on a learned reward that is refitted, every few updates, on
preference labels of segments from the *current* policy::

    prefrl train online --task run --label-budget 1000 --out-dir runs/online-run

Options come in four groups: the loop (no prefix), PPO (``--ppo-…``), the
reward model (``--reward-…``; defaults: the online loop's small ensemble) and
the oracle (``--oracle-…``: model, temperature, mistake probability, …).
The regret oracle needs ``--expert`` (a PPO checkpoint trained on the true
reward, whose critic V_E it uses). Writes ``rounds.jsonl`` (one line per
labelling round), ``evals.jsonl`` and ``result.json`` into ``--out-dir``;
ends with one JSON line.

Policy learners (``--policy-learner``; registry.POLICY_LEARNERS) with their own
options under ``--{name}-…``: ``ppo`` (PPO on r̂, ``--ppo-…``),
``advantage_greedy`` (an actor climbing Â; ``--reward-learner advantage``;
``--advantage-greedy-…``) and ``cpl`` (π fitted to the labels, no reward
model: ``--reward-learner none`` and stochastic labels, e.g.
``--oracle-temperature 1 --oracle-temperature-mode relative``; ``--cpl-…``)::

    prefrl train online --task run --oracle-model regret --oracle-discount 0.99 \
        --expert experiments/experts/run/final.npz --oracle-temperature 1 \
        --oracle-temperature-mode relative --policy-learner cpl --reward-learner none

``--oracle-value mc`` takes the regret oracle's V from Monte-Carlo rollouts of
the expert (``--mc-rollouts`` M, ``--mc-horizon`` H; ``prefrl.loops.online.mc``);
its env steps are logged per round (``oracle_env_steps``,
``oracle_heldout_env_steps``).

GPU: ``--backend mjx`` runs each round (PPO updates on MJX, the segment
pool, query selection, oracle labels and the reward refit) as one compiled
function on the device (``prefrl.loops.online.mjx``; needs ``pip install -e
".[mjx]"``; the ``--mjx-*`` options set its solver). It writes
``rounds.jsonl``, ``evals.jsonl`` (the policy on the C engine every
``--eval-every`` updates), ``last.npz`` (the whole device state: running the
same command again after an interruption continues bit for bit),
``final.npz`` (a PPO checkpoint), ``reward_model.npz`` and ``result.json``,
and refuses what it does not support (the regret oracle, ``--reference``,
``--offline-dataset``, ``--initial-rollouts``)::

    prefrl train online --backend mjx --num-envs 2048 --rollout-steps 32 \
        --total-steps 20000000 --refit-every 4 --pool-capacity 16384 --label-budget 1000 \
        --ppo-num-minibatches 32 --ppo-num-epochs 4 --out-dir runs/online-mjx
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import TYPE_CHECKING

from prefrl import config as config_lib
from prefrl import oracles
from prefrl.envs.mjx_options import SolverOptions
from prefrl.learners import ppo
from prefrl.learners import reward_model as rm

if TYPE_CHECKING:
    from prefrl.loops.online.config import OnlineConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    from prefrl.loops import online

    p = sub.add_parser("online", help="online preference-based RL (PPO + refitted reward)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config_lib.add_dataclass_args(p, online.OnlineConfig)
    config_lib.add_dataclass_args(p, ppo.PPOConfig, prefix="ppo-")
    config_lib.add_dataclass_args(p, rm.RewardModelConfig, prefix="reward-")
    config_lib.add_dataclass_args(p, oracles.OracleConfig, prefix="oracle-")
    for name, spec in online.POLICY_LEARNERS.items():
        if spec.config is not None:
            config_lib.add_dataclass_args(p, spec.config, prefix=_prefix(name))
    p.add_argument("--backend", choices=("cpu", "mjx"), default="cpu",
                   help="cpu: MuJoCo C on threads, host loop; mjx: each round in one jit on "
                        "MJX (GPU; pip install -e \".[mjx]\")")
    config_lib.add_dataclass_args(p, SolverOptions, prefix="mjx-")
    p.set_defaults(func=run)


def _given(cls: type, args: argparse.Namespace, prefix: str) -> dict:
    return {f.name: (tuple(v) if isinstance(v, list) else v)
            for f in dataclasses.fields(cls)
            if (v := getattr(args, prefix + f.name, None)) is not None
            and hasattr(args, prefix + f.name)}


def _prefix(policy_learner: str) -> str:
    return policy_learner.replace("_", "-") + "-"


def run(args: argparse.Namespace) -> int:
    from prefrl.loops import online
    from prefrl.loops.online import registry

    config = config_lib.from_args(online.OnlineConfig, args)
    ppo_config = config_lib.from_args(ppo.PPOConfig, args, prefix="ppo-")
    given_reward = _given(rm.RewardModelConfig, args, "reward-")
    if given_reward and not registry.reward_learner(config.reward_learner).fits:
        options = sorted("--reward-" + k.replace("_", "-") for k in given_reward)
        raise config_lib.ConfigError(
            f"--reward-learner {config.reward_learner} fits no reward model (policy learner "
            f"{config.policy_learner} learns from the labels directly): {options} would be "
            "ignored; leave them out")
    for name, spec in online.POLICY_LEARNERS.items():
        if spec.config is not None and name != config.policy_learner and \
                _given(spec.config, args, _prefix(name)):
            raise config_lib.ConfigError(f"--{_prefix(name)}… options set {name}, but the "
                                         f"policy learner is {config.policy_learner}")
    spec = online.POLICY_LEARNERS[config.policy_learner]
    policy_config = None if spec.config is None else config_lib.from_args(
        spec.config, args, prefix=_prefix(config.policy_learner))
    reward_config = online.default_reward_config(**given_reward) if registry.reward_learner(
        config.reward_learner).fits else None
    oracle = config_lib.from_args(oracles.OracleConfig, args, prefix="oracle-")
    if getattr(args, "backend", "cpu") == "mjx":
        return _run_mjx(args, config, ppo_config, reward_config, oracle)
    result = online.train(config, ppo_config, reward_config, oracle, policy_config=policy_config,
                          log=None if config.out_dir else
                          (lambda line: print(line, file=sys.stderr, flush=True)))
    final = result["final"]
    print(json.dumps({
        "task": config.task, "env_steps": result["env_steps"], "labels": result["labels_used"],
        "wall_s": round(result["wall_s"], 1), "mean_return": final["mean_return"],
        "std_return": final["std_return"], "mean_speed_error": final.get("mean_speed_error"),
        "timing": {k: round(v, 1) for k, v in result["timing"].items()},
        "out_dir": config.out_dir or None,
    }))
    return 0


def _run_mjx(args: argparse.Namespace, config: OnlineConfig, ppo_config: ppo.PPOConfig,
             reward_config: rm.RewardModelConfig, oracle: oracles.OracleConfig) -> int:
    from prefrl.rollout import require_mjx

    require_mjx()
    from prefrl.loops.online import mjx_run as online_mjx_run

    solver = config_lib.from_args(SolverOptions, args, prefix="mjx-")
    result = online_mjx_run.run(config, ppo_config, reward_config, oracle, solver=solver,
                                log=lambda line: print(line, file=sys.stderr, flush=True))
    final = result["final"]
    print(json.dumps({
        "task": config.task, "backend": "mjx", "env_steps": result["env_steps"],
        "labels": result["labels_used"], "wall_s": round(result["wall_s"], 1),
        "mean_return": final["mean_return"], "std_return": final["std_return"],
        "mean_speed_error": final.get("mean_speed_error"), "out_dir": config.out_dir or None,
    }))
    return 0
