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

from prefrl.networks import (
    tanh_gaussian_from_noise,
    tanh_gaussian_log_prob,
    tanh_gaussian_mode,
    tanh_gaussian_noise,
)

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
    # The barrier keeps the draw out of the squashing's fusion, so this compiles the
    # same arithmetic as _act_noise and both give the same bits (Actor.act_with_noise).
    noise = jax.lax.optimization_barrier(tanh_gaussian_noise(key, mean.shape, mean.dtype))
    return jnp.tanh(tanh_gaussian_from_noise(mean, log_std, noise))


def _act_noise(apply: PolicyApply, params: Params, obs: Array, noise: Array) -> Array:
    mean, log_std = apply(params, jnp.asarray(obs, jnp.float32))
    return jnp.tanh(tanh_gaussian_from_noise(mean, log_std, noise))


def _blocks(fn: Callable[..., Array], num_seeds: int, params: Params, obs: Array,
            other: Array | None) -> Array:
    # S policies (params stacked on a leading axis) on S equal blocks of obs; ``other``
    # is an [S] key or [S·B, act] noise, split the same way.
    blocks = jnp.asarray(obs, jnp.float32).reshape(num_seeds, -1, obs.shape[-1])
    if other is not None and other.ndim == 2:
        other = other.reshape(num_seeds, -1, other.shape[-1])
    action = jax.vmap(fn)(params, blocks, other)
    return action.reshape(-1, action.shape[-1])


def _act_stacked(apply: PolicyApply, deterministic: bool, params: Params, obs: Array,
                 key: Array) -> Array:
    return _blocks(functools.partial(_act, apply, deterministic), key.shape[0], params, obs, key)


def _act_noise_stacked(apply: PolicyApply, params: Params, obs: Array, noise: Array) -> Array:
    num_seeds = jax.tree.leaves(params)[0].shape[0]
    return _blocks(functools.partial(_act_noise, apply), num_seeds, params, obs, noise)


# ``apply`` and ``deterministic`` are static: JAX's own cache keys the compiled
# code on them, so there is no module-level cache of closures to pin memory.
_act_jit = jax.jit(_act, static_argnums=(0, 1))
_act_stacked_jit = jax.jit(_act_stacked, static_argnums=(0, 1))
_act_noise_jit = jax.jit(_act_noise, static_argnums=0)
_act_noise_stacked_jit = jax.jit(_act_noise_stacked, static_argnums=0)


class Actor:
    """What :func:`policy_fn` returns: ``actor(obs, key) -> action``, a :data:`PolicyFn`.

    Also the batched rollout's fast path, the same actions with the sampling
    taken out of the per-step call: ``act_dim``/``num_seeds`` give the shape of
    the noise, :func:`prefrl.networks.tanh_gaussian_noise` of each step key
    (drawn for a whole block of steps in one call), and
    ``act_with_noise(obs, noise [B, act]) -> action`` acts with it (stochastic
    actors; a deterministic one draws nothing). Measured on the 2-core box (load ≈ 0.5), 2×64
    policy, until the action is on the host: 178 µs a call with the threefry
    draw inside against 77 µs without at B = 64; 225 against 128 µs at B = 256.
    """

    def __init__(self, policy: Policy, deterministic: bool, stacked: bool) -> None:
        self.policy, self.deterministic, self.stacked = policy, bool(deterministic), stacked
        leaves = jax.tree.leaves(policy.params)
        self.num_seeds = int(leaves[0].shape[0]) if stacked and leaves else 1
        try:
            hash(policy.apply)
            self._hashable = True
        except TypeError:  # an unhashable apply gets its own jitted functions
            self._hashable = False
            act = _act_stacked if stacked else _act
            noise = _act_noise_stacked if stacked else _act_noise
            self._act = jax.jit(functools.partial(act, policy.apply, self.deterministic))
            self._noise = jax.jit(functools.partial(noise, policy.apply))

    def __call__(self, obs: Any, key: Array) -> Array:
        if self._hashable:
            act = _act_stacked_jit if self.stacked else _act_jit
            return act(self.policy.apply, self.deterministic, self.policy.params, obs, key)
        return self._act(self.policy.params, obs, key)

    def act_with_noise(self, obs: Any, noise: Any) -> Array:
        """The sampled action for pre-drawn ``noise [B, act]`` (a stochastic actor's)."""
        if self.deterministic:
            raise ValueError("a deterministic actor takes no noise: call actor(obs, key)")
        if self._hashable:
            act = _act_noise_stacked_jit if self.stacked else _act_noise_jit
            return act(self.policy.apply, self.policy.params, obs, noise)
        return self._noise(self.policy.params, obs, noise)


def policy_fn(policy: Policy, *, deterministic: bool = False, stacked: bool = False
              ) -> Actor:
    """``policy_fn(obs, key) -> action`` for rollouts and evaluation (one jitted call a step).

    Cost of one call, the only host↔device traffic being the ``[B, 17]`` float32
    observation in and the ``[B, 6]`` action out (2×64 policy, measured on the
    2-core box at load ≈ 1.5): ~75 µs to dispatch and ~90 µs until the action
    is on the host at B = 64; ~150 / ~180 µs at B = 256, where the computation
    (MLP and threefry sampling) dominates — :class:`Actor` takes the sampling
    out of the per-step call for batched rollouts. The numpy observation is
    passed as it is: ``jnp.asarray(obs)`` first adds ~30 µs. The parameters
    stay an argument: closing over them saved ~30 µs a call at B = 64 and
    nothing at B = 256, but would recompile for every new parameter set (every
    PPO iteration). With JAX's CPU async dispatch (the default) each call also
    hands the work to another thread: on the 2-core box (load ≈ 0.5) 78 µs at B = 64 against
    26 µs with ``jax.config.update("jax_cpu_enable_async_dispatch", False)``
    set before JAX starts (the ``prefrl`` command line's choice, not this
    library's).

    ``stacked=True``: S policies in one call — ``params`` stacked on a leading
    axis, ``key`` an ``[S]`` key array, and ``obs [S·B, obs]`` read as S equal
    blocks, block s acted on by policy s with key s (several seeds in one
    ``BatchedEnv``, whose rollout hands out ``[S]`` keys for an ``[S]`` key).
    """
    return Actor(policy, deterministic, stacked)


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


__all__ = ["Actor", "Policy", "PolicyApply", "PolicyFn", "log_prob", "policy_fn", "random_policy"]
