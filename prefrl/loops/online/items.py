"""The online core's buffer items: pool segments and labelled queries (pytrees).

:class:`PoolItem` rows fill the segment pool, :class:`LabelItem` rows the label
buffer (:mod:`prefrl.data.buffers` ring buffers); :func:`pair_batch` turns label
items into the reward learners' :class:`~prefrl.types.PairBatch`. Re-exported by
:mod:`prefrl.loops.online.core`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from prefrl import oracles
from prefrl.data import pairs
from prefrl.types import PairBatch, Segments

Array = jax.Array


@struct.dataclass
class PoolItem:
    """One pool segment ``[k, …]`` (``[P, k, …]`` in the pool; ``[N, k, …]`` for a rollout).

    ``reward`` is the true reward, read by scripted oracles only. ``qpos``/``qvel``
    ``[2, nq]``/``[2, nv]``: the physics state at the segment's first and last
    step. ``tag``: the policy update whose rollout produced it.
    """

    obs: Array  # [k, obs]
    action: Array  # [k, act]
    reward: Array  # [k]
    next_obs: Array  # [k, obs]
    mask: Array  # [k]
    qpos: Array  # [2, nq]
    qvel: Array  # [2, nv]
    tag: Array  # int32 []

    @property
    def final_obs(self) -> Array:
        """s_k, the state after the last action (``[..., obs]``)."""
        return self.next_obs[..., -1, :]


def pool_items(segs: Segments, tag: Array | int) -> PoolItem:
    """``Segments [N, k, …] -> PoolItem [N, …]`` (first and last step's physics state)."""
    ends = lambda x: jnp.stack([x[:, 0], x[:, -1]], axis=1)
    n = segs.obs.shape[0]
    return PoolItem(obs=segs.obs, action=segs.action, reward=segs.reward,
                    next_obs=segs.next_obs, mask=segs.mask, qpos=ends(segs.qpos),
                    qvel=ends(segs.qvel), tag=jnp.full((n,), tag, jnp.int32))


@struct.dataclass
class LabelItem:
    """One labelled query: both segments (the pool may evict them), s_k of each, the label.

    ``keep``: 0 where the oracle skipped the query; ``split``: 1 = held out
    for validation; ``round``: the round that asked it; ``index_1``/``index_2``:
    the segments' rows in the pool (or dataset) they were gathered from.
    """

    obs_1: Array  # [k, obs]
    action_1: Array  # [k, act]
    mask_1: Array  # [k]
    obs_2: Array
    action_2: Array
    mask_2: Array
    final_obs_1: Array  # [obs]
    final_obs_2: Array
    label: Array  # [] P(σ¹ ≻ σ²)
    keep: Array  # []
    split: Array  # []
    round: Array  # int32 []
    index_1: Array  # int32 []
    index_2: Array  # int32 []


def label_items(segments: Any, first: Array, second: Array, labels: oracles.Labels,
                round_idx: Array | int) -> LabelItem:
    """Gather queries ``(segments[first], segments[second])`` of any pool with their labels.

    ``segments``: a :class:`PoolItem` pool, :class:`~prefrl.types.Segments` (an
    offline dataset) — anything with ``obs``, ``action``, ``mask``, ``next_obs``.
    ``split`` is set when the items are added (:meth:`Core.add`).
    """
    batch = pairs.gather(segments, first, second, labels.label)
    final = lambda idx: jnp.asarray(segments.next_obs)[idx, -1].astype(jnp.float32)
    q = first.shape[0]
    return LabelItem(obs_1=batch.obs_1, action_1=batch.action_1, mask_1=batch.mask_1,
                     obs_2=batch.obs_2, action_2=batch.action_2, mask_2=batch.mask_2,
                     final_obs_1=final(first), final_obs_2=final(second),
                     label=batch.label, keep=jnp.asarray(labels.keep, jnp.float32),
                     split=jnp.zeros((q,), jnp.float32),
                     round=jnp.full((q,), round_idx, jnp.int32),
                     index_1=jnp.asarray(first, jnp.int32), index_2=jnp.asarray(second, jnp.int32))


def pair_batch(items: LabelItem, weight: Array | None = None, offset: Array | None = None
               ) -> PairBatch:
    """The reward learners' :class:`~prefrl.types.PairBatch` of label items."""
    return PairBatch(items.obs_1, items.action_1, items.mask_1, items.obs_2, items.action_2,
                     items.mask_2, items.label, weight, offset, items.final_obs_1,
                     items.final_obs_2)


__all__ = ["LabelItem", "PoolItem", "label_items", "pair_batch", "pool_items"]
