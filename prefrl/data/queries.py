"""Choosing which pairs of segments to label (queries).

* :func:`uniform_pairs` — uniform random pairs from a pool, never a segment
  with itself (Christiano et al. 2017's baseline sampler).
* :func:`matching_start_pairs` / :func:`same_start_pairs` — pairs whose
  start states match within a tolerance. Comparing segments that start from
  the same state isolates the behaviour (the regret model's V(s_0) cancels;
  Knox et al. 2022). How to get such pools: roll out groups of environments
  from identical reset states (the same qpos/qvel, e.g. the same reset-noise
  key for every member of a group) or branch several rollouts from one saved
  physics state; segments cut at the same time index of a group then share
  s_0. :func:`matching_start_pairs` finds those pairs from the data
  (``Segments.qpos``/``qvel`` at t = 0) whatever produced them.
* :func:`select_queries` — active selection among candidate pairs, uniform or
  by an ensemble's disagreement (variance of P) or by the entropy of the mean
  P (Christiano 2017; B-Pref, Lee et al. 2021). A reward-model ensemble
  supplies ``score_fn(first, second) -> P [M, C]``.

Pairs are returned as ``(first, second)`` int arrays ``[Q]`` of indices into
the pool.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]  # (first [C], second [C]) -> P(first ≻ second) [M, C]



def disagreement(probs: Array) -> Array:
    """``[C]`` variance of P across ensemble members ``[M, C]`` (Christiano et al. 2017)."""
    return jnp.var(probs, axis=0)


def entropy(probs: Array) -> Array:
    """``[C]`` binary entropy of the members' mean P: ``−p log p − (1 − p) log(1 − p)``."""
    p = jnp.clip(jnp.mean(probs, axis=0), 1e-7, 1 - 1e-7)
    return -(p * jnp.log(p) + (1 - p) * jnp.log1p(-p))


# The acquisition rules: name -> ``values(P [M, C]) -> [C]`` (larger is asked first), or
# None for uniform choice. The single list of its kind: config validation, CLI choices,
# sweeps and docs read it; ``register_acquisition`` adds one (docs/design.md, "add a query rule").
ACQUISITIONS: dict[str, Callable[[Array], Array] | None] = {
    "uniform": None,
    "disagreement": disagreement,
    "entropy": entropy,
}


def register_acquisition(name: str, values: Callable[[Array], Array]) -> None:
    """Add a query rule: ``values(P [M, C]) -> [C]`` acquisition values (traceable)."""
    if not isinstance(name, str) or not name or not callable(values):
        raise TypeError("register_acquisition(name: str, values: callable P [M, C] -> [C])")
    if name in ACQUISITIONS:
        raise ValueError(f"acquisition rule {name!r} is already registered")
    ACQUISITIONS[name] = values


def __getattr__(name: str) -> tuple[str, ...]:
    # METHODS: the registered rule names, read when asked (rules registered later included).
    if name == "METHODS":
        return tuple(ACQUISITIONS)
    raise AttributeError(name)


