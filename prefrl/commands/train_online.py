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

A person as the teacher: ``--teacher web`` serves each round's queries on
the labelling page of ``prefrl annotate`` (one address for the run,
``--teacher-port``), from inside the training process, and waits for the
answers (``prefrl.annotate.teacher``). Where not set, the budget and schedule
are sized for a person: ``--label-budget 100 --initial-fraction 0.2
--refit-every 25`` (10 rounds of 20, 17, …, 5 labels over 1M steps). Labels go
to ``OUT_DIR/people/round_RRR/labels.npz``; each round's record names the
teacher and the annotators; a killed run resumes at the waiting round with the
answers kept (run the same command again)::

    prefrl train online --teacher web --out-dir runs/person --teacher-annotator alice
    # open http://127.0.0.1:8765/ when a round is announced

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefrl import config as config_lib
from prefrl import oracles
from prefrl.annotate import teacher as teacher_lib
from prefrl.config import ConfigError
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
    p.add_argument("--teacher", choices=teacher_lib.TEACHERS, default="oracle",
                   help="who labels: oracle (the scripted --oracle-…, default) or web (a person "
                        "on the labelling page; CPU backend)")
    config_lib.add_dataclass_args(p, teacher_lib.TeacherConfig, prefix="teacher-")
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

    kind = getattr(args, "teacher", "oracle")
    web = kind == "web"
    # A person's budget where the user set none (argparse leaves unset options out).
    person = {k: v for k, v in teacher_lib.WEB_DEFAULTS.items() if web and not hasattr(args, k)}
    config = config_lib.from_args(online.OnlineConfig, args, **person)
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
    config = registry.resolve(config, policy_config)
    try:
        config.round_updates()
    except ValueError as err:
        raise config_lib.ConfigError(str(err)) from None
    reward_config = online.default_reward_config(**given_reward) if registry.reward_learner(
        config.reward_learner).fits else None
    oracle = config_lib.from_args(oracles.OracleConfig, args, prefix="oracle-")
    teacher_config = _check_teacher(args, kind, config)  # options (exit 2) before files
    check_inputs(config)
    if config.out_dir:
        from prefrl import locks

        with locks.hold(config.out_dir, option="--out-dir", what="run folder"):
            return _run(args, config, ppo_config, reward_config, oracle, kind, teacher_config,
                        policy_config)
    return _run(args, config, ppo_config, reward_config, oracle, kind, teacher_config,
                policy_config)


def check_inputs(config: OnlineConfig) -> None:
    """Refuse, before the run folder is touched, options and files the run cannot use.

    Round 0 (before any RL) must get at least two labels: a preference fit on
    fewer has nothing to compare. The files the loop will read are loaded once here, so a
    bad one is refused before the run folder exists.
    """
    from prefrl import checkpoints, preflight
    from prefrl.config import ConfigError

    first = int(config.schedule_counts()[0])
    if first < 2:
        raise ConfigError(
            f"--label-budget {config.label_budget}: round 0 would get {first} label(s) "
            f"(--initial-fraction {config.initial_fraction:g} of the budget), and the first "
            "reward fit needs at least 2; raise --label-budget or --initial-fraction")
    if config.out_dir:
        preflight.check_output_dir(config.out_dir, "--out-dir")
    # Each file by its schema and arrays; the loop checks them against the task.
    if config.expert:
        checkpoints.load_ppo(config.expert)
    if config.reference:
        checkpoints.read_policy(config.reference)
    if config.offline_dataset:
        from prefrl.data import dataset

        dataset.load(config.offline_dataset)


def _run(args: argparse.Namespace, config: OnlineConfig, ppo_config: ppo.PPOConfig,
         reward_config: rm.RewardModelConfig | None, oracle: oracles.OracleConfig, kind: str,
         teacher_config: teacher_lib.TeacherConfig, policy_config: Any = None) -> int:
    from prefrl.loops import online

    web = kind == "web"
    if getattr(args, "backend", "cpu") == "mjx":
        return _run_mjx(args, config, ppo_config, reward_config, oracle)
    labeller, callback = None, None
    if web:
        from prefrl.envs import parse_task_params

        teacher = teacher_lib.WebTeacher(
            teacher_config, task=parse_task_params(config.task, config.task_param),
            task_name=config.task, out_dir=config.out_dir, round_updates=config.round_updates(),
            counts=config.schedule_counts())
        labeller, callback = teacher.labeller(), teacher.add_to_record
        teacher_lib.mark_teacher(Path(config.out_dir), kind)
    result = online.train(config, ppo_config, reward_config, oracle, labeller=labeller,
                          callback=callback, policy_config=policy_config,
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


def _check_teacher(args: argparse.Namespace, kind: str, config: OnlineConfig
                   ) -> teacher_lib.TeacherConfig:
    """The teacher's options, checked before anything is written (``ConfigError``)."""
    teacher_config = config_lib.from_args(teacher_lib.TeacherConfig, args, prefix="teacher-")
    given = sorted(f"--teacher-{f.name.replace('_', '-')}"
                   for f in dataclasses.fields(teacher_lib.TeacherConfig)
                   if hasattr(args, "teacher-" + f.name))
    if kind != "web":
        if given:
            raise ConfigError(f"{', '.join(given)} set the web teacher: add --teacher web")
        if config.out_dir:
            teacher_lib.check_teacher_of_run(Path(config.out_dir), kind, config.resume)
        return teacher_config
    if getattr(args, "backend", "cpu") != "cpu":
        raise ConfigError("--teacher web runs on the CPU backend only (a round waits for a "
                          "person between two jitted calls); drop --backend mjx")
    if not config.out_dir:
        raise ConfigError("--teacher web needs --out-dir: the people's labels and the "
                          "checkpoint a waiting run resumes from go there")
    if config.offline_dataset:
        raise ConfigError("--teacher web labels the run's own queries; --offline-dataset takes "
                          "its labels from a file (drop one of them)")
    out = Path(config.out_dir)
    teacher_lib.check_teacher_of_run(out, kind, config.resume)
    if config.resume and (out / "result.json").exists() and not (out / "last.npz").exists():
        raise ConfigError(f"{out} holds a finished run; use another --out-dir")
    from prefrl.annotate.store import check_annotator
    from prefrl.render import Renderer

    if teacher_config.annotator:
        try:
            check_annotator(teacher_config.annotator)
        except ValueError as err:
            raise ConfigError(f"--teacher-annotator: {err}") from err
    # A machine that cannot draw the clips, or a port in use, fails now, with nothing written.
    Renderer(16, 16, backend=teacher_config.gl).close()
    teacher_lib.check_port(teacher_config.host, teacher_config.port)
    return teacher_config


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
