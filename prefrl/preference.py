"""Preference models over segment scores (docs/design.md §2).

Both models are Bradley–Terry / logistic over a segment *score* with
Boltzmann temperature β:

    P(σ¹ ≻ σ²) = sigmoid((score(σ¹) − score(σ²)) / β)

* partial return (Christiano et al. 2017): ``score = Σ_t γ^t r_t``;
* regret (Knox et al. 2022): ``score = Σ_t γ^t A*(s_t, a_t)``, equivalently
  ``Σ_t γ^t r_t + γ^k V*(s_k) − V*(s_0)`` for deterministic transitions.

Label convention everywhere in prefrl: ``label = P(σ¹ ≻ σ²)`` — 1 means the
*first* segment is preferred, ½ a tie, 0 the second.

Beyond the four core functions: :func:`regret_score_from_values` (the
endpoint form with V, handling termination), :func:`td_advantages`,
:func:`myopic_weights` / :func:`weighted_score` (B-Pref's myopic teacher) and
:func:`preference_probability`.

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


def regret_score_from_values(
    rewards_t: Array,
    value_0: Array,
    value_k: Array,
    *,
    discount: float | Array = 1.0,
    mask_t: Array | None = None,
    terminal_k: Array | bool | None = None,
) -> Array:
    """Regret-model score in endpoint form (Knox et al. 2022, eq. for deterministic MDPs).

    ``score = Σ_{t<k} γ^t r_t + γ^k V(s_k) − V(s_0)``, which telescopes the
    per-step advantages ``A_t = r_t + γ V(s_{t+1}) − V(s_t)`` (so it equals
    :func:`regret_score` of those advantages) and needs V at two states only.
    With ``V = V*`` this is ``−regret(σ)``; with an expert's critic V_E it is
    the approximation of docs/design.md §3 (CPL's ``rl_dis_sum`` label is the same
    construction).

    Termination: after an MDP terminal state the future value is 0, so the
    bootstrap ``γ^k V(s_k)`` is dropped when the episode ended inside the
    segment. ``mask_t`` marks steps inside the episode (1 … 1 0 … 0); any 0
    means the episode terminated at the last step with mask 1, so rewards
    after it count 0 and the bootstrap is dropped. A segment whose episode
    terminates exactly on its last step has an all-ones mask: pass
    ``terminal_k=True`` to drop the bootstrap then. (A time-limit truncation
    is not a terminal state: keep the bootstrap.)

    Args:
      rewards_t: ``[k]`` true rewards r_t.
      value_0: scalar V(s_0).
      value_k: scalar V(s_k) (s_k = the state after the last action).
      discount: γ, the same discount V was computed with.
      mask_t: optional ``[k]`` step mask (prefix of ones).
      terminal_k: optional scalar bool; s_k is an MDP terminal state.

    Returns:
      Scalar score (higher = less regret).
    """
    chex.assert_rank(rewards_t, 1)
    chex.assert_rank([value_0, value_k], 0)
    length = rewards_t.shape[0]
    dtype = jnp.result_type(rewards_t.dtype, jnp.float32)
    bootstrap = jnp.asarray(1.0, dtype)
    if mask_t is not None:
        chex.assert_equal_shape([rewards_t, mask_t])
        # A 0 anywhere means the episode terminated inside; the prefix
        # convention makes mask_t[-1] the indicator of "still alive at s_k".
        bootstrap = bootstrap * jnp.min(mask_t).astype(dtype)
    if terminal_k is not None:
        bootstrap = bootstrap * (1.0 - jnp.asarray(terminal_k, dtype))
    partial = _discounted_sum(rewards_t.astype(dtype), discount, mask_t)
    gamma_k = jnp.asarray(discount, dtype) ** length
    return partial + gamma_k * bootstrap * value_k.astype(dtype) - value_0.astype(dtype)


def td_advantages(
    rewards_t: Array,
    values_t: Array,
    next_values_t: Array,
    *,
    discount: float | Array = 1.0,
    mask_t: Array | None = None,
    terminal_k: Array | bool | None = None,
) -> Array:
    """``[k]`` one-step advantages ``A_t = r_t + γ V(s_{t+1}) − V(s_t)``.

    For V = V* and deterministic transitions these are A*(s_t, a_t) (Knox et
    al. 2022). ``γ V(s_{t+1})`` is zeroed on the step that terminates the
    episode (the last step with mask 1 when the mask has a 0, or the last step
    when ``terminal_k``), and steps with mask 0 get advantage 0, so
    ``regret_score(td_advantages(…), mask_t=m)`` equals
    :func:`regret_score_from_values` with the same mask.

    Args:
      rewards_t, values_t, next_values_t: ``[k]`` r_t, V(s_t), V(s_{t+1}).
    """
    chex.assert_rank([rewards_t, values_t, next_values_t], 1)
    chex.assert_equal_shape([rewards_t, values_t, next_values_t])
    dtype = jnp.result_type(rewards_t.dtype, jnp.float32)
    alive_next_t = jnp.ones(rewards_t.shape, dtype)
    if mask_t is not None:
        chex.assert_equal_shape([rewards_t, mask_t])
        m = mask_t.astype(dtype)
        # s_{t+1} is alive iff step t+1 is inside the episode; s_k is alive iff
        # the whole segment is (see regret_score_from_values).
        alive_next_t = jnp.concatenate([m[1:], jnp.min(m)[None]])
    if terminal_k is not None:
        alive_next_t = alive_next_t.at[-1].multiply(1.0 - jnp.asarray(terminal_k, dtype))
    adv_t = rewards_t + discount * alive_next_t * next_values_t - values_t
    if mask_t is not None:
        adv_t = adv_t * mask_t.astype(dtype)
    return adv_t.astype(dtype)


def myopic_weights(length: int, myopic_discount: float | Array = 1.0, dtype=jnp.float32) -> Array:
    """``[k]``: ``γ_m^(k−1−t)`` — the last step has weight 1, earlier ones decay.

    B-Pref's myopic teacher (Lee et al. 2021): recent steps matter more.
    """
    return jnp.asarray(myopic_discount, dtype) ** jnp.arange(length - 1, -1, -1, dtype=dtype)


def weighted_score(
    values_t: Array,
    *,
    discount: float | Array = 1.0,
    myopic_discount: float | Array = 1.0,
    mask_t: Array | None = None,
) -> Array:
    """``Σ_t γ_m^(k−1−t) γ^t m_t x_t``: the general per-step score of one segment.

    With ``myopic_discount = 1`` this is :func:`partial_return` (x = r) or
    :func:`regret_score` (x = A).
    """
    chex.assert_rank(values_t, 1)
    weights_t = myopic_weights(values_t.shape[0], myopic_discount, values_t.dtype)
    return _discounted_sum(values_t * weights_t, discount, mask_t)


def preference_probability(
    score_1: Array, score_2: Array, *, temperature: float | Array = 1.0
) -> Array:
    """``P(σ¹ ≻ σ²) = sigmoid((score_1 − score_2) / β)`` (Bradley–Terry)."""
    return jax.nn.sigmoid(logit(score_1, score_2, temperature=temperature))
