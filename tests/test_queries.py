"""Query sampling: uniform pairs, same-start pairs, active selection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from prefrl.data import queries


@pytest.mark.parametrize("jit", [False, True])
def test_uniform_pairs_never_pair_a_segment_with_itself(jit):
    fn = queries.uniform_pairs
    if jit:
        fn = jax.jit(fn, static_argnums=(1, 2))
    first, second = fn(jax.random.key(0), 7, 5000)
    first, second = np.asarray(first), np.asarray(second)
    assert first.shape == second.shape == (5000,)
    assert np.all(first != second)
    assert first.min() >= 0 and first.max() < 7 and second.min() >= 0 and second.max() < 7


def test_uniform_pairs_are_uniform_over_ordered_pairs():
    n, budget = 4, 24_000
    first, second = queries.uniform_pairs(jax.random.key(1), n, budget)
    counts = np.zeros((n, n))
    np.add.at(counts, (np.asarray(first), np.asarray(second)), 1)
    assert np.all(np.diag(counts) == 0)
    # 12 ordered pairs, 2000 expected each; chi-square goodness of fit.
    off = counts[~np.eye(n, dtype=bool)]
    assert stats.chisquare(off).pvalue > 1e-3


def test_uniform_pairs_two_segments():
    first, second = queries.uniform_pairs(jax.random.key(2), 2, 100)
    # With N = 2 the only pairs are (0, 1) and (1, 0).
    pairs = set(zip(np.asarray(first).tolist(), np.asarray(second).tolist(), strict=True))
    assert pairs == {(0, 1), (1, 0)}


def test_uniform_pairs_rejects_tiny_pool():
    with pytest.raises(ValueError, match="at least 2 segments"):
        queries.uniform_pairs(jax.random.key(0), 1, 10)


def grouped_states():
    # Segments 0, 3, 5 share a start; 1 and 4 share another (within 1e-9); 2 is alone.
    a = np.array([0.1, 0.2, 0.3])
    b = np.array([0.1, 0.7, -1.0])
    c = np.array([5.0, 5.0, 5.0])
    return np.stack([a, b, c, a, b + 1e-9, a])


def test_matching_start_pairs_finds_exactly_the_groups():
    pairs = queries.matching_start_pairs(grouped_states(), tol=1e-6)
    assert pairs.tolist() == [[0, 3], [0, 5], [1, 4], [3, 5]]


def test_matching_start_pairs_respects_tolerance():
    states = np.array([[0.0, 0.0], [0.0, 0.5e-3], [0.0, 2e-3]])
    assert queries.matching_start_pairs(states, tol=1e-3).tolist() == [[0, 1]]
    assert queries.matching_start_pairs(states, tol=1e-2).tolist() == [[0, 1], [0, 2], [1, 2]]
    # Close in the sorted (first) coordinate but not in the second: no pair.
    assert queries.matching_start_pairs(states, tol=1e-4).tolist() == []


def test_start_states_from_segment_qpos_qvel():
    qpos = np.arange(2 * 3 * 2, dtype=float).reshape(2, 3, 2)
    qvel = -np.arange(2 * 3 * 1, dtype=float).reshape(2, 3, 1)
    # t = 0 rows: qpos [0, 1], [6, 7]; qvel [0], [-3]
    np.testing.assert_array_equal(queries.start_states(qpos, qvel), [[0, 1, 0], [6, 7, -3]])


def test_same_start_pairs_share_start_and_randomise_order():
    states = grouped_states()
    first, second = queries.same_start_pairs(jax.random.key(0), states, budget=100)
    first, second = np.asarray(first), np.asarray(second)
    # Only 4 matching pairs exist.
    assert len(first) == 4
    np.testing.assert_allclose(states[first], states[second], atol=1e-6)
    assert {tuple(sorted(p)) for p in zip(first.tolist(), second.tolist(), strict=True)} == {
        (0, 3), (0, 5), (1, 4), (3, 5)
    }
    # Over many draws both orders occur.
    orders = set()
    for seed in range(10):
        f, s = queries.same_start_pairs(jax.random.key(seed), states, budget=4)
        orders |= {int(a) < int(b) for a, b in zip(np.asarray(f), np.asarray(s), strict=True)}
    assert orders == {True, False}


def test_same_start_pairs_without_matches_raises():
    with pytest.raises(ValueError, match="no two segments share a start state"):
        queries.same_start_pairs(jax.random.key(0), np.eye(3), budget=2)


CANDIDATES = jnp.array([[0, 1], [2, 3], [4, 5], [6, 7]])
# Ensemble of M = 3 members, C = 4 candidates.
PROBS = jnp.array(
    [
        [0.5, 0.9, 0.1, 0.99],
        [0.5, 0.1, 0.2, 0.99],
        [0.5, 0.5, 0.3, 0.99],
    ]
)


def score_fn(first, second):
    assert first.shape == (4,)
    return PROBS


def test_select_disagreement_picks_largest_variance():
    first, second = queries.select_queries(
        jax.random.key(0), CANDIDATES, 2, score_fn, method="disagreement"
    )
    # Variances across members: 0, 0.1067, 0.0067, 0 → candidates 1 then 2.
    np.testing.assert_array_equal(np.asarray(first), [2, 4])
    np.testing.assert_array_equal(np.asarray(second), [3, 5])


def test_select_entropy_picks_mean_closest_to_half():
    first, _ = queries.select_queries(jax.random.key(0), CANDIDATES, 2, score_fn, method="entropy")
    # Mean P: 0.5, 0.5, 0.2, 0.99 → the two with mean ½ (entropy log 2), in random order.
    assert sorted(np.asarray(first).tolist()) == [0, 2]


def test_select_uniform_without_replacement_and_tuple_input():
    f = jnp.arange(10)
    s = jnp.arange(10) + 100
    first, second = queries.select_queries(jax.random.key(3), (f, s), 10)
    assert sorted(np.asarray(first).tolist()) == list(range(10))
    np.testing.assert_array_equal(np.asarray(second), np.asarray(first) + 100)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"budget": 5}, r"budget must be in \[0, 4\]"),
        ({"budget": 2, "method": "disagreement"}, "needs score_fn"),
        ({"budget": 2, "method": "bald"}, "unknown method"),
    ],
)
def test_select_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        queries.select_queries(jax.random.key(0), CANDIDATES, **kwargs)


@pytest.mark.parametrize("jit", [False, True])
def test_acquisition_known_values(jit):
    fn = queries.acquisition
    if jit:
        fn = jax.jit(fn, static_argnums=1)
    # Candidate 1: P = 0.9, 0.1, 0.5 → mean 0.5, population variance (0.16 + 0.16 + 0)/3.
    np.testing.assert_allclose(np.asarray(fn(PROBS, "disagreement"))[1], 0.32 / 3, rtol=1e-5)
    # Mean ½ → entropy log 2 (the maximum).
    np.testing.assert_allclose(np.asarray(fn(PROBS, "entropy"))[0], np.log(2.0), rtol=1e-5)
