"""Preference models over segment scores (DESIGN.md §2).

Both models are Bradley–Terry / logistic over a segment *score* with
Boltzmann temperature β:

    P(σ¹ ≻ σ²) = sigmoid((score(σ¹) − score(σ²)) / β)

* partial return (Christiano et al. 2017): ``score = Σ_t γ^t r_t``;
* regret (Knox et al. 2022): ``score = Σ_t γ^t A*(s_t, a_t)``, equivalently
  ``Σ_t γ^t r_t + γ^k V*(s_k) − V*(s_0)`` for deterministic transitions.

Label convention everywhere in prefrl: ``label = P(σ¹ ≻ σ²)`` — 1 means the
*first* segment is preferred, ½ a tie, 0 the second.

Every function takes **one** example (time axis ``_t`` only); callers
``jax.vmap`` over queries.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

Array = jax.Array


def discount_weights(length: int, discount: float | Array = 1.0, dtype=jnp.float32) -> Array:
    """``[k]``: γ^t for t = 0 … k−1."""
    return jnp.asarray(discount, dtype) ** jnp.arange(length, dtype=dtype)


def _discounted_sum(values_t: Array, discount: float | Array, mask_t: Array | None) -> Array:
    chex.assert_rank(values_t, 1)
    weights_t = discount_weights(values_t.shape[0], discount, values_t.dtype)
    if mask_t is not None:
        chex.assert_equal_shape([values_t, mask_t])
        weights_t = weights_t * mask_t.astype(values_t.dtype)
    return jnp.sum(weights_t * values_t)


def partial_return(
    rewards_t: Array, *, discount: float | Array = 1.0, mask_t: Array | None = None
) -> Array:
    """Partial-return score ``Σ_t γ^t r_t`` of one segment (Christiano et al. 2017).

    Args:
      rewards_t: ``[k]`` rewards.
      discount: γ_p (1 in the standard model).
      mask_t: optional ``[k]``; steps with mask 0 (after an episode ended) count 0.
    """
    return _discounted_sum(rewards_t, discount, mask_t)


def regret_score(
    advantages_t: Array, *, discount: float | Array = 1.0, mask_t: Array | None = None
) -> Array:
    """Regret-model score ``Σ_t γ^t A*(s_t, a_t)`` = −regret(σ) (Knox et al. 2022).

    Args:
      advantages_t: ``[k]`` optimal advantages (or a learned Â).
      discount: γ of the advantages.
      mask_t: optional ``[k]`` step mask.
    """
    return _discounted_sum(advantages_t, discount, mask_t)


def logit(score_1: Array, score_2: Array, *, temperature: float | Array = 1.0) -> Array:
    """Preference logit ``(score_1 − score_2) / β``; ``sigmoid(logit) = P(σ¹ ≻ σ²)``."""
    return (score_1 - score_2) / temperature


def bt_loss(logit: Array, label: Array) -> Array:
    """Bradley–Terry cross-entropy with soft labels.

    ``−[μ log σ(x) + (1 − μ) log σ(−x)]`` with ``μ = label = P(σ¹ ≻ σ²)``;
    ties (μ = ½) train towards P = ½ (Christiano et al. 2017). Works
    elementwise, so it also takes batched arrays of equal shape.
    """
    return -(label * jax.nn.log_sigmoid(logit) + (1.0 - label) * jax.nn.log_sigmoid(-logit))
