"""The batches of the regret-model learner (:mod:`prefrl.learners.regret_sf`).

Labelled pairs with the ψ-network inputs of each segment's endpoints
(:class:`SFPairBatch`), a segment pool with them (:class:`SFSegments`), and the
one gather from a pool.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class SFPairBatch(NamedTuple):
    """Labelled queries for the regret-SF learner, batch axis ``B`` first.

    Per step, the φ-inputs of each segment (as ``prefrl.types.PairBatch``):
    ``obs_i [B, k, obs]``, ``action_i [B, k, act]``, ``mask_i [B, k]`` (1 inside
    the episode; a 0 means it terminated inside the segment).

    Per segment, the ψ-inputs at s_0 and s_k stacked on axis 1, in one of two forms:

    * ``psi_in_i [B, 2, obs]``: the states s_0 and s_k, for a ψ network;
    * ``psi_in_i [B, 2, Π, d]``: precomputed ψ^π(s_0), ψ^π(s_k) of every π ∈ Π.

    ``label [B]`` = P(σ¹ ≻ σ²) (½ a tie); ``weight [B]`` optional per-query
    weight (0 drops a query); ``terminal_i [B]`` optional bool: s_k is an MDP
    terminal state with the mask all ones (drops the bootstrap γ^k V̂*(s_k)).
    """

    obs_1: Array  # [B, k, obs]
    action_1: Array  # [B, k, act]
    mask_1: Array  # [B, k]
    obs_2: Array  # [B, k, obs]
    action_2: Array  # [B, k, act]
    mask_2: Array  # [B, k]
    label: Array  # [B]
    psi_in_1: Array  # [B, 2, obs] or [B, 2, Π, d]
    psi_in_2: Array  # [B, 2, obs] or [B, 2, Π, d]
    weight: Array | None = None  # [B]
    terminal_1: Array | None = None  # [B] bool
    terminal_2: Array | None = None  # [B] bool

    @property
    def size(self) -> int:
        return self.label.shape[0]


class SFSegments(NamedTuple):
    """A pool of segments ``[N, …]`` with their ψ-inputs (fields as in :class:`SFPairBatch`)."""

    obs: Array  # [N, k, obs]
    action: Array  # [N, k, act]
    mask: Array  # [N, k]
    psi_in: Array  # [N, 2, obs] or [N, 2, Π, d]
    terminal: Array | None = None  # [N] bool


# --------------------------------------------------------------------------- #
# Batches from pools
# --------------------------------------------------------------------------- #


def psi_inputs(segments: Any) -> Array:
    """``[N, 2, obs]``: s_0 and s_k of a ``prefrl.types.Segments`` pool (ψ-network inputs)."""
    return jnp.stack([jnp.asarray(segments.obs)[:, 0], jnp.asarray(segments.next_obs)[:, -1]],
                     axis=1)


def pair_batch(pool: SFSegments, first: Array, second: Array, label: Array,
               weight: Array | None = None) -> SFPairBatch:
    """:class:`SFPairBatch` of queries ``(pool[first[q]], pool[second[q]])``, labels ``[Q]``."""
    take = lambda x, i: None if x is None else jnp.take(x, i, axis=0)
    return SFPairBatch(
        obs_1=take(pool.obs, first), action_1=take(pool.action, first),
        mask_1=take(pool.mask, first),
        obs_2=take(pool.obs, second), action_2=take(pool.action, second),
        mask_2=take(pool.mask, second),
        label=jnp.asarray(label), psi_in_1=take(pool.psi_in, first),
        psi_in_2=take(pool.psi_in, second), weight=None if weight is None else jnp.asarray(weight),
        terminal_1=take(pool.terminal, first), terminal_2=take(pool.terminal, second),
    )


def from_pair_batch(batch: Any, psi_in_1: Array, psi_in_2: Array) -> SFPairBatch:
    """An :class:`SFPairBatch` from a ``prefrl.types.PairBatch`` plus ψ-inputs ``[B, 2, …]``."""
    return SFPairBatch(batch.obs_1, batch.action_1, batch.mask_1, batch.obs_2, batch.action_2,
                       batch.mask_2, batch.label, psi_in_1, psi_in_2, weight=batch.weight)


__all__ = ["SFPairBatch", "SFSegments", "from_pair_batch", "pair_batch", "psi_inputs"]
