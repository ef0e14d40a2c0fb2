"""PPO's losses, each of one sample (callers ``vmap``), and GAE (Schulman et al. 2016, 2017).

Shape-checked with ``chex``; known answers in ``tests/test_ppo.py``.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

Array = jax.Array


def gae_advantages(
    reward_t: Array,
    value_t: Array,
    next_value_t: Array,
    terminated_t: Array,
    truncated_t: Array,
    discount: float | Array,
    lambda_: float | Array,
) -> Array:
    """GAE(λ) advantages of one environment's rollout ``[T] -> [T]`` (Schulman et al. 2016).

    ``δ_t = r_t + γ (1 − term_t) V(s'_t) − V(s_t)`` and
    ``A_t = δ_t + γ λ (1 − done_t) A_{t+1}`` with ``done = term ∨ trunc``.
    ``next_value_t`` is ``V`` of the *true* next state ``s'_t``, so at a
    time-limit truncation the return is bootstrapped from ``V(s'_t)`` (the
    episode did not end in the MDP), at a termination from 0; either way the
    recursion does not run past the episode's end. The last step of the
    rollout bootstraps from ``V(s'_{T-1})``.
    """
    chex.assert_rank([reward_t, value_t, next_value_t, terminated_t, truncated_t], 1)
    chex.assert_equal_shape([reward_t, value_t, next_value_t, terminated_t, truncated_t])
    not_term = 1.0 - terminated_t.astype(reward_t.dtype)
    not_done = 1.0 - (terminated_t | truncated_t).astype(reward_t.dtype)
    delta_t = reward_t + discount * not_term * next_value_t - value_t

    def step(carry: Array, xs: tuple[Array, Array]) -> tuple[Array, Array]:
        delta, cont = xs
        adv = delta + discount * lambda_ * cont * carry
        return adv, adv

    _, adv_t = jax.lax.scan(
        step, jnp.zeros((), reward_t.dtype), (delta_t, not_done), reverse=True
    )
    return adv_t


def clipped_surrogate_loss(
    log_prob: Array, old_log_prob: Array, advantage: Array, epsilon: float | Array
) -> Array:
    """PPO-clip loss of one sample: ``−min(ρ A, clip(ρ, 1−ε, 1+ε) A)``, ``ρ = π/π_old``."""
    chex.assert_rank([log_prob, old_log_prob, advantage], 0)
    ratio = jnp.exp(log_prob - old_log_prob)
    clipped = jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon)
    return -jnp.minimum(ratio * advantage, clipped * advantage)


def kl_penalty_loss(
    log_prob: Array, old_log_prob: Array, advantage: Array, kl: Array, beta: Array
) -> Array:
    """Adaptive-KL-penalty loss of one sample: ``−(ρ A − β KL(π_old ‖ π))``."""
    chex.assert_rank([log_prob, old_log_prob, advantage, kl], 0)
    ratio = jnp.exp(log_prob - old_log_prob)
    return -(ratio * advantage - beta * kl)


def adapt_kl_coef(beta: Array, kl: Array, target: float | Array) -> Array:
    """Schulman et al. 2017 §4: β ← 2β if KL > 1.5 δ; β ← β/2 if KL < δ/1.5; else β."""
    beta = jnp.where(kl > 1.5 * target, beta * 2.0, beta)
    return jnp.where(kl < target / 1.5, beta * 0.5, beta)


def value_loss(
    value: Array, target: Array, old_value: Array, clip_epsilon: float | None
) -> Array:
    """Value loss of one sample: ``½ (V − target)²``.

    Clipped (PPO2-style): ``½ max((V − t)², (V_old + clip(V − V_old, ±ε) − t)²)``.
    """
    chex.assert_rank([value, target, old_value], 0)
    loss = (value - target) ** 2
    if clip_epsilon is not None:
        clipped = old_value + jnp.clip(value - old_value, -clip_epsilon, clip_epsilon)
        loss = jnp.maximum(loss, (clipped - target) ** 2)
    return 0.5 * loss


def gaussian_kl(mean_p: Array, log_std_p: Array, mean_q: Array, log_std_q: Array) -> Array:
    """``KL(N_p ‖ N_q)`` of diagonal Gaussians, summed over the last axis.

    Equal to the KL between the tanh-squashed distributions (tanh is a bijection).
    """
    var_p = jnp.exp(2.0 * log_std_p)
    var_q = jnp.exp(2.0 * log_std_q)
    kl = log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2.0 * var_q) - 0.5
    return jnp.sum(kl, axis=-1)
