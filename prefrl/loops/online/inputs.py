"""What an online run reads besides its own rollouts: the expert's critic V_E (the
regret oracle), the frozen π_ref (PPO's KL penalty) and an offline dataset's labels
(the snapshot-pool ablation). Each is checked against the run's task and settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prefrl import checkpoints, oracles
from prefrl.data import dataset as dataset_io
from prefrl.envs import check_same_params, parse_task_params
from prefrl.io import read_task
from prefrl.learners import ppo
from prefrl.loops.online import core as core_lib
from prefrl.loops.online.config import OnlineConfig
from prefrl.loops.ppo import load_reference


def dataset_items(c: OnlineConfig, core: core_lib.Core, n: int, r: jax.Array
                   ) -> core_lib.LabelItem:
    """``n`` queries of ``offline_dataset`` (a seeded subset) with its stored labels."""
    data, header = dataset_io.load(c.offline_dataset)
    if header.get("task") not in (None, c.task):
        raise ValueError(f"{c.offline_dataset}: dataset of task {header.get('task')!r}, "
                         f"the run is on {c.task!r}")
    if data.segments.length != c.segment_length:
        raise ValueError(f"{c.offline_dataset}: segments of length {data.segments.length}; "
                         f"set segment_length={data.segments.length}")
    if c.offline_label not in data.labels:
        raise ValueError(f"{c.offline_dataset} has no labels {c.offline_label!r}; "
                         f"it has {sorted(data.labels)}")
    if data.num_queries < n:
        raise ValueError(f"{c.offline_dataset} has {data.num_queries} queries, the budget "
                         f"is {n}")
    rows = np.sort(np.random.default_rng(c.seed).permutation(data.num_queries)[:n])
    label = np.asarray(data.labels[c.offline_label], np.float32)[rows]
    mask = data.label_mask.get(c.offline_label) if data.label_mask else None
    keep = np.ones(n, bool) if mask is None else np.asarray(mask, bool)[rows]
    pad = core.sizes.max_round - n
    labels = oracles.Labels(label=jnp.asarray(np.pad(label, (0, pad))),
                            keep=jnp.asarray(np.pad(keep, (0, pad))),
                            score_1=jnp.zeros(n + pad), score_2=jnp.zeros(n + pad))
    segs = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32 if np.asarray(x).dtype.kind == "f"
                                              else None), data.segments)
    idx = lambda x: jnp.asarray(np.pad(np.asarray(x)[rows], (0, pad)), jnp.int32)
    return core_lib.label_items(segs, idx(data.first), idx(data.second), labels, r)


def reference(config: OnlineConfig, ppo_config: ppo.PPOConfig) -> tuple[Any, Any]:
    """``(params, apply)`` of π_ref, or ``(None, None)``."""
    if not config.reference:
        if ppo_config.kl_ref_coef > 0:
            raise ValueError("kl_ref_coef > 0 needs a reference policy (reference / --reference)")
        return None, None
    check_same_params(parse_task_params(config.task, config.task_param),
                      read_task(config.reference), f"reference {config.reference}")
    return load_reference(config.reference)


def expert_critic(config: OnlineConfig, oracle: oracles.OracleConfig, obs_dim: int
                   ) -> tuple[Any, float]:
    """``(V_E, γ)`` of the expert checkpoint (true-reward units), or ``(None, 0.99)``."""
    if not config.expert:
        if oracle.model == "regret":
            raise ValueError("the regret oracle needs an expert critic: set expert "
                             "(--expert PATH to a PPO checkpoint trained on the true reward)")
        return None, 0.99
    if not Path(config.expert).is_file():
        raise FileNotFoundError(f"expert checkpoint {config.expert} not found")
    _, header = checkpoints.load_ppo(config.expert, obs_dim=obs_dim)
    if header.get("task") not in (None, config.task):
        raise ValueError(f"expert {config.expert} was trained on task {header.get('task')!r}, "
                         f"the run is on {config.task!r}")
    check_same_params(parse_task_params(config.task, config.task_param), header,
                      f"expert {config.expert}")
    if oracle.model == "regret" and abs(float(header["discount"]) - oracle.discount) > 1e-9:
        raise ValueError(f"the regret oracle's discount {oracle.discount} differs from the "
                         f"expert critic's γ = {header['discount']}")
    return checkpoints.load_value_fn(config.expert, obs_dim=obs_dim), float(header["discount"])


__all__ = ["dataset_items", "expert_critic", "reference"]
