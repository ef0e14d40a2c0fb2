"""PPO's networks and the pure functions that act with a :class:`prefrl.learners.ppo.PPOState`.

The policy is the project's tanh-squashed Gaussian (``prefrl.networks``) on
observations normalised by the state's running statistics; the critic's
output is de-normalised by its PopArt statistics, so ``V`` is in the units of
the optimised reward. Host code acts through :mod:`prefrl.policies`:
``Policy(make_policy_apply(config, act_dim), policy_bundle(state))``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import jax

from prefrl.networks import (
    GaussianPolicy,
    ValueNetwork,
    tanh_gaussian_log_prob,
    tanh_gaussian_mode,
    tanh_gaussian_sample,
)
from prefrl.normalization import normalize, std

if TYPE_CHECKING:
    from prefrl.learners.ppo import PPOConfig, PPOState

Array = jax.Array
PRNGKey = jax.Array
Params = Any
# apply(params, obs [..., obs]) -> (mean [..., act], log_std [..., act]) of the pre-tanh Gaussian
PolicyApply = Callable[[Params, Array], tuple[Array, Array]]


class PPONetworks(NamedTuple):
    policy: GaussianPolicy
    value: ValueNetwork


def make_networks(config: PPOConfig, action_dim: int) -> PPONetworks:
    return PPONetworks(
        policy=GaussianPolicy(
            action_dim=action_dim,
            hidden=tuple(config.policy_hidden),
            state_dependent_std=False,
            init_log_std=config.init_log_std,
        ),
        value=ValueNetwork(hidden=tuple(config.value_hidden)),
    )


class Acting(NamedTuple):
    """Pure functions of a :class:`PPOState` for acting and evaluation (all ``jit``-able).

    ``act(state, obs [..., obs], key) -> action [..., act]`` samples π;
    ``mode(state, obs) -> action`` is ``tanh(mean)``;
    ``log_prob(state, obs, action) -> [...]``;
    ``value(state, obs) -> [...]`` is V in the units of the optimised reward.
    """

    act: Callable[[PPOState, Array, PRNGKey], Array]
    mode: Callable[[PPOState, Array], Array]
    log_prob: Callable[[PPOState, Array, Array], Array]
    value: Callable[[PPOState, Array], Array]


def make_acting(
    config: PPOConfig, action_dim: int, networks: PPONetworks | None = None
) -> Acting:
    nets = make_networks(config, action_dim) if networks is None else networks

    def norm(state: PPOState, obs: Array) -> Array:
        if not config.normalize_obs:
            return obs
        return normalize(state.obs_stats, obs, config.obs_clip)

    def act(state: PPOState, obs: Array, key: PRNGKey) -> Array:
        mean, log_std = nets.policy.apply(state.policy_params, norm(state, obs))
        return tanh_gaussian_sample(key, mean, log_std)[0]

    def mode(state: PPOState, obs: Array) -> Array:
        mean, _ = nets.policy.apply(state.policy_params, norm(state, obs))
        return tanh_gaussian_mode(mean)

    def log_prob(state: PPOState, obs: Array, action: Array) -> Array:
        mean, log_std = nets.policy.apply(state.policy_params, norm(state, obs))
        return tanh_gaussian_log_prob(mean, log_std, action)

    def value(state: PPOState, obs: Array) -> Array:
        v = nets.value.apply(state.value_params, norm(state, obs))
        if not config.normalize_values:
            return v
        return state.return_stats.mean + std(state.return_stats) * v

    return Acting(act=act, mode=mode, log_prob=log_prob, value=value)


def policy_bundle(state: PPOState) -> dict[str, Any]:
    """The part of the state that acting needs: ``{"policy": params, "obs_stats": stats}``."""
    return {"policy": state.policy_params, "obs_stats": state.obs_stats}


@dataclasses.dataclass(frozen=True)
class _PolicyApply:
    # A value (hashable by config), not a closure: jitted acting keyed on it
    # compiles once per configuration, however many times it is rebuilt.
    config: PPOConfig
    action_dim: int

    def __call__(self, bundle: Mapping[str, Any], obs: Array) -> tuple[Array, Array]:
        nets = make_networks(self.config, self.action_dim)
        if self.config.normalize_obs:
            obs = normalize(bundle["obs_stats"], obs, self.config.obs_clip)
        return nets.policy.apply(bundle["policy"], obs)


def make_policy_apply(config: PPOConfig, action_dim: int) -> PolicyApply:
    """``apply(bundle, obs [..., obs]) -> (mean, log_std)`` on *raw* observations.

    ``bundle`` is :func:`policy_bundle` of a state; the observation
    normalisation is inside, so ``Policy(apply, bundle)`` is a self-contained
    policy (e.g. π_ref for the KL penalty, or ``prefrl.policies.policy_fn``).
    """
    return _PolicyApply(config, int(action_dim))
