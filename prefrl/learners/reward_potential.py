"""r̂ with a learned potential Φ: the regret model's segment score with its value learned too.

A regret label scores a segment by its discounted return plus the labeller's value
change, ``Σ_t γ^t r_t + γ^k V(s_k) − V(s_0)`` (Knox et al. 2022; docs/design.md §4b).
Fitting one per-step function to it (``assumption="advantage"``, Knox et al. 2023)
makes that function carry the value's change at every step, r + γV(s') − V(s): a
small difference of two large numbers, learned only through its telescoped sums.
With ``RewardModelConfig(potential=True)`` every member learns r̂(s, a) and a
state function Φ(s) side by side and scores

    score(σ) = Σ_t γ^t m_t r̂(s_t, a_t) + m_{k−1} γ^k Φ(s_k) − Φ(s_0)

(the end term is dropped for a segment cut by an episode end). Labels identify
r̂ only up to potential shaping — r̂ = r with Φ = V and r̂ = A with Φ = 0 fit
alike — and every shaped reward has the optimal policies of r (Ng et al. 1999),
so the policy learns from r̂ alone; Φ only takes the value's work off r̂.
Φ reads the member's input with the action entries zero, so both networks take
one input size and the reward model's shape checks hold unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from prefrl.networks import MLP

Array = jax.Array


class PotentialReward(nn.Module):
    """One member: ``__call__(x [..., in]) -> r̂ [..., 1]``; ``potential(x) -> Φ [..., 1]``."""

    hidden: Sequence[int]
    activation: Callable[[Array], Array]

    def setup(self) -> None:
        self.reward = MLP(tuple(self.hidden), 1, self.activation)
        self.phi = MLP(tuple(self.hidden), 1, self.activation)

    def __call__(self, x: Array) -> Array:
        if self.is_initializing():  # create Φ's parameters with r̂'s
            self.phi(x)
        return self.reward(x)

    def potential(self, x: Array) -> Array:
        return self.phi(x)


def state_inputs(obs: Array, act_dim: int, use_action: bool) -> Array:
    """Φ's input for states ``obs [..., obs]``: the member input with zero action entries."""
    if not use_action:
        return obs
    return jnp.concatenate([obs, jnp.zeros((*obs.shape[:-1], act_dim), obs.dtype)], axis=-1)


def segment_gaps(config: Any, network: PotentialReward, params: Any, obs: Array,
                 final_obs: Array | None, mask: Array, act_dim: int) -> Array:
    """``[M, N]``: each member's ``m_{k−1} γ^k Φ(s_k) − Φ(s_0)`` for segments ``obs [N, k, obs]``.

    ``config``: the reward model's (``use_action``, ``discount``); ``final_obs [N, obs]``:
    s_k of each segment; ``mask [N, k]``.
    """
    if final_obs is None:
        raise ValueError("a reward model with a learned potential (potential=True) needs each "
                         "segment's final state s_k: the batch's final_obs_1/final_obs_2 are None")
    phi = lambda p, x: network.apply(p, x, method=PotentialReward.potential)[..., 0]
    both = jnp.stack([state_inputs(obs[:, 0], act_dim, config.use_action),
                      state_inputs(final_obs.astype(obs.dtype), act_dim, config.use_action)])
    values = jax.vmap(phi, in_axes=(0, None))(params, both)  # [M, 2, N]
    return (config.discount ** obs.shape[1]) * mask[None, :, -1] * values[:, 1] - values[:, 0]


__all__ = ["PotentialReward", "segment_gaps", "state_inputs"]
