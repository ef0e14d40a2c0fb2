"""Reward-quality metrics and across-seed statistics (docs/design.md §6).

* :func:`preference_accuracy` — held-out agreement of a learned function's
  preferences with an oracle's labels (ties: excluded or counted ½).
* :func:`pearson`, :func:`spearman` — correlation of a learned function with
  the true reward r or the expert advantage A_E on a state–action sample.
* :func:`epic_distance` — EPIC pseudometric (Gleave et al. 2021,
  "Quantifying differences in reward functions"): canonicalise both rewards
  over coverage distributions of states and actions, then the Pearson
  distance ``sqrt((1 − ρ) / 2)``. Invariant to potential shaping and positive
  rescaling, so EPIC(A*, r) = 0: an advantage is a shaped reward.
* :func:`iqm`, :func:`bootstrap_ci`, :func:`interval_estimates` — the
  interquartile mean and stratified percentile-bootstrap 95 % intervals over
  runs, as ``rliable`` (Agarwal et al. 2021) computes them; numpy only.

Numbers here are host-side summaries (numpy in, Python floats out) except
:func:`epic_distance`, which evaluates JAX reward functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
TransitionReward = Callable[[Array, Array, Array], Array]  # (s, a, s') [N, …] -> [N]


# --------------------------------------------------------------------------- #
# Preference accuracy
# --------------------------------------------------------------------------- #


def preference_accuracy(
    score_1: Array | np.ndarray,
    score_2: Array | np.ndarray,
    label: Array | np.ndarray,
    *,
    ties: Literal["exclude", "half"] = "exclude",
    weight: Array | np.ndarray | None = None,
) -> float:
    """Fraction of queries where the predicted preference matches the label.

    The prediction is ``score_1 > score_2`` (first preferred), ``<`` second;
    equal scores predict a tie and earn ½ on a decisive label. Labels are
    P(first ≻ second) ∈ [0, 1]; a label above ½ means "first", below ½
    "second" (stochastic soft labels are thresholded). Tie labels (exactly ½):

    * ``ties="exclude"`` (default): dropped — accuracy over decisive labels;
    * ``ties="half"``: kept, each counting ½ whatever is predicted (a tie
      carries no ordering to get right or wrong).

    ``weight`` (e.g. an oracle's skip mask) weights queries; weight 0 drops one.
    Returns NaN when no query counts.
    """
    s1 = np.asarray(score_1, np.float64)
    s2 = np.asarray(score_2, np.float64)
    mu = np.asarray(label, np.float64)
    if not s1.shape == s2.shape == mu.shape or mu.ndim != 1:
        raise ValueError(
            f"score_1, score_2, label must be equal [Q] arrays, got {s1.shape}, {s2.shape}, "
            f"{mu.shape}"
        )
    if ties not in ("exclude", "half"):
        raise ValueError(f"ties must be 'exclude' or 'half', got {ties!r}")
    correct, total = accuracy_sums(s1, s2, mu, ties=ties, weight=weight)
    return float(correct / total) if total > 0 else float("nan")


def preference_accuracies(
    score_1: Array | np.ndarray,
    score_2: Array | np.ndarray,
    labels: Mapping[str, Array | np.ndarray],
    weights: Mapping[str, Array | np.ndarray] | None = None,
) -> dict[str, float]:
    """:func:`preference_accuracy` (ties excluded) under several label sets: ``{name: acc}``.

    ``weights`` (e.g. each oracle's skip mask) maps a label set's name to its
    query weights.
    """
    weights = weights or {}
    return {name: preference_accuracy(score_1, score_2, label, weight=weights.get(name))
            for name, label in labels.items()}


def accuracy_sums(
    score_1: Array | np.ndarray,
    score_2: Array | np.ndarray,
    label: Array | np.ndarray,
    *,
    ties: Literal["exclude", "half"] = "exclude",
    weight: Array | np.ndarray | None = None,
) -> tuple[Array, Array]:
    """``(Σ w·correct, Σ w)`` of :func:`preference_accuracy` (NumPy or traced JAX arrays).

    The arithmetic behind every preference accuracy in the project: on the host
    (:func:`preference_accuracy`) and inside a jitted learner's metrics
    (``prefrl.learners.cpl.preference_metrics``).
    """
    xp = jnp if any(isinstance(x, jax.Array) for x in (score_1, score_2, label)) else np
    s1, s2, mu = (xp.asarray(x) for x in (score_1, score_2, label))
    w = xp.ones_like(mu) if weight is None else xp.asarray(weight, mu.dtype)
    tie = mu == 0.5
    pred_first = (s1 > s2).astype(mu.dtype) + 0.5 * (s1 == s2)
    correct = xp.where(mu > 0.5, pred_first, 1.0 - pred_first)
    if ties == "exclude":
        w = xp.where(tie, 0.0, w)
    else:
        correct = xp.where(tie, 0.5, correct)
    return xp.sum(w * correct), xp.sum(w)


# --------------------------------------------------------------------------- #
# Correlation
# --------------------------------------------------------------------------- #


def pearson(x: Array | np.ndarray, y: Array | np.ndarray) -> float:
    """Pearson correlation of two equal-length samples (float64)."""
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"need two equal-length samples of size >= 2, got {x.shape}, {y.shape}")
    return float(pearson_array(x, y))


def pearson_array(x: Array | np.ndarray, y: Array | np.ndarray) -> Array | np.ndarray:
    """:func:`pearson`'s arithmetic on equal-length 1-D NumPy or traced JAX arrays.

    ``Σ x̃ỹ / sqrt(Σ x̃² Σ ỹ²)`` with centred samples; NaN when either is
    constant. No checks (they cannot run under ``jit``): the caller's job.
    """
    xp = jnp if any(isinstance(v, jax.Array) for v in (x, y)) else np
    xc, yc = x - xp.mean(x), y - xp.mean(y)
    denom = xp.sqrt(xp.sum(xc**2) * xp.sum(yc**2))
    return xp.where(denom > 0, xp.sum(xc * yc) / xp.where(denom > 0, denom, 1.0), xp.nan)


def rankdata(x: Array | np.ndarray) -> np.ndarray:
    """Ranks 1 … n with ties given their average rank (as ``scipy.stats.rankdata``)."""
    x = np.asarray(x, np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Boundaries of runs of equal values in sorted order.
    new_run = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])
    run_id = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    ends = np.concatenate([starts[1:], [x.size]])
    avg_rank = (starts + ends + 1) / 2.0  # mean of positions start+1 … end
    ranks = np.empty_like(x)
    ranks[order] = avg_rank[run_id]
    return ranks


def spearman(x: Array | np.ndarray, y: Array | np.ndarray) -> float:
    """Spearman rank correlation: Pearson of the (average-tie) ranks."""
    return pearson(rankdata(x), rankdata(y))


# --------------------------------------------------------------------------- #
# EPIC
# --------------------------------------------------------------------------- #


def state_action_reward(fn: Callable[[Array, Array], Array]) -> TransitionReward:
    """Lift ``r(s, a)`` to the ``r(s, a, s')`` form EPIC takes."""
    return lambda obs, action, next_obs: fn(obs, action)


def canonicalize(
    reward: TransitionReward,
    obs: Array,
    action: Array,
    next_obs: Array,
    coverage_obs: Array,
    coverage_action: Array,
    *,
    discount: float,
    chunk: int = 64,
) -> Array:
    """EPIC's canonically shaped reward on transitions ``[N]`` (Gleave et al. 2021, Def. 4.1).

        C(R)(s, a, s') = R(s, a, s') + E[γ R(s', A, S') − R(s, A, S') − γ R(S, A, S')]

    with S, S' ~ D_S and A ~ D_A independent. The expectations are Monte
    Carlo means over J paired draws ``(A_j, S'_j)`` = ``(coverage_action[j],
    coverage_obs[j])`` — drawn independently, so pairing does not couple them
    — and E R(S, A, S') averages E_{A,S'} R(s, A, S') over the coverage
    states. With the same draws in every term a potential-shaping term
    γΦ(s') − Φ(s) cancels *exactly* (not only in expectation). ``chunk``
    transitions are evaluated at once (each against all J draws).
    """
    if coverage_obs.shape[0] < 1 or coverage_obs.shape[0] != coverage_action.shape[0]:
        raise ValueError(
            f"coverage_obs [J, obs] and coverage_action [J, act] must be non-empty and paired, "
            f"got {coverage_obs.shape} and {coverage_action.shape}"
        )
    num_cov = coverage_obs.shape[0]

    def mean_from(states: Array) -> Array:
        """``[n, obs] -> [n]``: E_{A, S'} R(s, A, S') for each s."""

        def one(s: Array) -> Array:
            s_rep = jnp.broadcast_to(s, (num_cov, s.shape[-1]))
            return jnp.mean(reward(s_rep, coverage_action, coverage_obs))

        return jax.lax.map(one, states, batch_size=chunk)

    mean_s2 = mean_from(next_obs)  # E R(s', A, S')
    mean_s = mean_from(obs)  # E R(s, A, S')
    # E R(S, A, S') over D_S: the mean of E R(s, A, S') over the coverage states.
    mean_all = jnp.mean(mean_from(coverage_obs))
    return reward(obs, action, next_obs) + discount * mean_s2 - mean_s - discount * mean_all


def epic_distance(
    reward_a: TransitionReward,
    reward_b: TransitionReward,
    obs: Array,
    action: Array,
    next_obs: Array,
    *,
    discount: float,
    coverage_obs: Array | None = None,
    coverage_action: Array | None = None,
    num_coverage: int = 256,
    key: Array | None = None,
) -> float:
    """EPIC distance ``sqrt((1 − ρ(C(R_a), C(R_b))) / 2)`` ∈ [0, 1] (Gleave et al. 2021).

    ρ is the Pearson correlation over the transition sample ``(obs, action,
    next_obs)`` ``[N, …]`` (the distribution D of the paper). Coverage
    distributions default to ``num_coverage`` states drawn from ``obs`` and,
    independently, actions drawn from ``action`` (so D_S × D_A covers
    actions the data never took at those states); see :func:`canonicalize`. 0 means equivalent up to
    potential shaping and positive rescaling; a reward and its negation are
    at distance 1.
    """
    obs, action, next_obs = (jnp.asarray(x, jnp.float32) for x in (obs, action, next_obs))
    if coverage_obs is None or coverage_action is None:
        if key is None:
            key = jax.random.key(0)
        key_s, key_a = jax.random.split(key)
        n = obs.shape[0]
        take = min(num_coverage, n)
        if coverage_obs is None:
            coverage_obs = obs[jax.random.choice(key_s, n, (take,), replace=False)]
        if coverage_action is None:
            coverage_action = action[jax.random.choice(key_a, n, (take,), replace=False)]
    kwargs = dict(coverage_obs=jnp.asarray(coverage_obs, jnp.float32),
                  coverage_action=jnp.asarray(coverage_action, jnp.float32),
                  discount=float(discount))
    # One compiled program per reward (eager lax.map would dispatch op by op).
    canon = jax.jit(canonicalize, static_argnames=("reward", "discount", "chunk"))
    can_a = canon(reward_a, obs, action, next_obs, **kwargs)
    can_b = canon(reward_b, obs, action, next_obs, **kwargs)
    return pearson_distance(pearson(np.asarray(can_a), np.asarray(can_b)))


def pearson_distance(rho: float) -> float:
    """``sqrt((1 − ρ) / 2)``: EPIC's distance from a Pearson correlation of canonical rewards."""
    return float(np.sqrt(max(0.0, (1.0 - rho) / 2.0)))


# --------------------------------------------------------------------------- #
# Across-seed statistics (rliable-style)
# --------------------------------------------------------------------------- #


def iqm(scores: Array | np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50 % of all scores.

    Like ``scipy.stats.trim_mean(x, 0.25)`` (which rliable uses): sort the
    flattened scores and drop ``floor(0.25 n)`` from each end. NaN scores
    raise ``ValueError``.
    """
    x = np.sort(np.asarray(scores, np.float64).ravel())
    if x.size == 0:
        raise ValueError("iqm of an empty sample")
    if np.isnan(x).any():
        raise ValueError("iqm: scores contain NaN (a run with no score is not averaged away)")
    cut = int(0.25 * x.size)
    return float(np.mean(x[cut: x.size - cut]))


def bootstrap_ci(
    scores: Array | np.ndarray,
    statistic: Callable[[np.ndarray], float] = iqm,
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(point, low, high): stratified percentile bootstrap, as rliable computes.

    ``scores`` is ``[runs]`` or ``[runs, tasks]``; each bootstrap replicate
    resamples runs with replacement *within each task* (the strata) and
    recomputes ``statistic`` on the ``[runs, tasks]`` matrix; the interval is
    the (α/2, 1 − α/2) percentiles of the replicates (α = 1 − confidence).
    """
    x = np.asarray(scores, np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"scores must be [runs] or [runs, tasks], got shape {x.shape}")
    runs, tasks = x.shape
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, runs, size=(reps, runs, tasks))
    resampled = np.take_along_axis(np.broadcast_to(x, (reps, runs, tasks)), idx, axis=1)
    stats = np.array([statistic(r) for r in resampled])
    alpha = 1.0 - confidence
    low, high = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(statistic(x)), float(low), float(high)


def interval_estimates(
    scores: Mapping[str, Array | np.ndarray],
    statistic: Callable[[np.ndarray], float] = iqm,
    **kwargs,
) -> dict[str, tuple[float, float, float]]:
    """``{name: (point, low, high)}`` for each entry (rliable's ``get_interval_estimates``)."""
    return {name: bootstrap_ci(x, statistic, **kwargs) for name, x in scores.items()}


def stratified_bootstrap_ci(
    strata: Sequence[Sequence[float] | np.ndarray],
    statistic: Callable[[np.ndarray], float] = iqm,
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """:func:`bootstrap_ci` over strata of any sizes (e.g. a task with fewer finished seeds).

    Each replicate resamples the runs of every stratum with replacement,
    independently and with the stratum's own size, and applies ``statistic``
    to all of them (rliable's ``StratifiedBootstrap``, percentile method).
    Strata of equal size are the ``[runs, tasks]`` matrix of
    :func:`bootstrap_ci`; with one stratum this is the plain bootstrap.
    """
    arrays = [np.asarray(s, np.float64).ravel() for s in strata]
    arrays = [a for a in arrays if a.size]
    if not arrays:
        raise ValueError("bootstrap of no scores")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if len({a.size for a in arrays}) == 1:
        return bootstrap_ci(np.stack(arrays, axis=1), statistic, reps=reps,
                            confidence=confidence, seed=seed)
    point = statistic(np.concatenate(arrays))
    rng = np.random.default_rng(seed)
    draws = [a[rng.integers(0, a.size, size=(reps, a.size))] for a in arrays]
    replicates = np.array([statistic(np.concatenate([d[i] for d in draws])) for i in range(reps)])
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(replicates, [100 * alpha, 100 * (1 - alpha)])
    return float(point), float(low), float(high)


def _two_sample_ci(scores_a: Array | np.ndarray, scores_b: Array | np.ndarray,
                   combine: Callable[[float, float], float],
                   statistic: Callable[[np.ndarray], float], reps: int, confidence: float,
                   seed: int, name: str) -> tuple[float, float, float]:
    a = np.asarray(scores_a, np.float64).ravel()
    b = np.asarray(scores_b, np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError(f"{name} needs two non-empty samples")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    draws_a = a[rng.integers(0, a.size, size=(reps, a.size))]
    draws_b = b[rng.integers(0, b.size, size=(reps, b.size))]
    replicates = np.array([combine(statistic(x), statistic(y))
                           for x, y in zip(draws_a, draws_b, strict=True)])
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(replicates, [100 * alpha, 100 * (1 - alpha)])
    return float(combine(statistic(a), statistic(b))), float(low), float(high)


def difference_ci(
    scores_a: Array | np.ndarray,
    scores_b: Array | np.ndarray,
    statistic: Callable[[np.ndarray], float] = iqm,
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(point, low, high) of ``statistic(a) − statistic(b)`` for two independent samples.

    Percentile bootstrap: each replicate resamples the runs of ``a`` and of
    ``b`` with replacement, independently and each with its own size (two
    arms of an experiment; the seeds are not paired).
    """
    return _two_sample_ci(scores_a, scores_b, lambda x, y: x - y, statistic, reps, confidence,
                          seed, "difference_ci")


def ratio_ci(
    scores_a: Array | np.ndarray,
    scores_b: Array | np.ndarray,
    statistic: Callable[[np.ndarray], float] = iqm,
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(point, low, high) of ``statistic(a) / statistic(b)``, bootstrapped as :func:`difference_ci`.

    For ratios to a reference row whose statistic is positive (e.g. a method's IQM over
    true-reward SAC's); a replicate whose denominator is 0 gives ±inf or NaN.
    """
    def ratio(x: float, y: float) -> float:
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.divide(x, y))
    return _two_sample_ci(scores_a, scores_b, ratio, statistic, reps, confidence, seed,
                          "ratio_ci")


__all__ = [
    "accuracy_sums",
    "bootstrap_ci",
    "difference_ci",
    "ratio_ci",
    "canonicalize",
    "epic_distance",
    "interval_estimates",
    "iqm",
    "pearson",
    "pearson_array",
    "pearson_distance",
    "preference_accuracies",
    "preference_accuracy",
    "rankdata",
    "spearman",
    "state_action_reward",
    "stratified_bootstrap_ci",
]
