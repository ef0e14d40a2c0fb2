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
from prefrl.config import field
from prefrl.data.labelling import LabelConfig, label_pool

ValueFn = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class LabelCommandConfig(LabelConfig):
    """Options of ``prefrl label``: the files, plus :class:`prefrl.data.labelling.LabelConfig`."""

    trajectory: str = field("", "input trajectory file (.npz, from prefrl collect)")
    output: str = field("", "output preference dataset file (.npz)")
    expert: str | None = field(None, "expert critic checkpoint for the regret oracle")


def load_expert_value_fn(
    path: str, *, discount: float | None = None, obs_dim: int | None = None
) -> ValueFn:
    """``prefrl.checkpoints.load_value_fn(path)``, checking the critic's discount.

    When the checkpoint's header records its ``discount``, it must equal
    ``discount`` (the regret score's γ): V_E is a discounted return with its
    own γ, and the endpoint form is only a telescoped advantage sum with it.
    """
    from prefrl import checkpoints

    if discount is not None:
        _, header = checkpoints.load_ppo(path)
        expert_gamma = header.get("discount")
        if expert_gamma is not None and abs(float(expert_gamma) - discount) > 1e-12:
            raise ValueError(
                f"--regret-discount {discount} differs from the expert critic's discount "
                f"{expert_gamma} ({path}); set --regret-discount {expert_gamma}"
            )
    return checkpoints.load_value_fn(path, obs_dim=obs_dim)


def run_config(config: LabelCommandConfig, value_fn: ValueFn | None = None) -> dict[str, Any]:
    """Run ``prefrl label`` from a config; returns the summary it prints."""
    from prefrl.data import dataset as ds
    from prefrl.data.segments import segment
    from prefrl.data.trajectories import load_trajectory

    if not config.trajectory:
        raise ValueError("give the input trajectory file: --trajectory PATH")
    if not config.output:
        raise ValueError("give the output dataset file: --output PATH")
    if "regret" in config.oracles and value_fn is None and not config.expert:
        raise ValueError("the regret oracle needs an expert critic: pass --expert PATH")
    traj, header = load_trajectory(config.trajectory)
    if "regret" in config.oracles and value_fn is None:
        value_fn = load_expert_value_fn(
            config.expert, discount=config.regret_discount, obs_dim=int(traj.obs.shape[-1])
        )
    pool = segment(traj, config.segment_length, config.stride)
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
