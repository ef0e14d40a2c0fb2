"""Known answers for prefrl.preference, each with and without jit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prefrl import preference

TRANSFORMS = [pytest.param(lambda f: f, id="nojit"), pytest.param(jax.jit, id="jit")]


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_partial_return_known_answer(transform):
    fn = transform(lambda r, m: preference.partial_return(r, discount=0.5, mask_t=m))
    r = jnp.array([1.0, 2.0, 3.0])
    # 1 + 0.5·2 + 0.25·3 = 2.75
    assert float(fn(r, jnp.ones(3))) == pytest.approx(2.75)
    # The masked last step counts 0: 1 + 0.5·2 = 2
    assert float(fn(r, jnp.array([1.0, 1.0, 0.0]))) == pytest.approx(2.0)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_regret_score_known_answer(transform):
    fn = transform(lambda a: preference.regret_score(a, discount=0.9))
    # -1 + 0.9·(-2) = -2.8
    assert float(fn(jnp.array([-1.0, -2.0]))) == pytest.approx(-2.8)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_regret_from_values_known_answer(transform):
    r = jnp.array([1.0, 1.0])
    v0, vk = jnp.asarray(2.0), jnp.asarray(4.0)

    @transform
    def fn(mask, terminal):
        return preference.regret_score_from_values(
            r, v0, vk, discount=0.5, mask_t=mask, terminal_k=terminal
        )

    # 1 + 0.5·1 + 0.5²·4 − 2 = 0.5
    assert float(fn(jnp.ones(2), False)) == pytest.approx(0.5)
    # Episode ended after step 0: 1 + (no reward after) + (no bootstrap) − 2 = −1
    assert float(fn(jnp.array([1.0, 0.0]), False)) == pytest.approx(-1.0)
    # Terminated exactly at the last step: 1 + 0.5 − 2 = −0.5
    assert float(fn(jnp.ones(2), True)) == pytest.approx(-0.5)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("mask", [None, [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
def test_endpoint_form_equals_sum_of_td_advantages(transform, mask):
    rng = np.random.default_rng(1)
    r = jnp.asarray(rng.normal(size=6), jnp.float32)
    v = jnp.asarray(rng.normal(size=7), jnp.float32)  # V(s_0) … V(s_6)
    m = None if mask is None else jnp.asarray(mask, jnp.float32)

    @transform
    def both(r, v):
        adv = preference.td_advantages(r, v[:-1], v[1:], discount=0.9, mask_t=m)
        a = preference.regret_score(adv, discount=0.9, mask_t=m)
        b = preference.regret_score_from_values(r, v[0], v[-1], discount=0.9, mask_t=m)
        return a, b

    a, b = both(r, v)
    assert float(a) == pytest.approx(float(b), abs=1e-5)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_logit_scales_with_inverse_temperature(transform):
    fn = transform(lambda s1, s2, beta: preference.logit(s1, s2, temperature=beta))
    # (3 − 1)/2 = 1; (3 − 1)/0.5 = 4: halving β doubles… quartering β quadruples the logit.
    assert float(fn(3.0, 1.0, 2.0)) == pytest.approx(1.0)
    assert float(fn(3.0, 1.0, 0.5)) == pytest.approx(4.0)
    assert float(fn(3.0, 1.0, 0.5)) == pytest.approx(4 * float(fn(3.0, 1.0, 2.0)))


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_bt_loss_known_answers(transform):
    fn = transform(preference.bt_loss)
    # Equal scores (x = 0), tie μ = ½: −[½ log ½ + ½ log ½] = log 2
    assert float(fn(jnp.asarray(0.0), jnp.asarray(0.5))) == pytest.approx(math.log(2.0))
    # x = 0, μ = 1: −log σ(0) = log 2 as well
    assert float(fn(jnp.asarray(0.0), jnp.asarray(1.0))) == pytest.approx(math.log(2.0))
    # x = 2, μ = 1: −log σ(2) = log(1 + e^−2) = 0.126928…
    assert float(fn(jnp.asarray(2.0), jnp.asarray(1.0))) == pytest.approx(math.log1p(math.exp(-2)))
    # x = 2, μ = 0: −log σ(−2) = log(1 + e^2) = 2.126928…
    assert float(fn(jnp.asarray(2.0), jnp.asarray(0.0))) == pytest.approx(math.log1p(math.exp(2)))


def test_bt_loss_tie_is_minimised_at_equal_scores():
    xs = jnp.linspace(-3, 3, 61)
    losses = preference.bt_loss(xs, jnp.full_like(xs, 0.5))
    assert float(xs[jnp.argmin(losses)]) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_myopic_weights_favour_the_last_step(transform):
    w = transform(lambda: preference.myopic_weights(3, 0.5))()
    # γ_m^(k−1−t) for k = 3: [0.5², 0.5¹, 0.5⁰] = [0.25, 0.5, 1]
    np.testing.assert_allclose(np.asarray(w), [0.25, 0.5, 1.0])
    score = transform(lambda x: preference.weighted_score(x, myopic_discount=0.5))
    assert float(score(jnp.array([1.0, 0.0, 0.0]))) == pytest.approx(0.25)
    assert float(score(jnp.array([0.0, 0.0, 1.0]))) == pytest.approx(1.0)


def test_weighted_score_without_myopia_is_partial_return():
    r = jnp.array([0.3, -1.0, 2.0, 0.5])
    a = preference.weighted_score(r, discount=0.9)
    b = preference.partial_return(r, discount=0.9)
    assert float(a) == pytest.approx(float(b))


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_preference_probability_known_answer(transform):
    fn = transform(lambda a, b: preference.preference_probability(a, b, temperature=2.0))
    # sigmoid((1 − 1)/2) = ½; sigmoid((3 − 1)/2) = sigmoid(1) = 0.7310586
    assert float(fn(1.0, 1.0)) == pytest.approx(0.5)
    assert float(fn(3.0, 1.0)) == pytest.approx(1 / (1 + math.exp(-1)))


def test_vmapped_over_queries():
    r = jnp.arange(12.0).reshape(4, 3)
    scores = jax.vmap(lambda x: preference.partial_return(x))(r)
    # row sums: 0+1+2, 3+4+5, …
    np.testing.assert_allclose(np.asarray(scores), [3.0, 12.0, 21.0, 30.0])


def test_rank_errors_are_raised():
    with pytest.raises(AssertionError):
        preference.partial_return(jnp.ones((2, 3)))
    with pytest.raises(AssertionError):
        preference.regret_score_from_values(jnp.ones(3), jnp.ones(2), jnp.asarray(0.0))
