"""Scripted teachers: each irrationality's known behaviour, determinism, jit vs no jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from prefrl import oracles
from prefrl.oracles import OracleConfig
from prefrl.types import Segments

N = 20_000


def random_scores(seed=0, n=N):
    rng = np.random.default_rng(seed)
    s1, s2 = rng.normal(size=(2, n))
    return jnp.asarray(s1, jnp.float32), jnp.asarray(s2, jnp.float32)


def run(cfg, key, s1, s2, p1=None, p2=None, jit=True):
    fn = oracles.label_scores if jit else oracles.label_scores.__wrapped__
    return fn(cfg, key, s1, s2, p1, p2)


@pytest.mark.parametrize("jit", [True, False])
def test_rational_labels(jit):
    s1 = jnp.array([1.0, 2.0, 3.0])
    s2 = jnp.array([1.0, 1.0, 4.0])
    out = run(OracleConfig(), jax.random.key(0), s1, s2, jit=jit)
    # equal → ½; 2 > 1 → 1 (first); 3 < 4 → 0 (second)
    np.testing.assert_array_equal(np.asarray(out.label), [0.5, 1.0, 0.0])
    assert bool(jnp.all(out.keep))


@pytest.mark.parametrize("jit", [True, False])
def test_mistake_one_half_makes_labels_independent_of_scores(jit):
    s1, s2 = random_scores()
    cfg = OracleConfig(mistake_prob=0.5)
    label = np.asarray(run(cfg, jax.random.key(1), s1, s2, jit=jit).label)
    better = np.asarray(s1 > s2)
    # 2×2 table (first better?) × (label = 1?): independence must not be rejected.
    table = np.array(
        [[np.sum(better & (label == 1)), np.sum(better & (label == 0))],
         [np.sum(~better & (label == 1)), np.sum(~better & (label == 0))]]
    )
    _, p_value, _, _ = stats.chi2_contingency(table)
    assert p_value > 1e-3
    # Agreement with the rational label ≈ ½ (std of the mean ≈ 0.0035 at N = 20 000).
    assert abs(np.mean(label == better) - 0.5) < 0.02


def test_mistake_zero_and_small_epsilon():
    s1, s2 = random_scores()
    better = np.asarray(s1 > s2)
    exact = np.asarray(run(OracleConfig(), jax.random.key(1), s1, s2).label)
    assert np.all((exact == 1) == better)
    # ε = 0.1: about 10 % of labels disagree with the rational one.
    noisy = np.asarray(run(OracleConfig(mistake_prob=0.1), jax.random.key(1), s1, s2).label)
    assert abs(np.mean(noisy != exact) - 0.1) < 0.01


def test_beta_to_zero_is_deterministic():
    s1, s2 = random_scores()
    s2 = jnp.where(jnp.abs(s1 - s2) < 1e-2, s2 + 0.1, s2)  # keep differences well above β
    exact = np.asarray(run(OracleConfig(), jax.random.key(0), s1, s2).label)
    for seed in range(3):
        tiny = OracleConfig(temperature=1e-6)
        out = np.asarray(run(tiny, jax.random.key(seed), s1, s2).label)
        # sigmoid(≥ 0.01 / 1e-6) = 1 to float precision: the Bernoulli draw is certain.
        np.testing.assert_array_equal(out, exact)


def test_stochastic_matches_bradley_terry_probability():
    n = N
    s1, s2 = jnp.ones(n), jnp.zeros(n)
    out = run(OracleConfig(temperature=1.0), jax.random.key(3), s1, s2)
    # P(first) = sigmoid((1 − 0)/1) = 0.7311; std of the mean ≈ 0.0031
    assert float(jnp.mean(out.label)) == pytest.approx(1 / (1 + np.exp(-1.0)), abs=0.015)
    # β = 2 halves the logit: sigmoid(0.5) = 0.6225
    out2 = run(OracleConfig(temperature=2.0), jax.random.key(3), s1, s2)
    assert float(jnp.mean(out2.label)) == pytest.approx(1 / (1 + np.exp(-0.5)), abs=0.015)


def test_relative_temperature_is_scale_invariant():
    s1, s2 = random_scores(seed=4)
    rel = OracleConfig(temperature=0.5, temperature_mode="relative")
    a = run(rel, jax.random.key(5), s1, s2).label
    b = run(rel, jax.random.key(5), 100.0 * s1, 100.0 * s2).label
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Absolute β does not share this: scores ×100 make labels near-deterministic.
    absolute = OracleConfig(temperature=0.5)
    c = run(absolute, jax.random.key(5), s1, s2).label
    d = run(absolute, jax.random.key(5), 100.0 * s1, 100.0 * s2).label
    assert np.mean(np.asarray(c) != np.asarray(d)) > 0.05
    rational = (np.asarray(s1) > np.asarray(s2)).astype(np.float32)
    assert np.mean(np.asarray(d) == rational) > 0.99


def test_effective_temperature_relative_is_beta_times_std():
    scores = jnp.array([[0.0, 2.0], [4.0, 6.0]])
    cfg = OracleConfig(temperature=0.5, temperature_mode="relative")
    # scores 0, 2, 4, 6: mean 3, population std sqrt((9+1+1+9)/4) = sqrt(5); β·std = 0.5·2.236
    assert float(oracles.effective_temperature(cfg, scores)) == pytest.approx(0.5 * np.sqrt(5))


def test_equal_threshold_produces_ties():
    s1 = jnp.array([0.0, 0.0, 0.0, 0.0])
    s2 = jnp.array([0.05, -0.09, 0.2, -1.0])
    cfg = OracleConfig(equal_threshold=0.1, mistake_prob=0.3, temperature=1.0)
    out = run(cfg, jax.random.key(0), s1, s2)
    # |diff| = 0.05, 0.09 < 0.1 → tie even with noise; 0.2, 1.0 → a hard label.
    np.testing.assert_array_equal(np.asarray(out.label[:2]), [0.5, 0.5])
    assert set(np.asarray(out.label[2:]).tolist()) <= {0.0, 1.0}


def test_skip_returns_keep_mask():
    s1 = jnp.array([-2.0, -2.0, 3.0, 0.5])
    s2 = jnp.array([-3.0, 1.0, -5.0, 0.4])
    out = run(OracleConfig(skip_threshold=0.45), jax.random.key(0), s1, s2)
    # max(s1, s2) = −2, 1, 3, 0.5 → only the first is below 0.45 on both sides.
    np.testing.assert_array_equal(np.asarray(out.keep), [False, True, True, True])


def test_myopic_weights_the_end_of_the_segment():
    # Segment 1 earns 1 at its first step, segment 2 earns 0.5 at its last step.
    rewards = jnp.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.5]])
    segs = make_segments(rewards)
    first, second = jnp.array([0]), jnp.array([1])
    rational = oracles.label_queries(OracleConfig(), jax.random.key(0), segs, first, second)
    # Rational: 1 > 0.5 → first preferred.
    assert float(rational.label[0]) == 1.0
    myopic = oracles.label_queries(
        OracleConfig(myopic_discount=0.5), jax.random.key(0), segs, first, second
    )
    # Myopic, γ_m = ½, k = 4: 1·0.5³ = 0.125 < 0.5·0.5⁰ = 0.5 → second preferred.
    assert float(myopic.label[0]) == 0.0
    # The reported scores stay rational (they drive skip/equal).
    assert float(myopic.score_1[0]) == 1.0


def test_labels_are_deterministic_given_the_key_and_differ_across_keys():
    s1, s2 = random_scores(seed=7, n=2000)
    cfg = OracleConfig(temperature=1.0, mistake_prob=0.1)
    a = run(cfg, jax.random.key(9), s1, s2).label
    b = run(cfg, jax.random.key(9), s1, s2).label
    c = run(cfg, jax.random.key(10), s1, s2).label
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.any(np.asarray(a) != np.asarray(c))
    # A query's label does not depend on the batch it is labelled in.
    head = run(cfg, jax.random.key(9), s1[:100], s2[:100]).label
    np.testing.assert_array_equal(np.asarray(head), np.asarray(a[:100]))


def test_jit_and_nojit_agree_with_all_irrationalities():
    s1, s2 = random_scores(seed=11, n=64)
    cfg = OracleConfig(
        temperature=0.3, temperature_mode="relative", mistake_prob=0.1,
        equal_threshold=0.05, skip_threshold=-1.0,
    )
    a = run(cfg, jax.random.key(2), s1, s2, jit=True)
    b = run(cfg, jax.random.key(2), s1, s2, jit=False)
    np.testing.assert_array_equal(np.asarray(a.label), np.asarray(b.label))
    np.testing.assert_array_equal(np.asarray(a.keep), np.asarray(b.keep))


def make_segments(rewards, obs=None, mask=None):
    n, k = rewards.shape
    if obs is None:
        obs = jnp.zeros((n, k + 1, 1))
    return Segments(
        obs=obs[:, :-1],
        action=jnp.zeros((n, k, 1)),
        reward=rewards,
        next_obs=obs[:, 1:],
        mask=jnp.ones((n, k)) if mask is None else mask,
        x_velocity=jnp.zeros((n, k)),
        qpos=jnp.zeros((n, k, 0)),
        qvel=jnp.zeros((n, k, 0)),
        source=jnp.zeros((n, 2), jnp.int32),
    )


def test_regret_oracle_uses_endpoint_values_and_drops_bootstrap_after_termination():
    # obs holds V directly: value_fn(obs) = obs[..., 0].
    value_fn = lambda o: o[..., 0]
    rewards = jnp.array([[1.0, 1.0], [1.0, 1.0]])
    obs = jnp.array([[[2.0], [0.0], [4.0]], [[2.0], [0.0], [4.0]]])
    mask = jnp.array([[1.0, 1.0], [1.0, 0.0]])
    segs = make_segments(rewards, obs, mask)
    cfg = OracleConfig(model="regret", discount=0.5)
    rational, _ = oracles.pool_scores(cfg, segs, value_fn)
    # alive: 1 + 0.5 + 0.25·4 − 2 = 0.5; terminated after step 0: 1 − 2 = −1
    np.testing.assert_allclose(np.asarray(rational), [0.5, -1.0])
    # The myopic regret oracle with γ_m = 1 − ε approaches the same scores via per-step
    # advantages (checks that path agrees with the endpoint form).
    _, myopic = oracles.pool_scores(
        OracleConfig(model="regret", discount=0.5, myopic_discount=0.999999), segs, value_fn
    )
    np.testing.assert_allclose(np.asarray(myopic), [0.5, -1.0], atol=1e-4)


def test_regret_oracle_needs_value_fn():
    segs = make_segments(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="value function"):
        oracles.label_queries(
            OracleConfig(model="regret"), jax.random.key(0), segs, jnp.array([0]), jnp.array([1])
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"model": "bogus"}, "model must be one of"),
        ({"discount": 0.0}, "discount"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature_mode": "scaled"}, "temperature_mode"),
        ({"mistake_prob": 1.5}, "mistake_prob"),
        ({"equal_threshold": -0.1}, "equal_threshold"),
        ({"myopic_discount": 0.0}, "myopic_discount"),
        ({"skip_threshold": float("nan")}, "skip_threshold"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OracleConfig(**kwargs)


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("myopic", [1.0, 0.8])
def test_pool_scores_terminal_flag_and_jit(jit, myopic):
    value_fn = lambda o: o[..., 0]
    rewards = jnp.array([[1.0, 1.0], [1.0, 1.0]])
    obs = jnp.array([[[2.0], [0.0], [4.0]], [[2.0], [0.0], [4.0]]])
    segs = make_segments(rewards, obs)
    cfg = OracleConfig(model="regret", discount=0.5, myopic_discount=myopic)
    fn = lambda s, t: oracles.pool_scores(cfg, s, value_fn, terminal_k=t)
    if jit:
        fn = jax.jit(fn)
    rational, _ = fn(segs, jnp.array([False, True]))
    # not terminal: 1 + 0.5 + 0.25·4 − 2 = 0.5; terminal at s_k: 1 + 0.5 − 2 = −0.5
    np.testing.assert_allclose(np.asarray(rational), [0.5, -0.5])
