"""The exact grid world: V* from value iteration, Knox et al.'s example, shaping invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefrl import oracles, preference, tabular
from prefrl.tabular import DOWN, LEFT, RIGHT, UP

WORLD = tabular.GridWorld(height=5, width=5, goal=(0, 4))
P = WORLD.transitions()
R = WORLD.rewards()


def manhattan_to_goal(world):
    gr, gc = world.goal
    return np.array(
        [abs(r - gr) + abs(c - gc) for r in range(world.height) for c in range(world.width)]
    )


def test_value_iteration_undiscounted_is_minus_distance():
    v, q = tabular.value_iteration(P, R, discount=1.0)
    # Each step costs −1 until the goal: V*(s) = −(Manhattan distance to the goal).
    np.testing.assert_array_equal(np.asarray(v), -manhattan_to_goal(WORLD))
    # Q*(s, a) = −1 + V*(s'): from (2, 2) [V = −4] moving up reaches (1, 2) [V = −3] → −4.
    s = WORLD.state(2, 2)
    assert float(q[s, UP]) == -4.0
    # … moving down reaches (3, 2) [V = −5] → −6.
    assert float(q[s, DOWN]) == -6.0


def test_value_iteration_discounted_closed_form():
    gamma = 0.9
    v, _ = tabular.value_iteration(P, R, discount=gamma)
    d = manhattan_to_goal(WORLD)
    # Σ_{t<d} γ^t (−1) = −(1 − γ^d)/(1 − γ)
    np.testing.assert_allclose(np.asarray(v), -(1 - gamma**d) / (1 - gamma), rtol=1e-5)


def test_value_iteration_jit_matches_nojit():
    # value_iteration is jitted; __wrapped__ is the plain function (its while_loop runs eagerly).
    v1, q1 = tabular.value_iteration(P, R, discount=0.9)
    v2, q2 = tabular.value_iteration.__wrapped__(P, R, discount=0.9)
    np.testing.assert_array_equal(np.asarray(v1), np.asarray(v2))
    np.testing.assert_array_equal(np.asarray(q1), np.asarray(q2))


def knox_segments():
    """Two length-2 segments from (2, 2): one toward the goal (0, 4), one away."""
    start = WORLD.state(2, 2)
    good = tabular.rollout(P, R, start, jnp.array([UP, RIGHT]))
    bad = tabular.rollout(P, R, start, jnp.array([DOWN, LEFT]))
    return good, bad


def test_knox_example_partial_return_indifferent_regret_prefers_optimal():
    v, _, adv = tabular.optimal_advantages(P, R, discount=1.0)
    (good_s, good_r), (bad_s, bad_r) = knox_segments()
    # Both segments cost −1 per step: partial return −2 each.
    pr_good = preference.partial_return(good_r)
    pr_bad = preference.partial_return(bad_r)
    assert float(pr_good) == float(pr_bad) == -2.0
    assert float(preference.preference_probability(pr_good, pr_bad)) == 0.5
    # A* = r + V*(s') − V*(s): moving toward the goal −1 + 1 = 0; away −1 − 1 = −2.
    good_adv = adv[good_s[:-1], jnp.array([UP, RIGHT])]
    bad_adv = adv[bad_s[:-1], jnp.array([DOWN, LEFT])]
    np.testing.assert_array_equal(np.asarray(good_adv), [0.0, 0.0])
    np.testing.assert_array_equal(np.asarray(bad_adv), [-2.0, -2.0])
    rg, rb = preference.regret_score(good_adv), preference.regret_score(bad_adv)
    assert (float(rg), float(rb)) == (0.0, -4.0)
    # Endpoint form: −2 + V*(1, 3) − V*(2, 2) = −2 − 2 + 4 = 0; −2 + V*(3, 1) + 4 = −2 − 6 + 4 = −4.
    eg = preference.regret_score_from_values(good_r, v[good_s[0]], v[good_s[-1]])
    eb = preference.regret_score_from_values(bad_r, v[bad_s[0]], v[bad_s[-1]])
    assert (float(eg), float(eb)) == (0.0, -4.0)
    # P_regret(good ≻ bad) = sigmoid(4/β) with β = 1.
    p = preference.preference_probability(rg, rb)
    assert float(p) == pytest.approx(1 / (1 + np.exp(-4.0)))


def test_knox_example_through_the_oracles():
    """The two oracles on the same query: PR ties (½), regret prefers the optimal segment (1)."""
    v, _ = tabular.value_iteration(P, R, discount=1.0)
    (good_s, good_r), (bad_s, bad_r) = knox_segments()
    value_fn = lambda obs: v[obs[..., 0].astype(jnp.int32)]
    states = jnp.stack([good_s, bad_s]).astype(jnp.float32)[..., None]  # [2, k+1, 1]
    rewards = jnp.stack([good_r, bad_r])
    from prefrl.types import Segments

    segs = Segments(
        obs=states[:, :-1],
        action=jnp.zeros((2, 2, 1)),
        reward=rewards,
        next_obs=states[:, 1:],
        mask=jnp.ones((2, 2)),
        x_velocity=jnp.zeros((2, 2)),
        qpos=jnp.zeros((2, 2, 0)),
        qvel=jnp.zeros((2, 2, 0)),
        source=jnp.zeros((2, 2), jnp.int32),
    )
    key = jax.random.key(0)
    first, second = jnp.array([0]), jnp.array([1])
    pr = oracles.label_queries(oracles.OracleConfig(), key, segs, first, second)
    rg = oracles.label_queries(
        oracles.OracleConfig(model="regret"), key, segs, first, second, value_fn=value_fn
    )
    assert float(pr.label[0]) == 0.5
    assert float(rg.label[0]) == 1.0


def test_gridworld_rejects_goal_outside():
    with pytest.raises(ValueError, match="outside"):
        tabular.GridWorld(height=3, width=3, goal=(3, 0))


SMALL = tabular.GridWorld(height=3, width=4, goal=(0, 3))
SP, SR = SMALL.transitions(), SMALL.rewards()


@settings(max_examples=25, deadline=None)
@given(
    potential=st.lists(
        st.floats(-5, 5, allow_nan=False, width=32), min_size=SMALL.num_states,
        max_size=SMALL.num_states,
    ),
    start=st.integers(0, SMALL.num_states - 1),
    actions=st.lists(st.integers(0, 3), min_size=3, max_size=3),
    gamma=st.sampled_from([0.9, 1.0]),
)
def test_regret_invariant_to_potential_shaping_partial_return_not(potential, start, actions, gamma):
    phi = jnp.asarray(potential, jnp.float32)
    shaped = tabular.shaped_rewards(SP, SR, phi, discount=gamma)
    v, _, adv = tabular.optimal_advantages(SP, SR, discount=gamma)
    v2, _, adv2 = tabular.optimal_advantages(SP, shaped, discount=gamma)
    # Shaping leaves A* unchanged (Ng et al. 1999).
    np.testing.assert_allclose(np.asarray(adv2), np.asarray(adv), atol=2e-4)

    acts = jnp.asarray(actions)
    states, r = tabular.rollout(SP, SR, start, acts)
    _, r2 = tabular.rollout(SP, shaped, start, acts)
    # Regret score: the same under r and r' (advantage and endpoint forms).
    reg = preference.regret_score(adv[states[:-1], acts], discount=gamma)
    reg2 = preference.regret_score(adv2[states[:-1], acts], discount=gamma)
    end = preference.regret_score_from_values(r, v[states[0]], v[states[-1]], discount=gamma)
    end2 = preference.regret_score_from_values(r2, v2[states[0]], v2[states[-1]], discount=gamma)
    assert float(reg2) == pytest.approx(float(reg), abs=5e-4)
    assert float(end2) == pytest.approx(float(end), abs=5e-4)
    assert float(end) == pytest.approx(float(reg), abs=5e-4)
    # Partial return moves by exactly γ^k Φ(s_k) − Φ(s_0): not invariant.
    pr = preference.partial_return(r, discount=gamma)
    pr2 = preference.partial_return(r2, discount=gamma)
    shift = gamma**3 * phi[states[-1]] - phi[states[0]]
    assert float(pr2 - pr) == pytest.approx(float(shift), abs=5e-4)


def test_shaping_flips_partial_return_preference_but_not_regret():
    """A concrete witness: the Knox pair under a potential that rewards moving away."""
    (good_s, _), (bad_s, _) = knox_segments()
    # Φ = +distance to goal: moving away earns +1 per step under r' = r + Φ(s') − Φ(s).
    phi = jnp.asarray(manhattan_to_goal(WORLD), jnp.float32)
    shaped = tabular.shaped_rewards(P, R, phi)
    _, good_r2 = tabular.rollout(P, shaped, good_s[0], jnp.array([UP, RIGHT]))
    _, bad_r2 = tabular.rollout(P, shaped, bad_s[0], jnp.array([DOWN, LEFT]))
    # good: −1 −1 per step = −2 each → −4; bad: −1 + 1 = 0 each → 0. PR now prefers "bad".
    assert float(preference.partial_return(good_r2)) == -4.0
    assert float(preference.partial_return(bad_r2)) == 0.0
    v2, _, adv2 = tabular.optimal_advantages(P, shaped)
    rg = preference.regret_score(adv2[good_s[:-1], jnp.array([UP, RIGHT])])
    rb = preference.regret_score(adv2[bad_s[:-1], jnp.array([DOWN, LEFT])])
    assert (float(rg), float(rb)) == (0.0, -4.0)