def uniform_pairs(key: Array, num_segments: int | Array, budget: int) -> tuple[Array, Array]:
    """``budget`` uniform random ordered pairs ``(i, j)``, ``i ≠ j``, from ``num_segments``.

    ``j`` is drawn from the N − 1 other segments (draw from [0, N−1) and shift
    values ≥ i up by one), so every ordered pair of distinct segments has
    probability 1 / (N (N − 1)). Pairs are drawn independently (a pair can
    repeat; with N² ≫ budget this is rare). ``num_segments`` may be a traced
    count (a device-side pool's fill level); ``budget`` fixes the shapes.
    """
    if isinstance(num_segments, int | np.integer) and num_segments < 2:
        # A traced count (a device-side pool's fill level) is the caller's to check.
        raise ValueError(f"need at least 2 segments to form a pair, got {num_segments}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    key_first, key_second = jax.random.split(key)
    first = jax.random.randint(key_first, (budget,), 0, num_segments)
    other = jax.random.randint(key_second, (budget,), 0, num_segments - 1)
    second = other + (other >= first)
    return first, second


def start_states(qpos: Array | np.ndarray, qvel: Array | np.ndarray) -> np.ndarray:
    """``[N, nq + nv]``: the physics state at t = 0 of each segment (from ``Segments``)."""
    qpos, qvel = np.asarray(qpos), np.asarray(qvel)
    return np.concatenate([qpos[:, 0], qvel[:, 0]], axis=-1)


def matching_start_pairs(states: Array | np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """All unordered pairs ``(i < j)`` whose start states match: ``max|x_i − x_j| ≤ tol``.

    Sorts by the first coordinate and compares each state only with those
    within ``tol`` of it there, so the cost is O(N log N + candidates) rather
    than O(N²) memory. Host-side (numpy); runs once per pool.

    Args:
      states: ``[N, d]`` start states (e.g. :func:`start_states`).
      tol: absolute tolerance per coordinate.

    Returns:
      ``[P, 2]`` int64 pairs, sorted lexicographically.
    """
    states = np.asarray(states, np.float64)
    if states.ndim != 2:
        raise ValueError(f"states must be [N, d], got shape {states.shape}")
    if not np.all(np.isfinite(states)):
        raise ValueError("states contain NaN or inf")
    order = np.argsort(states[:, 0], kind="stable")
    sorted_states = states[order]
    lead = sorted_states[:, 0]
    # For each i, candidates are the sorted positions (i, hi[i]) with lead within tol.
    hi = np.searchsorted(lead, lead + tol, side="right")
    pairs = []
    for i in np.nonzero(hi - np.arange(len(lead)) > 1)[0]:
        cand = np.arange(i + 1, hi[i])
        close = np.max(np.abs(sorted_states[cand] - sorted_states[i]), axis=1) <= tol
        for j in cand[close]:
            a, b = order[i], order[j]
            pairs.append((min(a, b), max(a, b)))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    out = np.array(sorted(pairs), np.int64)
    return out


def same_start_pairs(
    key: Array, states: Array | np.ndarray, budget: int, tol: float = 1e-6
) -> tuple[Array, Array]:
    """Up to ``budget`` queries whose two segments start from the same state.

    Draws without replacement from :func:`matching_start_pairs` and puts
    either segment first with probability ½ (so position carries no signal).
    Raises ``ValueError`` when the pool has no matching pair; returns fewer
    than ``budget`` queries when it has fewer pairs.
    """
    candidates = matching_start_pairs(states, tol)
    if len(candidates) == 0:
        raise ValueError(
            f"no two segments share a start state within tol={tol}; collect the pool from "
            "shared reset states (or branch rollouts) or use uniform pairs"
        )
    key_pick, key_swap = jax.random.split(key)
    take = min(budget, len(candidates))
    pick = np.asarray(jax.random.permutation(key_pick, len(candidates)))[:take]
    chosen = candidates[pick]
    swap = np.asarray(jax.random.bernoulli(key_swap, 0.5, (take,)))
    first = np.where(swap, chosen[:, 1], chosen[:, 0])
    second = np.where(swap, chosen[:, 0], chosen[:, 1])
    return jnp.asarray(first, jnp.int32), jnp.asarray(second, jnp.int32)


def _as_pairs(candidates: tuple[Array, Array] | Array) -> tuple[Array, Array]:
    if isinstance(candidates, tuple):
        first, second = candidates
    else:
        candidates = jnp.asarray(candidates)
        if candidates.ndim != 2 or candidates.shape[1] != 2:
            raise ValueError(
                f"candidates must be [C, 2] or (first, second), got {candidates.shape}"
            )
        first, second = candidates[:, 0], candidates[:, 1]
    first, second = jnp.asarray(first), jnp.asarray(second)
    if first.shape != second.shape or first.ndim != 1:
        raise ValueError(
            f"first/second must be equal-length [C], got {first.shape}, {second.shape}"
        )
    return first, second


def acquisition(probs: Array, method: str) -> Array:
    """``[C]`` acquisition values of a registered rule from ``P(first ≻ second)`` ``[M, C]``.

    See :data:`ACQUISITIONS` (``disagreement``: variance of P across members;
    ``entropy``: binary entropy of the mean P).
    """
    probs = jnp.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"score_fn must return [M, C] probabilities, got shape {probs.shape}")
    rule = ACQUISITIONS.get(method)
    if rule is None:
        raise ValueError(f"unknown acquisition method {method!r}; use one of "
                         f"{[m for m, f in ACQUISITIONS.items() if f is not None]}")
    return rule(probs)


def oversample_select(key: Array, values: Array, num_compete: int | Array, num: int) -> Array:
    """Indices ``[num]`` of the best candidates among the first ``num_compete`` (B-Pref).

    Oversample-then-select: ``values [C]`` are acquisition values of C
    candidates drawn at a fixed count (one compile for every round); only the
    first ``num_compete`` (e.g. ``oversample × n``, may be traced) compete, the
    rest count as −∞. Order: largest value first, equal values in a random
    order from ``key`` (so ``uniform``, all values equal, is a random choice).
    The online core (:mod:`prefrl.loops.online.core`) selects with it on both backends.
    """
    values = jnp.asarray(values)
    values = jnp.where(jnp.arange(values.shape[0]) < num_compete, values, -jnp.inf)
    tie_break = jax.random.uniform(key, values.shape)
    return jnp.lexsort((tie_break, -values))[:num]


def select_queries(
    key: Array,
    candidates: tuple[Array, Array] | Array,
    budget: int,
    score_fn: ScoreFn | None = None,
    method: str = "uniform",
) -> tuple[Array, Array]:
    """Choose ``budget`` of the C candidate queries.

    Args:
      key: PRNG key (uniform choice; random tie-breaking otherwise).
      candidates: ``[C, 2]`` index pairs or ``(first [C], second [C])``.
      budget: how many to keep (≤ C).
      score_fn: ``(first [C], second [C]) -> P [M, C]``: each ensemble
        member's predicted P(first ≻ second); required by the active methods.
      method: ``"uniform"`` (without replacement), ``"disagreement"`` (largest
        variance of P across members) or ``"entropy"`` (largest entropy of the
        mean P).

    Returns:
      ``(first [budget], second [budget])``, the chosen candidates in
      decreasing acquisition order (uniform: random order).
    """
    if method not in ACQUISITIONS:
        raise ValueError(f"unknown method {method!r}; use one of {tuple(ACQUISITIONS)}")
    first, second = _as_pairs(candidates)
    num = first.shape[0]
    if not 0 <= budget <= num:
        raise ValueError(f"budget must be in [0, {num}] (number of candidates), got {budget}")
    perm = jax.random.permutation(key, num)
    if ACQUISITIONS[method] is None:
        chosen = perm[:budget]
    else:
        if score_fn is None:
            raise ValueError(f"method {method!r} needs score_fn returning P [M, C]")
        values = acquisition(score_fn(first, second), method)
        if values.shape != (num,):
            raise ValueError(f"score_fn must return [M, {num}], got acquisition {values.shape}")
        # Sort the randomly permuted candidates: equal values end up in random order.
        order = jnp.argsort(-values[perm], stable=True)
        chosen = perm[order[:budget]]
    return first[chosen], second[chosen]
