"""Data of the learner-assumption study, and its rewards as hashable values.

One task's labelled pool (:func:`load_task_data`), a seed's split
(:func:`seed_split`), EPIC samples (:func:`epic_sample`), and the learned
rewards as ``(params, obs, action, next_obs) -> r`` values.

Reward values are frozen dataclasses so that the jitted functions taking
them as static arguments (EPIC's canonicalisation, PPO's update) compile once
per kind of reward, not once per fit: the parameters travel as arrays.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from prefrl import evaluation
from prefrl.data import pairs
from prefrl.learners import ppo
from prefrl.learners import reward_model as rm
from prefrl.learners.sf_networks import FrozenPhi, LearnedPhi, SFValue  # noqa: F401 (re-exported)
from prefrl.studies.learner_assumption_config import (
    LABELS,
    LearnerAssumptionConfig,
    named_key,
    repo_root,
)
from prefrl.types import PairBatch, Segments

Array = jax.Array
Params = Any


# --------------------------------------------------------------------------- #
# Data of one task and one seed
# --------------------------------------------------------------------------- #


class TaskData(NamedTuple):
    """A labelled pool: segments ``[N, k, …]``, queries ``[Q]`` and both oracles' labels."""

    name: str
    spec: Any  # prefrl.envs.TaskSpec
    segments: Segments
    first: np.ndarray
    second: np.ndarray
    labels: dict[str, np.ndarray]


def load_task_data(config: LearnerAssumptionConfig, name: str) -> TaskData:
    """``DATA_DIR/NAME.npz`` with both labels on every query and the regret labels' γ checked."""
    from prefrl.data import dataset as dataset_io
    from prefrl.envs import tasks

    folder = Path(config.data_dir) if config.data_dir else repo_root() / "experiments" / "data"
    path = folder / f"{name}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"labelled pool {path} not found (see experiments/data/README.md)")
    ds, header = dataset_io.load(path)
    if header.get("task") != name:
        raise ValueError(f"{path}: pool of task {header.get('task')!r}, expected {name!r}")
    missing = [n for n in LABELS if n not in ds.labels]
    if missing:
        raise ValueError(f"{path}: the study needs labels {list(LABELS)}; missing {missing}")
    if not all(bool(np.all(np.asarray(ds.label_mask[n]))) for n in LABELS):
        raise ValueError(f"{path}: every query must be labelled by both oracles (none skipped)")
    gamma = dict(header.get("oracles", {})).get("regret", {}).get("discount")
    if gamma is not None and abs(float(gamma) - config.discount) > 1e-9:
        raise ValueError(f"--discount {config.discount} differs from the regret labels' "
                         f"γ = {gamma} in {path}")
    params = dict(header.get("meta", {})).get("task_params") or {}
    spec = tasks.make_task(name, **dict(params))
    seg = jax.tree.map(np.asarray, ds.segments)
    if seg.obs.shape[-1] != spec.obs_dim:
        raise ValueError(f"{path}: observations of size {seg.obs.shape[-1]}, task {name} has "
                         f"{spec.obs_dim}")
    return TaskData(name, spec, seg, np.asarray(ds.first), np.asarray(ds.second),
                    {n: np.asarray(ds.labels[n], np.float32) for n in LABELS})


class SeedSplit(NamedTuple):
    """Query indices of one seed: ``train``, ``valid`` (both on the training segment half),
    ``test`` (on the held-out half); ``train_segments`` the segments of training queries."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    train_segments: np.ndarray


def seed_split(config: LearnerAssumptionConfig, data: TaskData, seed: int) -> SeedSplit:
    """Resample the held-out segment half, the queries and the validation split for ``seed``."""
    n = int(data.segments.obs.shape[0])
    tr, te = pairs.split_by_segments(named_key(config, data.name, seed, "split"), n,
                                     data.first, data.second, config.num_train, config.num_test)
    key_valid = named_key(config, data.name, seed, "valid")
    order = np.asarray(jax.random.permutation(key_valid, tr.shape[0]))
    valid, train = tr[order[:config.num_valid]], tr[order[config.num_valid:]]
    segs = np.unique(np.concatenate([data.first[train], data.second[train]]))
    return SeedSplit(train, valid, te, segs)


def query_split(data: TaskData, valid_fraction: float, seed: int) -> SeedSplit:
    """All of ``data``'s queries split into training and validation (seeded), no test rows.

    For fitting on a given query set (``prefrl fit``, sweep cells); the study
    itself draws its queries per seed with :func:`seed_split`. ``ValueError``
    when the validation part would be empty.
    """
    num = int(data.first.shape[0])
    parts = pairs.split(num, {"valid": valid_fraction}, int(seed))
    if parts["valid"].size == 0:
        raise ValueError(f"no validation split: valid_fraction {valid_fraction} of {num} "
                         "labelled queries is empty")
    train = parts["train"]
    segs = np.unique(np.concatenate([data.first[train], data.second[train]]))
    return SeedSplit(train, parts["valid"], np.zeros(0, np.int64), segs)


def pair_batch(data: TaskData, rows: np.ndarray, label: str) -> PairBatch:
    """The queries ``rows`` of ``data`` with the ``label`` oracle's labels, float32."""
    seg = data.segments
    f, s = data.first[rows], data.second[rows]
    as32 = lambda x: jnp.asarray(np.asarray(x, np.float32))
    return PairBatch(as32(seg.obs[f]), as32(seg.action[f]), as32(seg.mask[f]), as32(seg.obs[s]),
                     as32(seg.action[s]), as32(seg.mask[s]), as32(data.labels[label][rows]))


