"""One policy type and one acting function for every policy the project makes.

Every policy is the tanh-squashed Gaussian of :mod:`prefrl.networks`, given as
``Policy(apply, params)`` with ``apply(params, obs [..., obs]) -> (mean,
log_std)`` of the pre-tanh Gaussian on *raw* observations (any observation
normaliser is inside ``apply``/``params``). PPO's, BC's, CPL's and DPO's
policies, π_ref and the experts all take this form, so acting, evaluation,
log-probabilities and KLs are written once.

The jitted acting function takes the parameters as an *argument*: a new
policy with the same ``apply`` (each PPO iteration, each seed) reuses the
compiled code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from prefrl.networks import tanh_gaussian_log_prob, tanh_gaussian_mode, tanh_gaussian_sample

Array = jax.Array
Params = Any
PolicyApply = Callable[[Params, Array], tuple[Array, Array]]
# policy_fn(obs [B, obs], key) -> action [B, act]: what rollouts call each step.
PolicyFn = Callable[[Any, Array], Array]


class Policy(NamedTuple):
    """A tanh-Gaussian policy: ``apply(params, obs) -> (mean, log_std)`` on raw observations."""

    apply: PolicyApply
    params: Params


def _act(apply: PolicyApply, deterministic: bool, params: Params, obs: Array, key: Array
         ) -> Array:
    mean, log_std = apply(params, jnp.asarray(obs, jnp.float32))
    if deterministic:
        return tanh_gaussian_mode(mean)
    return tanh_gaussian_sample(key, mean, log_std)[0]


def _act_stacked(apply: PolicyApply, deterministic: bool, params: Params, obs: Array,
                 key: Array) -> Array:
    # S policies (params and key stacked on a leading axis) on S equal blocks of obs.
    num_seeds = key.shape[0]
    blocks = jnp.asarray(obs, jnp.float32).reshape(num_seeds, -1, obs.shape[-1])
    action = jax.vmap(functools.partial(_act, apply, deterministic))(params, blocks, key)
    return action.reshape(-1, action.shape[-1])


# ``apply`` and ``deterministic`` are static: JAX's own cache keys the compiled
# code on them, so there is no module-level cache of closures to pin memory.
_act_jit = jax.jit(_act, static_argnums=(0, 1))
_act_stacked_jit = jax.jit(_act_stacked, static_argnums=(0, 1))


def policy_fn(policy: Policy, *, deterministic: bool = False, stacked: bool = False
              ) -> PolicyFn:
    """``policy_fn(obs, key) -> action`` for rollouts and evaluation (one jitted call a step).

    Cost of one call, the only host↔device traffic being the ``[B, 17]`` float32
    observation in and the ``[B, 6]`` action out (2×64 policy, measured on the
    2-core box at load ≈ 1.5): ~75 µs to dispatch and ~90 µs until the action
    is on the host at B = 64; ~150 / ~180 µs at B = 256, where the computation
    (MLP and threefry sampling) dominates. The numpy observation is passed as
    it is: ``jnp.asarray(obs)`` first adds ~30 µs. The parameters stay an
    argument: closing over them saved ~30 µs a call at B = 64 and nothing at
    B = 256, but would recompile for every new parameter set (every PPO
    iteration). With JAX's CPU async dispatch (the default) each call also
    hands the work to another thread, which costs much more on a loaded
    machine (measured at load ≈ 7: ~300 µs at B = 64 against ~65 µs with
    ``jax.config.update("jax_cpu_enable_async_dispatch", False)`` set before
    JAX starts, an application-level choice this library does not make).

    ``stacked=True``: S policies in one call — ``params`` stacked on a leading
    axis, ``key`` an ``[S]`` key array, and ``obs [S·B, obs]`` read as S equal
    blocks, block s acted on by policy s with key s (several seeds in one
    ``BatchedEnv``, whose rollout hands out ``[S]`` keys for an ``[S]`` key).
    """
    act, act_jit = (_act_stacked, _act_stacked_jit) if stacked else (_act, _act_jit)
    try:
        hash(policy.apply)
    except TypeError:
        jitted = jax.jit(functools.partial(act, policy.apply, bool(deterministic)))
        return lambda obs, key: jitted(policy.params, obs, key)
    return lambda obs, key: act_jit(policy.apply, bool(deterministic), policy.params, obs, key)


def log_prob(policy: Policy, obs: Array, action: Array) -> Array:
    """``log π(a|s)`` ``[...]`` of the squashed Gaussian (a density on the action box)."""
    mean, log_std = policy.apply(policy.params, obs)
    return tanh_gaussian_log_prob(mean, log_std, action)


def random_policy(act_dim: int) -> PolicyFn:
    """Uniform random actions on ``[-1, 1]^act_dim`` (a jitted ``policy_fn``)."""

    @jax.jit
    def policy(obs: Array, key: Array) -> Array:
        return jax.random.uniform(key, (obs.shape[0], act_dim), minval=-1.0, maxval=1.0)

    return policy


__all__ = ["Policy", "PolicyApply", "PolicyFn", "log_prob", "policy_fn", "random_policy"]
