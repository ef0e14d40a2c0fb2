"""``prefrl train {bc,cpl,dpo}``: load a dataset, train every seed, evaluate, save the policies.

Host code around :func:`prefrl.loops.offline.train`: nothing is written
unless every seed trained to finite parameters; each policy file
(:func:`prefrl.checkpoints.save_offline_policy`) records its configs and its
true-return evaluation (:func:`prefrl.rollout.evaluate_on_task`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from prefrl import checkpoints
from prefrl import config as config_lib
from prefrl.loops import offline
from prefrl.policies import Policy, policy_fn


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Files, seeds and evaluation of one ``prefrl train {bc,cpl,dpo}`` run."""

    dataset: str = config_lib.field("", "preference dataset file (.npz, prefrl.data.dataset)")
    label: str = config_lib.field("regret", "which of the dataset's labels to learn from")
    out: str = config_lib.field(
        "policy.npz", "output policy file; several seeds write <stem>_seed<S>.npz"
    )
    seeds: tuple[int, ...] = config_lib.field((0,), "training seeds (trained together, vmapped)")
    eval_task: str = config_lib.field(
        "", "task for true-return evaluation: '' = the dataset's task, 'none' = skip"
    )
    eval_envs: int = config_lib.field(4, "environments (episodes) per evaluation")
    eval_steps: int = config_lib.field(1000, "steps per evaluation rollout (1000 = one episode)")

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        if self.eval_envs < 1 or self.eval_steps < 1:
            raise ValueError("eval_envs and eval_steps must be >= 1")


@dataclasses.dataclass(frozen=True)
class PolicyRunConfig(RunConfig):
    """:class:`RunConfig` plus an optional initial policy (BC, CPL, CPL-BC)."""

    init_policy: str = config_lib.field("", "start from this saved policy (e.g. a BC policy)")


@dataclasses.dataclass(frozen=True)
class DPORunConfig(RunConfig):
    """:class:`RunConfig` plus the reference policy of contrastive DPO."""

    reference: str = config_lib.field(
        "", "saved BC policy used as π_ref; '' = fit one by BC first (bc_pretrain_steps)"
    )


def seed_paths(out: str, seeds: Sequence[int]) -> list[str]:
    """Output file per seed: ``out`` itself for one seed, else ``<stem>_seed<S><suffix>``."""
    from pathlib import Path

    if len(seeds) == 1:
        return [out]
    p = Path(out)
    return [str(p.with_name(f"{p.stem}_seed{s}{p.suffix or '.npz'}")) for s in seeds]


def run(algo: offline.Algo, run_config: RunConfig, train_config: offline.TrainConfig,
        learner_config: Any) -> dict[str, Any]:
    """Load the dataset, train every seed, evaluate, then save; returns a JSON-able summary.

    Nothing is written unless every seed trained to finite parameters.
    """
    from prefrl import preflight
    from prefrl.data import dataset as dataset_io

    if not run_config.dataset:
        raise ValueError("--dataset is required (a file written by prefrl.data.dataset.save)")
    for path in seed_paths(run_config.out, run_config.seeds):
        preflight.check_output_file(path, "--out")
    dataset, header = dataset_io.load(run_config.dataset)
    preflight.check_memory("--batch-size", train_config.batch_size, preflight.batch_bytes(
        train_config.batch_size, dataset.segments.obs.shape[1:], dataset.segments.action.shape[-1],
        sum(train_config.hidden) * len(run_config.seeds)))
    network = init_params = ref_params = None
    init_path = getattr(run_config, "init_policy", "")
    ref_path = getattr(run_config, "reference", "")
    if init_path:
        network, init_params, _ = checkpoints.load_offline_policy(init_path)
    if ref_path:
        network, ref_params, _ = checkpoints.load_offline_policy(ref_path)
    if network is not None:
        offline.check_dataset(dataset, run_config.label, network.action_dim)
    result = offline.train(algo, dataset, label_name=run_config.label, config=train_config,
                   learner_config=learner_config, seeds=run_config.seeds, network=network,
                   init_params=init_params, ref_params=ref_params)
    task: Any = run_config.eval_task
    if not task and header.get("task") not in (None, "", "unknown"):
        from prefrl.envs.tasks import make_task

        # The dataset's own task, with the reward parameters it was labelled under.
        params = (header.get("meta") or {}).get("task_params") or {}
        task = make_task(header["task"], **params)
    summary: dict[str, Any] = {
        "algo": algo, "dataset": run_config.dataset, "label": run_config.label,
        "seeds": list(run_config.seeds), "train_queries": result.num_train_queries,
        "val_queries": result.num_val_queries, **offline.summarize_history(result.history),
    }
    returns = []
    if task and task != "none":
        from prefrl.rollout import evaluate_on_task

        for i, seed in enumerate(run_config.seeds):
            policy = Policy(result.network.apply, offline.select_seed(result.params, i))
            result_i = evaluate_on_task(task, policy_fn(policy, deterministic=True),
                                        episodes=run_config.eval_envs,
                                        num_steps=run_config.eval_steps, seed=1000 + seed)
            returns.append({k: v for k, v in result_i.items() if k != "returns"})
        summary["eval_task"] = task if isinstance(task, str) else task.to_header()
        summary["eval_return"] = [r["mean_return"] for r in returns]
    paths = seed_paths(run_config.out, run_config.seeds)
    written: list[str] = []
    for i, (seed, path) in enumerate(zip(run_config.seeds, paths, strict=True)):
        meta = {"seed": int(seed), "dataset": run_config.dataset, "label": run_config.label,
                "task": header.get("task"), "train": config_lib.to_dict(train_config),
                "learner": config_lib.to_dict(learner_config),
                "run": config_lib.to_dict(run_config)}
        if returns:
            meta["eval"] = returns[i]
        try:
            checkpoints.save_offline_policy(path, result.network,
                                            offline.select_seed(result.params, i),
                                            algo=algo, meta=meta)
        except (OSError, ValueError) as err:
            raise ValueError(f"saving seed {seed} to {path} failed ({err}); "
                             f"written before it: {written or 'nothing'}") from err
        written.append(path)
    summary["out"] = paths
    return summary