def accuracies(scores: np.ndarray, data: TaskData, rows: np.ndarray) -> dict[str, float]:
    """Held-out accuracy of segment scores ``[N]`` against both oracles (ties excluded)."""
    f, s = data.first[rows], data.second[rows]
    return {f"acc_{'pr' if n == 'partial_return' else n}": evaluation.preference_accuracy(
        scores[f], scores[s], data.labels[n][rows]) for n in LABELS}


class EpicSample(NamedTuple):
    """EPIC's transitions ``[E, …]`` and coverage draws ``[J, …]`` (held-out steps)."""

    obs: Array
    action: Array
    next_obs: Array
    coverage_obs: Array
    coverage_action: Array


def epic_sample(config: LearnerAssumptionConfig, data: TaskData, split: SeedSplit,
                seed: int) -> EpicSample:
    """EPIC's transitions and coverage draws from the held-out segments' steps of ``seed``."""
    seg = data.segments
    segs = np.unique(np.concatenate([data.first[split.test], data.second[split.test]]))
    on = np.asarray(seg.mask)[segs] > 0
    obs, act = np.asarray(seg.obs)[segs][on], np.asarray(seg.action)[segs][on]
    nxt = np.asarray(seg.next_obs)[segs][on]
    key_pick, key_s, key_a = jax.random.split(named_key(config, data.name, seed, "epic"), 3)
    pick = np.asarray(jax.random.permutation(key_pick, obs.shape[0]))[:config.epic_transitions]
    num_cov = min(256, obs.shape[0])
    cov_s = np.asarray(jax.random.choice(key_s, obs.shape[0], (num_cov,), replace=False))
    cov_a = np.asarray(jax.random.choice(key_a, obs.shape[0], (num_cov,), replace=False))
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return EpicSample(f32(obs[pick]), f32(act[pick]), f32(nxt[pick]), f32(obs[cov_s]),
                      f32(act[cov_a]))


@functools.partial(jax.jit, static_argnames=("value_fn", "discount"))
def canonical(value_fn: Callable[..., Array], params: Any, sample: EpicSample,
               discount: float) -> Array:
    """C(R) on the EPIC sample (Gleave et al. 2021), R = value_fn(params, ·)."""
    reward = lambda s, a, s2: value_fn(params, s, a, s2)
    return evaluation.canonicalize(reward, sample.obs, sample.action, sample.next_obs,
                                   sample.coverage_obs, sample.coverage_action, discount=discount)


# --------------------------------------------------------------------------- #
# Reward functions as (params, obs, action, next_obs) -> r, hashable for jit caches
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class RMValue:
    """The standardised r̂ or Â of a reward model: ``(state, obs, action, next_obs) -> [...]``."""

    model: rm.RewardModel

    def __call__(self, params: rm.RewardModelState, obs: Array, action: Array,
                 next_obs: Array) -> Array:
        del next_obs
        return rm.reward_fn(self.model, params)(obs, action)


@dataclasses.dataclass(frozen=True)
class TrueReward:
    """The task's reward for EPIC; the root x-velocity of s' (obs index 8) stands in for
    the frame-averaged velocity the observation does not hold (as in ``two_by_two``)."""

    task: Any

    def __call__(self, params: Any, obs: Array, action: Array, next_obs: Array) -> Array:
        del params, obs
        return self.task.reward(next_obs[..., 8], action)


@functools.cache
def ppo_reward(value_fn: Callable[..., Array]) -> ppo.RewardFn:
    """PPO's ``reward_fn``; the reward's parameters travel in ``state.reward_params``."""

    def reward(obs: Array, action: Array, next_obs: Array, extras: Mapping[str, Any]) -> Array:
        return value_fn(extras["reward_params"], obs, action, next_obs)

    return reward


def strip(state: rm.RewardModelState) -> rm.RewardModelState:
    """The state without its optimiser state (what a reward function needs)."""
    return state.replace(opt_state=None)


__all__ = [
    "EpicSample",
    "FrozenPhi",
    "LearnedPhi",
    "RMValue",
    "SFValue",
    "SeedSplit",
    "TaskData",
    "TrueReward",
    "accuracies",
    "canonical",
    "epic_sample",
    "load_task_data",
    "pair_batch",
    "ppo_reward",
    "query_split",
    "seed_split",
    "strip",
]
