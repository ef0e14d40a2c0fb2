"""SAC's networks: a tanh-Gaussian actor and twin Q critics (Haarnoja et al. 2018).

Both are ReLU MLPs (256 × 256 by default, as in "Soft Actor-Critic
Algorithms and Applications", Table 1). The actor is the project's one policy
type (:class:`prefrl.networks.GaussianPolicy`) with a *state-dependent*
log-std clipped to ``[LOG_STD_MIN, LOG_STD_MAX] = [−5, 2]``, so a SAC actor
acts, evaluates and is stored like every other prefrl policy.

The critics ``Q_1, Q_2`` are one flax MLP on ``concat(s, a)`` whose parameters
are stacked on a leading axis ``[2, …]`` and applied with ``vmap``: one
batched matmul per layer for both members (as the reward ensembles do).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prefrl.networks import MLP, GaussianPolicy

Array = jax.Array
PRNGKey = jax.Array
Params = Any

NUM_CRITICS = 2


class SACNetworks(NamedTuple):
    """The actor and one critic member (apply the twins with :func:`q_values`).

    ``actor(obs [..., obs]) -> (mean, log_std) [..., act]``;
    ``critic(concat(obs, act) [..., obs+act]) -> [..., 1]``.
    """

    actor: nn.Module
    critic: nn.Module


def make_networks(action_dim: int, hidden: Sequence[int] = (256, 256)) -> SACNetworks:
    """ReLU actor (state-dependent log-std, initial σ = 1) and one critic member."""
    widths = tuple(int(h) for h in hidden)
    actor = GaussianPolicy(action_dim=int(action_dim), hidden=widths, activation=nn.relu,
                           state_dependent_std=True, init_log_std=0.0)
    critic = MLP(widths, 1, nn.relu)
    return SACNetworks(actor=actor, critic=critic)


def init_critics(critic: nn.Module, key: PRNGKey, obs_dim: int, action_dim: int) -> Params:
    """Parameters of the ``NUM_CRITICS`` members, stacked ``[2, …]`` (independent draws)."""
    dummy = jnp.zeros((1, obs_dim + action_dim), jnp.float32)
    return jax.vmap(lambda k: critic.init(k, dummy))(jax.random.split(key, NUM_CRITICS))


def q_values(critic: nn.Module, params: Params, obs: Array, action: Array) -> Array:
    """``obs [..., obs], action [..., act] -> [2, ...]``: every member's ``Q_i(s, a)``."""
    x = jnp.concatenate([obs, action], axis=-1)
    return jax.vmap(lambda p: critic.apply(p, x)[..., 0])(params)


__all__ = ["NUM_CRITICS", "SACNetworks", "init_critics", "make_networks", "q_values"]
