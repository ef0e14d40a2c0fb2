"""One reward-model member's network, by what the segment score adds to Σ γ^t r̂.

* plain: ``MLP → r̂`` (the score is the discounted sum of r̂ alone);
* ``potential=True``: r̂ and a learned state potential Φ (:mod:`reward_potential`),
  the score adds ``γ^k Φ(s_k) − Φ(s_0)``;
* ``library_size > 0``: r̂ = w·φ + b with successor-feature heads of a policy
  library (:mod:`reward_sf`), the score adds ``γ^k V̂*(s_k) − V̂*(s_0)`` by GPI.

:func:`default_network` builds the member of a config; :func:`value_terms` is the
added part of the score (``None`` for the plain member). Used by
:mod:`prefrl.learners.reward_model`, which re-exports ``default_network``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from prefrl.learners import reward_potential, reward_sf
from prefrl.networks import MLP

Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu, "leaky_relu": nn.leaky_relu, "tanh": nn.tanh}


def default_network(config: Any) -> nn.Module:
    """``[..., in] -> [..., 1]``: one member of a ``RewardModelConfig`` (see the module doc)."""
    hidden = tuple(int(h) for h in config.hidden)
    activation = ACTIVATIONS[config.activation]
    if config.potential:
        return reward_potential.PotentialReward(hidden, activation)
    if config.library_size:
        # (checked here, not in the config: the online registry sets γ after the CLI builds it)
        if not config.discount < 1.0:
            raise ValueError(f"library_size > 0 (successor features) needs discount < 1, got "
                             f"{config.discount}: ψ sums φ over an infinite horizon")
        return reward_sf.SFReward(hidden, activation, int(config.library_size),
                                  float(config.discount))
    return MLP(hidden, 1, activation)


def value_terms(config: Any, network: nn.Module, params: Any, obs: Array,
                final_obs: Array | None, mask: Array, act_dim: int) -> Array | None:
    """``[M, N]`` value terms of the score (a learned Φ, or GPI over ψ), or None."""
    if config.potential:
        return reward_potential.segment_gaps(config, network, params, obs, final_obs, mask,
                                             act_dim)
    if config.library_size:
        return reward_sf.segment_gaps(config, network, params, obs, final_obs, mask, act_dim)
    return None


__all__ = ["ACTIVATIONS", "default_network", "value_terms"]
