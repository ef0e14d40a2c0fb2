"""Typed pytrees that carry data between the stages of the pipeline.

Data is time-major: a rollout is ``[T, B, …]``; a segment pool is ``[N, k, …]``.
Everything here is a frozen ``flax.struct.dataclass`` so it can cross ``jit``,
``vmap`` and ``lax.scan`` boundaries and be saved leaf by leaf.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
from flax import struct

Array = jax.Array
PRNGKey = jax.Array
Params = Any
Metrics = dict[str, Array]


@struct.dataclass
class Trajectory:
    """A batch of rollouts, time-major ``[T, B, …]``.

    ``obs[t]`` is s_t, ``action[t]`` is a_t (after clipping to the action box),
    ``reward[t]`` is r(s_t, a_t, s_{t+1}) of the task that produced the
    rollout and ``next_obs[t]`` is s_{t+1} — the true next state, also on the
    step that ends an episode (the environment is reset *after* it, so
    ``obs[t + 1]`` is then the first state of a new episode).
    ``x_velocity[t]`` is the forward velocity that produced ``reward[t]``;
    ``qpos``/``qvel`` are the full physics state of s_t (``qpos`` includes the
    root x position that the observation drops).
    """

    obs: Array  # [T, B, obs_dim]
    action: Array  # [T, B, act_dim]
    reward: Array  # [T, B]
    next_obs: Array  # [T, B, obs_dim]
    terminated: Array  # [T, B] bool: MDP terminal (never for half-cheetah)
    truncated: Array  # [T, B] bool: time limit reached at this step
    x_velocity: Array  # [T, B]
    qpos: Array  # [T, B, nq]
    qvel: Array  # [T, B, nv]

    @property
    def done(self) -> Array:
        """[T, B] bool: an episode ended at this step (terminated or truncated)."""
        return self.terminated | self.truncated

    @property
    def num_steps(self) -> int:
        return self.obs.shape[0]

    @property
    def batch_size(self) -> int:
        return self.obs.shape[1]


@struct.dataclass
class Segments:
    """A pool of fixed-length segments ``[N, k, …]`` cut from trajectories.

    Segment i is ``(s_0, a_0, …, s_{k-1}, a_{k-1}, s_k)`` with
    ``s_k = next_obs[i, -1]`` (kept for the regret model's endpoint value).
    ``mask[i, t]`` is 1 for steps inside the episode (a segment never spans a
    reset, so for half-cheetah every mask is 1; it exists for tasks that
    terminate early). ``source`` records where each segment came from:
    ``[N, 2]`` ints (batch column b, start time t) into the trajectory.
    """

    obs: Array  # [N, k, obs_dim]
    action: Array  # [N, k, act_dim]
    reward: Array  # [N, k]
    next_obs: Array  # [N, k, obs_dim]
    mask: Array  # [N, k] float
    x_velocity: Array  # [N, k]
    qpos: Array  # [N, k, nq]
    qvel: Array  # [N, k, nv]
    source: Array  # [N, 2] int

    @property
    def final_obs(self) -> Array:
        """[N, obs_dim]: s_k, the state after the segment's last action."""
        return self.next_obs[:, -1]

    @property
    def num_segments(self) -> int:
        return self.obs.shape[0]

    @property
    def length(self) -> int:
        return self.obs.shape[1]


@struct.dataclass
class PreferenceDataset:
    """Labelled queries: query q is ``(segments[first[q]], segments[second[q]])``.

    ``labels`` maps an oracle's name (e.g. ``"partial_return"``, ``"regret"``)
    to ``[Q]`` floats in {0, ½, 1} with ``label = P(first ≻ second)``; several
    oracles can label the *same* queries. ``label_mask`` has the same keys:
    ``[Q]`` bool, False where that oracle skipped the query (B-Pref's skip
    rule); learners weight the loss by it. Files: ``prefrl.data.dataset``.
    """

    segments: Segments  # pool [N, k, …]
    first: Array  # [Q] int index into segments
    second: Array  # [Q] int index into segments
    labels: dict[str, Array]  # name -> [Q] float
    label_mask: dict[str, Array]  # name -> [Q] bool

    @property
    def num_queries(self) -> int:
        return self.first.shape[0]

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(sorted(self.labels))


class PairBatch(NamedTuple):
    """Labelled queries as two stacks of segments, batch axis ``B`` first.

    The batch every preference learner consumes (reward models, CPL, DPO).
    ``label`` = P(σ¹ ≻ σ²) ∈ [0, 1] (1 first preferred, ½ tie). ``weight`` is
    an optional per-query weight: ``[B]`` (e.g. 0 for a query the oracle
    skipped) or, for reward-model ensembles, ``[M, B]`` per member (bootstrap
    counts). ``offset`` is an optional known term of each query's logit,
    ``(score(σ¹) − score(σ²) + offset) / β``: the part of the preference
    model that is not learned (e.g. the regret model's ``γ^k V(s_k) − V(s_0)``
    terms from a fixed critic); ``None`` means 0. The reward models
    (:mod:`prefrl.learners.reward_model`) read it; CPL/DPO and ``regret_sf``
    have scores of their own and ignore it. ``final_obs_1``/``final_obs_2``
    ``[B, obs]``: each segment's state after its last action, s_k (optional;
    a reward model with a learned potential needs them).
    """

    obs_1: Array  # [B, k, obs_dim]
    action_1: Array  # [B, k, act_dim]
    mask_1: Array  # [B, k]
    obs_2: Array  # [B, k, obs_dim]
    action_2: Array  # [B, k, act_dim]
    mask_2: Array  # [B, k]
    label: Array  # [B]
    weight: Array | None = None  # [B] or [M, B]
    offset: Array | None = None  # [B]
    final_obs_1: Array | None = None  # [B, obs]
    final_obs_2: Array | None = None  # [B, obs]

    @property
    def size(self) -> int:
        return self.label.shape[0]
