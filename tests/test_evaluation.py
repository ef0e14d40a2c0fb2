"""Reward-quality metrics and across-seed statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from prefrl import evaluation

GAMMA = 0.9


def reward(obs, action, next_obs):
    # A nonlinear reward of (s, a) with an interaction term.
    return jnp.sin(obs[..., 0]) + obs[..., 1] * action[..., 0] - 0.5 * action[..., 1] ** 2


def potential(obs):
    return 3.0 * (jnp.cos(2.0 * obs[..., 0]) + obs[..., 2] ** 2)


def transitions(n=400, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    obs = jax.random.normal(k1, (n, 3))
    action = jax.random.uniform(k2, (n, 2), minval=-1, maxval=1)
    next_obs = 0.8 * obs + 0.3 * jax.random.normal(k3, (n, 3))
    return obs, action, next_obs


def test_epic_zero_for_shaped_and_rescaled_reward():
    obs, action, next_obs = transitions()
    shaped = lambda s, a, s2: 3.0 * reward(s, a, s2) + GAMMA * potential(s2) - potential(s) + 7.0
    d = evaluation.epic_distance(reward, shaped, obs, action, next_obs, discount=GAMMA,
                                 num_coverage=128)
    assert d < 1e-3, d
    # Without canonicalisation the shaping would show: the raw correlation is far from 1.
    raw = evaluation.pearson(reward(obs, action, next_obs), shaped(obs, action, next_obs))
    assert raw < 0.9


def test_epic_large_for_negated_reward_and_in_between_for_noise():
    obs, action, next_obs = transitions()
    negated = lambda s, a, s2: -reward(s, a, s2)
    d = evaluation.epic_distance(reward, negated, obs, action, next_obs, discount=GAMMA)
    assert d > 0.5 and d == pytest.approx(1.0, abs=1e-3)  # ρ = −1 -> sqrt(2/2) = 1
    partly = lambda s, a, s2: reward(s, a, s2) + 2.0 * jnp.tanh(s[..., 2] * a[..., 1])
    d_partly = evaluation.epic_distance(reward, partly, obs, action, next_obs, discount=GAMMA)
    assert 0.05 < d_partly < 0.7


def test_epic_of_advantage_and_reward_is_zero():
    # A = r + γV(s') − V(s) is r shaped by V: EPIC(A, r) = 0 (Knox et al. 2023's point).
    obs, action, next_obs = transitions(seed=1)
    value = lambda s: 2.0 * s[..., 0] - s[..., 1] ** 3
    adv = lambda s, a, s2: reward(s, a, s2) + GAMMA * value(s2) - value(s)
    assert evaluation.epic_distance(adv, reward, obs, action, next_obs, discount=GAMMA) < 1e-3


def test_preference_accuracy_known_answers_and_tie_modes():
    s1 = np.array([2.0, 0.0, 1.0, 1.0, 3.0])
    s2 = np.array([1.0, 1.0, 1.0, 0.0, 3.0])
    label = np.array([1.0, 1.0, 0.0, 0.5, 1.0])
    # q0 right (1), q1 wrong (0), q2 predicted tie on a decisive label (½),
    # q3 tie label, q4 predicted tie (½).
    # exclude: (1 + 0 + ½ + ½) / 4 = 0.5;  half: (1 + 0 + ½ + ½ + ½) / 5 = 0.5.
    assert evaluation.preference_accuracy(s1, s2, label) == pytest.approx(0.5)
    assert evaluation.preference_accuracy(s1, s2, label, ties="half") == pytest.approx(0.5)
    # Dropping q1 by weight: exclude -> (1 + ½ + ½) / 3.
    w = np.array([1.0, 0.0, 1.0, 1.0, 1.0])
    assert evaluation.preference_accuracy(s1, s2, label, weight=w) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="equal"):
        evaluation.preference_accuracy(s1, s2[:3], label)


def test_correlations_match_scipy(rng):
    x = rng.normal(size=200)
    y = x**3 + rng.normal(size=200)
    x[:10] = 0.5  # ties for the ranks
    assert evaluation.pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y)[0], abs=1e-12)
    assert evaluation.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y)[0], abs=1e-12)
    np.testing.assert_array_equal(evaluation.rankdata(x), scipy.stats.rankdata(x))


def test_iqm_known_answer_and_matches_trim_mean(rng):
    # 1 … 8: drop floor(0.25·8) = 2 from each end -> mean(3, 4, 5, 6) = 4.5.
    assert evaluation.iqm(np.arange(1, 9)) == 4.5
    x = rng.normal(size=(7, 3))
    assert evaluation.iqm(x) == pytest.approx(scipy.stats.trim_mean(x.ravel(), 0.25))


def test_bootstrap_ci_is_stratified_and_deterministic(rng):
    # Two tasks with constant scores 1 and 3: stratified resampling keeps the
    # task apart, so every replicate's mean is exactly (1 + 3) / 2 = 2.
    x = np.stack([np.ones(5), 3 * np.ones(5)], axis=1)
    assert evaluation.bootstrap_ci(x, np.mean, reps=200) == (2.0, 2.0, 2.0)
    scores = rng.normal(size=10)
    a = evaluation.bootstrap_ci(scores, reps=500, seed=3)
    assert a == evaluation.bootstrap_ci(scores, reps=500, seed=3)
    point, low, high = a
    assert low <= point <= high and low < high
    out = evaluation.interval_estimates({"a": scores}, reps=100)
    assert set(out) == {"a"} and len(out["a"]) == 3


def test_difference_ci_known_answers():
    from prefrl.evaluation import difference_ci

    # Constant samples: every replicate is the same difference, a zero-width interval.
    assert difference_ci([3.0] * 4, [1.0] * 5) == (2.0, 2.0, 2.0)
    # IQM of [0, 1, 2, 10] drops one from each end: (1 + 2) / 2 = 1.5; minus IQM([1]) = 0.5.
    point, low, high = difference_ci([0.0, 1.0, 2.0, 10.0], [1.0])
    assert point == 0.5 and low <= point <= high
    # A shift of the first sample shifts the interval by the same amount (same draws).
    shifted = difference_ci([10.0, 11.0, 12.0, 20.0], [1.0])
    np.testing.assert_allclose(shifted, (10.5, low + 10.0, high + 10.0))
    with pytest.raises(ValueError, match="non-empty"):
        difference_ci([], [1.0])
