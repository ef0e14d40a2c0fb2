"""Best-of-n: the no-training baseline over a reference policy.

At each state s, draw n actions ``a^(1..n) ~ π_ref(·|s)`` from the
tanh-squashed Gaussian reference policy and act with the one that scores
highest under a learned reward r̂ or advantage Â:

    a(s) = argmax_{j ≤ n} score_fn(s, a^(j)).

(The per-step version of best-of-n sampling used as a baseline to RLHF and
DPO, e.g. Gao et al. 2023, "Scaling laws for reward model over-optimization".)
n = 1 is π_ref itself; as n grows the policy moves towards the score's
maximiser within π_ref's support, roughly ``log n − (n−1)/n`` nats of KL
away from π_ref. No parameters are trained.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from prefrl.networks import tanh_gaussian_sample

Array = jax.Array
Params = Any
ScoreFn = Callable[[Array, Array], Array]


def select(key: Array, mean: Array, log_std: Array, obs: Array, score_fn: ScoreFn, n: int
           ) -> tuple[Array, Array]:
    """Best of ``n`` tanh-Gaussian samples for a batch of states.

    Args:
      key: PRNG key.
      mean, log_std: ``[B, act]`` pre-tanh Gaussian of π_ref at ``obs``.
      obs: ``[B, obs]`` states.
      score_fn: ``score_fn(obs [B, obs], action [B, act]) -> [B]`` (r̂ or Â);
        higher is better.
      n: number of candidates (static).

    Returns:
      ``(action [B, act], score [B])``: the chosen action and its score.
    """
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    keys = jax.random.split(key, n)
    candidates, _ = jax.vmap(lambda k: tanh_gaussian_sample(k, mean, log_std))(keys)  # [n, B, act]
    scores = jax.vmap(lambda a: score_fn(obs, a))(candidates)  # [n, B]
    best = jnp.argmax(scores, axis=0)  # [B]
    batch = jnp.arange(obs.shape[0])
    return candidates[best, batch], scores[best, batch]


def make_policy_fn(network: nn.Module, ref_params: Params, score_fn: ScoreFn, n: int
                   ) -> Callable[[Array, Array], Array]:
    """A pure, jittable ``policy_fn(obs [B, obs], key) -> action [B, act]``.

    Args:
      network: the ``GaussianPolicy`` of π_ref.
      ref_params: π_ref's parameters (closed over: they are constants of the policy).
      score_fn: ``(obs [B, obs], action [B, act]) -> [B]``.
      n: candidates per state.
    """
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")

    def policy_fn(obs: Array, key: Array) -> Array:
        obs = jnp.asarray(obs, jnp.float32)
        mean, log_std = network.apply(ref_params, obs)
        action, _ = select(key, mean, log_std, obs, score_fn, n)
        return action

    return policy_fn
