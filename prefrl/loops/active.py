"""Active query selection in rounds: label → refit → select (Christiano et al. 2017).

Each round fits a reward-model ensemble on every label gathered so far,
scores the remaining candidate queries by the members' predicted
P(σ¹ ≻ σ²) (:func:`pool_score_fn`) and asks the
oracle about the ``per_round`` most informative ones
(:func:`prefrl.data.queries.select_queries`: variance of P across members,
"disagreement", or entropy of the mean P; ``uniform`` is the baseline).
The first round has no model yet and is always uniform.

Labels come from ``label_fn(first, second) -> [Q]`` (a scripted oracle or a
person), so the driver is host code around pure, jitted fits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from prefrl.data import pairs
from prefrl.data.queries import select_queries
from prefrl.learners import reward_model as rm
from prefrl.loops import fit as reward_fit

Array = jax.Array
LabelFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class ActiveResult(NamedTuple):
    """``state``: the last fit; ``first``/``second``/``label`` ``[Q]``: every labelled
    query in the order asked; ``round`` ``[Q]``: the round that asked it;
    ``metrics``: the last fit's metrics."""

    state: rm.RewardModelState
    first: np.ndarray
    second: np.ndarray
    label: np.ndarray
    round: np.ndarray
    metrics: dict[str, Any]


def _pairs(segments: Any, first: np.ndarray, second: np.ndarray, label: np.ndarray
           ) -> rm.PairBatch:
    return pairs.gather(segments, np.asarray(first), np.asarray(second), label)


def ensemble_preferences(model: rm.RewardModel, state: rm.RewardModelState, batch: rm.PairBatch
                         ) -> Array:
    """``[M, B]``: each member's P(σ¹ ≻ σ²) for every query (for active selection)."""
    rm.check_compatible(model, state.params, batch)
    return jax.nn.sigmoid(rm.pair_logits(model.config, model.network, state.params, batch))


def pool_preferences(model: rm.RewardModel, state: rm.RewardModelState, pool: Any,
                     first: Array, second: Array) -> Array:
    """``[M, C]``: each member's P(σ¹ ≻ σ²) for the queries ``(first, second)`` of a pool.

    ``pool`` is any segment pool :func:`prefrl.data.pairs.gather` reads (rows of
    ``obs``, ``action``, ``mask``); the one gather-then-score of query selection,
    for the online core's select (both backends) and :func:`pool_score_fn` (host rounds).
    """
    batch = pairs.gather(pool, first, second, jnp.zeros(first.shape, jnp.float32))
    return ensemble_preferences(model, state, batch)


# A module-level jit with the state as an argument: refits reuse one compilation.
jitted_pool_preferences = jax.jit(pool_preferences, static_argnums=0)


def pool_score_fn(
    model: rm.RewardModel, state: rm.RewardModelState, segments: Any, chunk: int = 1024
) -> Callable[[Array, Array], Array]:
    """``score_fn(first [C], second [C]) -> P [M, C]`` over a segment pool.

    The form ``prefrl.data.queries.select_queries`` takes. Queries are scored
    ``chunk`` at a time to bound memory.
    """
    obs, action, mask = (jnp.asarray(x, jnp.float32) for x in (segments.obs, segments.action,
                                                               segments.mask))
    pool = pairs.Pool(obs, action, mask)
    _probs = lambda first, second: jitted_pool_preferences(model, state, pool, first, second)

    def score_fn(first: Array, second: Array) -> Array:
        first, second = jnp.asarray(first), jnp.asarray(second)
        parts = [_probs(first[i:i + chunk], second[i:i + chunk])
                 for i in range(0, first.shape[0], chunk)]
        return jnp.concatenate(parts, axis=1)

    return score_fn


def _positions_score_fn(pool_fn: Callable, first: np.ndarray, second: np.ndarray) -> Callable:
    """Score candidates given by their positions in ``(first, second)``."""
    return lambda pos, _pos: pool_fn(first[np.asarray(pos)], second[np.asarray(pos)])


def active_rounds(
    key: Array,
    config: rm.RewardModelConfig,
    segments: Any,
    candidates: tuple[Array, Array],
    label_fn: LabelFn,
    *,
    rounds: int,
    per_round: int,
    method: Literal["uniform", "disagreement", "entropy"] = "disagreement",
) -> ActiveResult:
    """Run ``rounds`` rounds of select → label → refit.

    Args:
      key: PRNG key (split per round into selection and fit keys).
      config: reward-model config (an ensemble, ``ensemble_size >= 2``, for
        the active methods).
      segments: the pool (``obs [N, k, obs]``, ``action``, ``mask``).
      candidates: ``(first [C], second [C])`` candidate queries; each is
        asked at most once.
      label_fn: ``(first [q], second [q]) -> label [q]`` (P(first ≻ second)).
      rounds: number of rounds (≥ 1); ``per_round`` queries each.
      method: acquisition after the first round.
    """
    if rounds < 1 or per_round < 1:
        raise ValueError(f"rounds and per_round must be >= 1, got {rounds}, {per_round}")
    if method != "uniform" and config.ensemble_size < 2:
        raise ValueError(f"method {method!r} needs an ensemble (ensemble_size >= 2)")
    cand_first, cand_second = (np.asarray(c) for c in candidates)
    if cand_first.shape[0] < rounds * per_round:
        raise ValueError(
            f"{cand_first.shape[0]} candidates cannot supply {rounds} rounds × {per_round}"
        )
    fit = jax.jit(lambda k, train: reward_fit.fit(k, config, train))
    total = rounds * per_round
    # Fixed-size training arrays, rows not yet labelled have weight 0: fit
    # never samples them, so every round reuses one compiled fit.
    asked = np.zeros(total, np.int64)
    labels = np.zeros(total, np.float32)
    weight = np.zeros(total, np.float32)
    available = np.ones(cand_first.shape[0], bool)
    state, metrics = None, {}
    for r in range(rounds):
        key_select, key_fit = jax.random.split(jax.random.fold_in(key, r))
        open_idx = np.flatnonzero(available)
        # Select among the still-open candidates by their position in open_idx.
        positions = jnp.arange(open_idx.shape[0])
        if state is None or method == "uniform":
            chosen, _ = select_queries(key_select, (positions, positions), per_round)
        else:
            score_fn = _positions_score_fn(pool_score_fn(rm.model(config), state, segments),
                                           cand_first[open_idx], cand_second[open_idx])
            chosen, _ = select_queries(key_select, (positions, positions), per_round,
                                       score_fn=score_fn, method=method)
        picked = open_idx[np.asarray(chosen)]
        available[picked] = False
        rows = slice(r * per_round, (r + 1) * per_round)
        asked[rows] = picked
        labels[rows] = np.asarray(label_fn(cand_first[picked], cand_second[picked]), np.float32)
        weight[rows] = 1.0
        train = _pairs(segments, cand_first[asked], cand_second[asked], labels)
        train = train._replace(weight=jnp.asarray(weight))
        pairs.validate(train, what=f"round {r} labels")
        state, metrics = fit(key_fit, train)
        reward_fit.check_finite(metrics)
    return ActiveResult(state, cand_first[asked], cand_second[asked], labels,
                        np.repeat(np.arange(rounds), per_round), metrics)
