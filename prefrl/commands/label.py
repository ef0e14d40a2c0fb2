"""``prefrl label``: trajectory file → segments → queries → oracle labels → dataset file.

Every oracle named in ``--oracles`` labels the *same* queries (e.g.
``--oracles partial_return regret``), each with its own key folded from the
seed, so one file carries both models' labels. The regret oracle needs an
expert critic V_E: ``--expert PATH`` is loaded with
``prefrl.checkpoints.load_value_fn`` and must return V_E in the units of the
true reward with discount ``--regret-discount`` (docs/design.md §3).

``--oracle-value mc`` takes the regret oracle's V from Monte-Carlo rollouts
of that expert instead of its critic (:mod:`prefrl.oracles_mc`, issue #24):
``--mc-rollouts`` M stochastic rollouts of ``--mc-horizon`` H steps from each
segment's s_0 and s_k, plus γ^H·V_E(s_H). Its labels are exact for A^{π_E}
up to the tail and the MC noise; they cost M·H env steps per distinct
endpoint (README, "A faithful regret oracle: Monte-Carlo values").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from typing import Any, Literal

from prefrl import config as cfg
from prefrl.config import ConfigError, field
from prefrl.data.labelling import LabelConfig, label_pool
from prefrl.oracles_mc import DEFAULT_HORIZON, DEFAULT_ROLLOUTS, VALUES

ValueFn = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class LabelCommandConfig(LabelConfig):
    """Options of ``prefrl label``: the files, plus :class:`prefrl.data.labelling.LabelConfig`."""

    trajectory: str = field("", "input trajectory file (.npz, from prefrl collect)")
    output: str = field("", "output preference dataset file (.npz)")
    expert: str | None = field(None, "expert critic checkpoint for the regret oracle")
    oracle_value: Literal["critic", "mc"] = field(
        "critic", "V of the regret oracle: critic (the expert's V_E) or mc (Monte-Carlo "
        "rollouts of the expert's stochastic policy from s_0 and s_k, plus γ^H·V_E)")
    mc_rollouts: int = field(DEFAULT_ROLLOUTS, "M: expert rollouts per state (--oracle-value mc)")
    mc_horizon: int = field(DEFAULT_HORIZON, "H: steps per rollout before the γ^H·V_E tail "
                            "(--oracle-value mc)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.oracle_value not in VALUES:
            raise ConfigError(f"--oracle-value must be one of {list(VALUES)}, got "
                              f"{self.oracle_value!r}")
        for name in ("mc_rollouts", "mc_horizon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 1, "
                                  f"got {value!r}")
        if self.oracle_value == "mc" and "regret" not in self.oracles:
            raise ConfigError("--oracle-value mc sets the regret oracle's V: add regret to "
                              "--oracles (or leave --oracle-value critic)")


def load_expert_value_fn(
    path: str, *, discount: float | None = None, obs_dim: int | None = None,
    trajectory_header: dict[str, Any] | None = None,
) -> ValueFn:
    """``prefrl.checkpoints.load_value_fn(path)``, after checking the critic fits.

    The critic's header must agree with the trajectory's task and task
    parameters, with ``discount`` (the regret score's γ: V_E is a discounted
    return with its own γ, and the endpoint form is only a telescoped
    advantage sum with it) and with the observation size
    (:func:`prefrl.data.labelling.check_critic`).
    """
    from prefrl import checkpoints
    from prefrl.data.labelling import check_critic

    if discount is not None:
        _, header = checkpoints.load_ppo(path)
        check_critic(header, trajectory_header or {}, discount=discount, obs_dim=obs_dim,
                     where=path)
    return checkpoints.load_value_fn(path, obs_dim=obs_dim)


def run_config(config: LabelCommandConfig, value_fn: ValueFn | None = None) -> dict[str, Any]:
    """Run ``prefrl label`` from a config; returns the summary it prints.

    Every check (output path, budget, expert critic) runs before labelling,
    so a refused input writes nothing.
    """
    from prefrl import preflight
    from prefrl.data import dataset as ds
    from prefrl.data.labelling import check_budget
    from prefrl.data.segments import segment
    from prefrl.data.trajectories import load_trajectory

    if not config.trajectory:
        raise ConfigError("give the input trajectory file: --trajectory PATH")
    if not config.output:
        raise ConfigError("give the output dataset file: --output PATH")
    use_mc = config.oracle_value == "mc"
    if use_mc and not config.expert:
        raise ConfigError("--oracle-value mc needs the expert checkpoint (--expert PATH): its "
                          "policy makes the rollouts and its critic V_E the γ^H tail")
    if "regret" in config.oracles and value_fn is None and not config.expert:
        raise ConfigError("the regret oracle needs an expert critic: pass --expert PATH")
    preflight.check_output_file(config.output, "--output")
    traj, header = load_trajectory(config.trajectory)
    pool = segment(traj, config.segment_length, config.stride)
    if int(pool.obs.shape[0]) >= 2:
        check_budget(config, pool)
    labeller = _mc_labeller(config, header) if use_mc else None
    if "regret" in config.oracles and value_fn is None and not use_mc:
        value_fn = load_expert_value_fn(
            config.expert, discount=config.regret_discount, obs_dim=int(traj.obs.shape[-1]),
            trajectory_header=header,
        )
    try:
        dataset, stats = label_pool(config, pool, value_fn,
                                    labellers={"regret": labeller} if labeller else None)
    finally:
        if labeller is not None:
            labeller.close()
    mc_meta = None if labeller is None else {
        "rollouts": config.mc_rollouts, "horizon": config.mc_horizon,
        "env_steps": labeller.env_steps, "seconds": round(labeller.seconds, 3),
        "states": labeller.last_info.get("states"),
        "stepped_final_states": labeller.last_info.get("stepped_final_states"),
        "keys": "regret labels' key splits into (rollouts, labels); rollout m of state i: "
                "fold_in(fold_in(rollouts, i), m)"}
    oracle_dicts = {n: cfg.to_dict(config.oracle(n)) for n in config.oracles}
    path = ds.save(
        config.output,
        dataset,
        task=str(header.get("task", "unknown")),
        oracles=oracle_dicts,
        seeds={"seed": config.seed},
        meta={
            "trajectory": config.trajectory,
            "expert": config.expert,
            "stride": config.stride,
            "pairing": config.pairing,
            "task_params": header.get("task_params"),
            "command": cfg.to_dict(config),
            "keys": "PRNGKey(seed) -> split (queries, labels); oracle i: fold_in(labels, i)",
            "oracle_value": config.oracle_value,
            "mc": mc_meta,
        },
    )
    summary = {
        "output": str(path),
        "segments": int(dataset.segments.obs.shape[0]),
        "queries": int(dataset.first.shape[0]),
        "labels": stats,
    }
    if mc_meta is not None:
        summary["mc"] = {k: v for k, v in mc_meta.items() if k != "keys"}
    return summary


def _mc_labeller(config: LabelCommandConfig, header: dict[str, Any]) -> Any:
    """The Monte-Carlo regret labeller, its expert checked against the trajectory's task."""
    from prefrl.envs.tasks import task_from_header
    from prefrl.oracles_mc import MCConfig, MCLabeller

    mc = MCConfig(expert=config.expert, rollouts=config.mc_rollouts, horizon=config.mc_horizon)
    return MCLabeller(config.oracle("regret"), mc, task_from_header(header),
                      trajectory_header=header)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "label",
        help="label queries from a trajectory file with synthetic oracles",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cfg.add_dataclass_args(p, LabelCommandConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = cfg.from_args(LabelCommandConfig, args)
    summary = run_config(config)
    print(json.dumps(summary, sort_keys=True))
    return 0
