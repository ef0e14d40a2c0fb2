"""Synthetic oracles ("scripted teachers") that label queries (docs/design.md §3).

An oracle is a frozen :class:`OracleConfig` plus pure functions:

* :func:`segment_scores` — one score per segment of a pool ``[N]``, under
  the partial-return model (true reward, Christiano et al. 2017) or the
  regret model (true reward plus a value function V_E ≈ V*, Knox et al. 2022,
  endpoint form ``Σ γ^t r_t + γ^k V_E(s_k) − V_E(s_0)``);
* :func:`label_scores` — the jitted, vmapped labelling of a batch of
  queries from the two sides' scores, with B-Pref's irrationalities (Lee et
  al. 2021, "B-Pref: Benchmarking preference-based RL"; imitation's
  ``SyntheticGatherer``);
* :func:`label_queries` — both together for ``(first, second)`` index pairs
  into a :class:`~prefrl.types.Segments` pool.

Irrationalities, all composable and deterministic given a key, applied in
B-Pref's order:

1. **skip**: a query is dropped (``keep = False``) when both segments' rational
   scores are below ``skip_threshold``;
2. **myopic**: the score used for the preference weights step t by
   ``γ_m^(k−1−t)`` (recent steps matter more);
3. **stochastic**: with temperature β > 0 the label is sampled,
   ``μ ~ Bernoulli(sigmoid((s¹ − s²)/β))``; β = 0 is the deterministic
   limit (``μ = 1[s¹ > s²]``, ½ on exact equality). β is either absolute
   (score units) or relative: ``β · std(scores of the batch)`` (imitation
   issue #821: with raw returns an absolute β makes labels near-deterministic);
4. **mistake**: the label is flipped (``μ → 1 − μ``) with probability ε
   (Christiano et al. use 10 % uniformly random labels);
5. **equal**: the label is a tie (½) when the rational scores differ by less
   than ``equal_threshold``.

Skip and equal look at the *rational* score (no myopia), as in B-Pref.
Label convention: ``label = P(σ¹ ≻ σ²)``: 1 first preferred, ½ tie, 0 second.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from prefrl import preference
from prefrl.config import field
from prefrl.types import Segments

Array = jax.Array
ValueFn = Callable[[Array], Array]  # obs [..., obs_dim] -> V [...]

MODELS = ("partial_return", "regret")


@dataclasses.dataclass(frozen=True)
class OracleConfig:
    """A scripted teacher: preference model plus irrationalities (all off by default)."""

    model: Literal["partial_return", "regret"] = field(
        "partial_return", "preference model: partial_return (true reward) or regret (reward + V_E)"
    )
    discount: float = field(1.0, "γ of the score (γ_p for partial return; V_E's γ for regret)")
    temperature: float = field(0.0, "Boltzmann temperature β; 0 = deterministic labels")
    temperature_mode: Literal["absolute", "relative"] = field(
        "absolute", "β in score units, or relative: β · std of the batch's scores"
    )
    mistake_prob: float = field(0.0, "ε: probability of flipping a label")
    equal_threshold: float = field(0.0, "tie (½) when |s¹ − s²| < this (score units); 0 = off")
    skip_threshold: float | None = field(
        None, "drop a query when both scores are below this (score units); None = off"
    )
    myopic_discount: float = field(1.0, "γ_m: step t weighted by γ_m^(k−1−t); 1 = off")

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {self.discount}")
        if not (self.temperature >= 0.0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be finite and >= 0, got {self.temperature}")
        if self.temperature_mode not in ("absolute", "relative"):
            raise ValueError(
                f"temperature_mode must be 'absolute' or 'relative', got {self.temperature_mode!r}"
            )
        if not 0.0 <= self.mistake_prob <= 1.0:
            raise ValueError(f"mistake_prob must be in [0, 1], got {self.mistake_prob}")
        if not self.equal_threshold >= 0.0:
            raise ValueError(f"equal_threshold must be >= 0, got {self.equal_threshold}")
        if self.skip_threshold is not None and not math.isfinite(self.skip_threshold):
            raise ValueError(f"skip_threshold must be finite or None, got {self.skip_threshold}")
        if not 0.0 < self.myopic_discount <= 1.0:
            raise ValueError(f"myopic_discount must be in (0, 1], got {self.myopic_discount}")

    @property
    def is_rational(self) -> bool:
        """True when no irrationality is switched on."""
        return (
            self.temperature == 0.0
            and self.mistake_prob == 0.0
            and self.equal_threshold == 0.0
            and self.skip_threshold is None
            and self.myopic_discount == 1.0
        )


class Labels(NamedTuple):
    """What an oracle returns for a batch of Q queries."""

    label: Array  # [Q] float in {0, ½, 1}: P(first preferred)
    keep: Array  # [Q] bool: False where the skip rule dropped the query
    score_1: Array  # [Q] rational score of the first segment
    score_2: Array  # [Q] rational score of the second segment


# ---------------------------------------------------------------------------
# Scores of a segment pool.


def segment_scores(
    config: OracleConfig,
    rewards: Array,
    mask: Array | None = None,
    *,
    values_0: Array | None = None,
    values_k: Array | None = None,
    myopic: bool = False,
    values_t: Array | None = None,
    next_values_t: Array | None = None,
    terminal_k: Array | None = None,
) -> Array:
    """``[N]`` scores of N segments under ``config.model`` (pure; vmapped over segments).

    Args:
      config: the oracle.
      rewards: ``[N, k]`` true rewards.
      mask: optional ``[N, k]`` step masks (see :func:`preference.regret_score_from_values`).
      values_0, values_k: ``[N]`` V_E(s_0), V_E(s_k); needed by the regret model.
      myopic: apply the myopic weights ``γ_m^(k−1−t)``. The regret model then
        needs per-step advantages, i.e. ``values_t``/``next_values_t`` ``[N, k]``
        (V_E(s_t), V_E(s_{t+1})), because the endpoint form cannot be reweighted.
      terminal_k: optional ``[N]`` bool, s_k is an MDP terminal state (the
        regret model then drops the bootstrap V_E(s_k); a 0 in ``mask`` does
        this too). ``Segments`` carries no such flag: half-cheetah never
        terminates.

    Returns:
      ``[N]`` scores.
    """
    if mask is None:
        mask = jnp.ones(rewards.shape, rewards.dtype)
    if terminal_k is None:
        terminal_k = jnp.zeros(rewards.shape[:1], bool)
    gamma, gamma_m = config.discount, config.myopic_discount
    if config.model == "partial_return":
        if myopic:
            fn = functools.partial(
                preference.weighted_score, discount=gamma, myopic_discount=gamma_m
            )
            return jax.vmap(lambda r, m: fn(r, mask_t=m))(rewards, mask)
        return jax.vmap(lambda r, m: preference.partial_return(r, discount=gamma, mask_t=m))(
            rewards, mask
        )
    if myopic:
        if values_t is None or next_values_t is None:
            raise ValueError("the myopic regret oracle needs values_t and next_values_t [N, k]")

        def one(r: Array, v: Array, nv: Array, m: Array, term: Array) -> Array:
            adv_t = preference.td_advantages(
                r, v, nv, discount=gamma, mask_t=m, terminal_k=term
            )
            return preference.weighted_score(
                adv_t, discount=gamma, myopic_discount=gamma_m, mask_t=m
            )

        return jax.vmap(one)(rewards, values_t, next_values_t, mask, terminal_k)
    if values_0 is None or values_k is None:
        raise ValueError("the regret oracle needs values_0 and values_k [N] (V_E(s_0), V_E(s_k))")
    return jax.vmap(
        lambda r, v0, vk, m, term: preference.regret_score_from_values(
            r, v0, vk, discount=gamma, mask_t=m, terminal_k=term
        )
    )(rewards, values_0, values_k, mask, terminal_k)


def pool_scores(
    config: OracleConfig,
    segments: Segments,
    value_fn: ValueFn | None = None,
    terminal_k: Array | None = None,
) -> tuple[Array, Array]:
    """``(rational [N], preference [N])`` scores of every segment in a pool.

    ``rational`` drives skip/equal; ``preference`` (myopic when γ_m < 1) drives
    the label. ``value_fn(obs [..., obs_dim]) -> [...]`` is required by the
    regret model; it must return V_E in the units of the *true* reward with
    the oracle's γ (docs/design.md §3). ``terminal_k`` ``[N]``: see :func:`segment_scores`.
    """
    rewards = jnp.asarray(segments.reward)
    mask = jnp.asarray(segments.mask, rewards.dtype)
    kwargs: dict[str, Array] = {}
    if terminal_k is not None:
        kwargs["terminal_k"] = jnp.asarray(terminal_k, bool)
    if config.model == "regret":
        if value_fn is None:
            raise ValueError("the regret oracle needs a value function (value_fn / --expert)")
        kwargs["values_0"] = value_fn(jnp.asarray(segments.obs[:, 0]))
        kwargs["values_k"] = value_fn(jnp.asarray(segments.final_obs))
    rational = segment_scores(config, rewards, mask, **kwargs)
    if config.myopic_discount == 1.0:
        return rational, rational
    if config.model == "regret":
        kwargs["values_t"] = value_fn(jnp.asarray(segments.obs))
        kwargs["next_values_t"] = value_fn(jnp.asarray(segments.next_obs))
    return rational, segment_scores(config, rewards, mask, myopic=True, **kwargs)


# ---------------------------------------------------------------------------
# Labels from scores.


def _label_one(
    config: OracleConfig,
    key: Array,
    rational_1: Array,
    rational_2: Array,
    score_1: Array,
    score_2: Array,
    temperature: Array,
) -> tuple[Array, Array]:
    """One query: ``(label, keep)``; see the module docstring for the order."""
    key_bernoulli, key_mistake = jax.random.split(key)
    dtype = jnp.result_type(score_1.dtype, jnp.float32)
    if config.temperature == 0.0:
        # β → 0 limit of sigmoid((s¹ − s²)/β): a step function, ½ at equality.
        label = 0.5 * (1.0 + jnp.sign(score_1 - score_2)).astype(dtype)
    else:
        p_first = preference.preference_probability(score_1, score_2, temperature=temperature)
        label = jax.random.bernoulli(key_bernoulli, p_first).astype(dtype)
    if config.mistake_prob > 0.0:
        flip = jax.random.bernoulli(key_mistake, config.mistake_prob)
        label = jnp.where(flip, 1.0 - label, label)
    if config.equal_threshold > 0.0:
        label = jnp.where(jnp.abs(rational_1 - rational_2) < config.equal_threshold, 0.5, label)
    keep = jnp.asarray(True)
    if config.skip_threshold is not None:
        keep = jnp.maximum(rational_1, rational_2) >= config.skip_threshold
    return label.astype(dtype), keep


def effective_temperature(config: OracleConfig, scores: Array, keep: Array | None = None,
                          temperature: Array | None = None) -> Array:
    """β in score units: ``β`` or, relative, ``β · std(scores)`` over the batch (kept queries).

    ``scores`` is ``[Q, 2]`` (both sides). A zero std falls back to β (the
    scores are then all equal and any β gives P = ½). ``temperature`` (an
    array, e.g. one value per run under ``vmap``) replaces ``config.temperature``.
    """
    beta = jnp.asarray(config.temperature if temperature is None else temperature, jnp.float32)
    if config.temperature_mode == "absolute":
        return beta
    weights = jnp.ones(scores.shape, jnp.float32)
    if keep is not None:
        weights = jnp.broadcast_to(keep[:, None], scores.shape).astype(jnp.float32)
    total = jnp.maximum(weights.sum(), 1.0)
    mean = (weights * scores).sum() / total
    std = jnp.sqrt((weights * (scores - mean) ** 2).sum() / total)
    return beta * jnp.where(std > 0, std, 1.0)


@functools.partial(jax.jit, static_argnums=0)
def label_scores(
    config: OracleConfig,
    key: Array,
    rational_1: Array,
    rational_2: Array,
    score_1: Array | None = None,
    score_2: Array | None = None,
    temperature: Array | None = None,
) -> Labels:
    """Label Q queries from their segments' scores (jitted; vmapped over queries).

    Args:
      config: the oracle (static).
      key: PRNG key; query q uses ``fold_in(key, q)``, so a query's label does
        not depend on the batch size or on the other queries (except through
        a relative β).
      rational_1, rational_2: ``[Q]`` rational scores (skip / equal rules).
      score_1, score_2: ``[Q]`` scores that drive the preference (myopic);
        default: the rational ones.
      temperature: optional ``[]`` array that replaces ``config.temperature``'s
        value (so runs that differ in β share one compile); whether labels are
        sampled stays ``config.temperature > 0`` (static). Must then be > 0.

    Returns:
      :class:`Labels` with ``[Q]`` arrays.
    """
    if score_1 is None or score_2 is None:
        score_1, score_2 = rational_1, rational_2
    num = rational_1.shape[0]
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num))
    keep_all = None
    if config.skip_threshold is not None:
        keep_all = jnp.maximum(rational_1, rational_2) >= config.skip_threshold
    beta = effective_temperature(config, jnp.stack([score_1, score_2], 1), keep_all,
                                 temperature)
    label, keep = jax.vmap(
        lambda k, r1, r2, s1, s2: _label_one(config, k, r1, r2, s1, s2, beta)
    )(keys, rational_1, rational_2, score_1, score_2)
    return Labels(label=label, keep=keep, score_1=rational_1, score_2=rational_2)


def label_queries(
    config: OracleConfig,
    key: Array,
    segments: Segments,
    first: Array,
    second: Array,
    value_fn: ValueFn | None = None,
) -> Labels:
    """Label the queries ``(segments[first[q]], segments[second[q]])``.

    Scores every segment of the pool once (``[N]``), gathers the two sides
    and calls :func:`label_scores`.

    Args:
      config: the oracle.
      key: PRNG key (labels are deterministic given it).
      segments: the pool ``[N, k, …]``.
      first, second: ``[Q]`` int indices into the pool.
      value_fn: ``obs [..., obs_dim] -> V [...]``, required by the regret model.
    """
    if config.model == "regret" and value_fn is None:
        raise ValueError("the regret oracle needs a value function (value_fn / --expert)")
    segments = jax.tree_util.tree_map(jnp.asarray, segments)
    return _label_queries_jit(
        config, value_fn, key, segments, jnp.asarray(first), jnp.asarray(second)
    )


@functools.partial(jax.jit, static_argnums=(0, 1))
def _label_queries_jit(
    config: OracleConfig,
    value_fn: ValueFn | None,
    key: Array,
    segments: Segments,
    first: Array,
    second: Array,
) -> Labels:
    # One compiled program: score the pool (value_fn included), gather, label.
    # value_fn is static (hashed by identity): pass the same callable to reuse the compilation.
    return label_traced(config, key, segments, first, second, value_fn)


def label_traced(
    config: OracleConfig,
    key: Array,
    segments: Segments,
    first: Array,
    second: Array,
    value_fn: ValueFn | None = None,
    temperature: Array | None = None,
) -> Labels:
    """:func:`label_queries`'s arithmetic for use inside a traced program (no host work).

    ``segments`` needs ``reward [N, k]`` and ``mask [N, k]`` (and ``obs``,
    ``next_obs`` for the regret model): a :class:`~prefrl.types.Segments` or
    a device-side pool with those fields. ``temperature``: see :func:`label_scores`.
    """
    rational, pref = pool_scores(config, segments, value_fn)
    return label_scores(config, key, rational[first], rational[second], pref[first],
                        pref[second], temperature)
