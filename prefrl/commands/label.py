"""``prefrl label``: trajectory file → segments → queries → oracle labels → dataset file.

Every oracle named in ``--oracles`` labels the *same* queries (e.g.
``--oracles partial_return regret``), each with its own key folded from the
seed, so one file carries both models' labels. The regret oracle needs an
expert critic V_E: ``--expert PATH`` is loaded with
``prefrl.checkpoints.load_value_fn`` and must return V_E in the units of the
true reward with discount ``--regret-discount`` (docs/design.md §3).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from typing import Any

from prefrl import config as cfg
from prefrl.config import ConfigError, field
from prefrl.data.labelling import LabelConfig, label_pool

ValueFn = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class LabelCommandConfig(LabelConfig):
    """Options of ``prefrl label``: the files, plus :class:`prefrl.data.labelling.LabelConfig`."""

    trajectory: str = field("", "input trajectory file (.npz, from prefrl collect)")
    output: str = field("", "output preference dataset file (.npz)")
    expert: str | None = field(None, "expert critic checkpoint for the regret oracle")


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
    if "regret" in config.oracles and value_fn is None and not config.expert:
        raise ConfigError("the regret oracle needs an expert critic: pass --expert PATH")
    preflight.check_output_file(config.output, "--output")
    traj, header = load_trajectory(config.trajectory)
    pool = segment(traj, config.segment_length, config.stride)
    if int(pool.obs.shape[0]) >= 2:
        check_budget(config, pool)
    if "regret" in config.oracles and value_fn is None:
        value_fn = load_expert_value_fn(
            config.expert, discount=config.regret_discount, obs_dim=int(traj.obs.shape[-1]),
            trajectory_header=header,
        )
    dataset, stats = label_pool(config, pool, value_fn)
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
        },
    )
    return {
        "output": str(path),
        "segments": int(dataset.segments.obs.shape[0]),
        "queries": int(dataset.first.shape[0]),
        "labels": stats,
    }


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
