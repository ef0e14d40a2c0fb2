"""Â used greedily (Knox et al. 2023): AWR on the data's actions moves the policy to argmax Â."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prefrl.learners import advantage_policy as ap


def test_awr_weights_known_answer_and_shift_invariance():
    adv = jnp.array([0.0, 1.0, 2.0, jnp.nan])
    mask = jnp.array([1.0, 1.0, 1.0, 0.0])
    w = ap.awr_weights(adv, mask, beta=1.0, max_weight=20.0)
    # ω = exp(Â − 2) = e^-2, e^-1, 1 (max step 1); mean over the 3 unmasked steps
    # (e^-2 + e^-1 + 1)/3; ω̃ = ω / mean. The masked step (Â = NaN) gets 0.
    omega = np.exp([-2.0, -1.0, 0.0])
    np.testing.assert_allclose(np.asarray(w), [*(omega / omega.mean()), 0.0], rtol=1e-6)
    # Â is known up to a constant (A* + c): the same weights for Â + c.
    w_shift = ap.awr_weights(adv + 37.0, mask, beta=1.0, max_weight=20.0)
    np.testing.assert_allclose(np.asarray(w_shift), np.asarray(w), rtol=1e-5)
    # Clipping at ω_max × the mean weight; no inf/NaN for huge Â or an all-masked batch.
    w_clip = ap.awr_weights(jnp.array([0.0, 0.0, 0.0, 1e4]), jnp.ones(4), beta=0.1,
                            max_weight=2.0)
    # ω = 0, 0, 0, 1 → mean ¼ → ω/mean = 0, 0, 0, 4 → clipped to 2.
    np.testing.assert_allclose(np.asarray(w_clip), [0.0, 0.0, 0.0, 2.0], atol=1e-6)
    none = ap.awr_weights(jnp.ones(3), jnp.zeros(3), beta=1.0, max_weight=20.0)
    np.testing.assert_array_equal(np.asarray(none), [0.0, 0.0, 0.0])


def _bandit(seed: int, num: int = 256):
    """1-D contextual bandit on the box: s ~ U(−1, 1), data actions ~ U(−0.95, 0.95).

    Â(s, a) = −(a − a*(s))² + c with a*(s) = 0.5 s (c arbitrary: Knox 2023's A* + c).
    """
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (num, 1)).astype(np.float32)
    action = rng.uniform(-0.95, 0.95, (num, 1)).astype(np.float32)
    return obs, action


def a_hat(obs: jax.Array, action: jax.Array) -> jax.Array:
    return 3.0 - 4.0 * (action[..., 0] - 0.5 * obs[..., 0]) ** 2


def test_awr_policy_mode_moves_to_argmax_of_a_hat():
    obs, action = _bandit(0, 512)
    batch = ap.AdvantageBatch(obs, action, np.ones(obs.shape[0], np.float32))
    cfg = ap.AdvantagePolicyConfig(beta=0.05, learning_rate=3e-3)
    network = ap.default_network(1, (32, 32))
    learner = ap.make(cfg, network, a_hat=a_hat)

    @jax.jit
    def train(key, batch):
        state = learner.init(key, batch)
        state, metrics = jax.lax.scan(lambda s, _: learner.update(s, batch), state, None,
                                      length=400)
        return state, metrics

    state, metrics = train(jax.random.key(0), batch)
    test_obs = jnp.linspace(-0.8, 0.8, 9)[:, None]
    greedy = ap.greedy_action(network, state.params, test_obs)[:, 0]
    # argmax_a Â(s, a) = 0.5 s; data actions are uniform, so BC alone would give ≈ 0.
    np.testing.assert_allclose(np.asarray(greedy), 0.5 * np.asarray(test_obs[:, 0]), atol=0.08)
    assert float(metrics["loss"][-1]) < float(metrics["loss"][0])
    assert float(metrics["clipped_fraction"][-1]) == 0.0


def test_bad_input():
    obs, action = _bandit(2, 8)
    batch = ap.AdvantageBatch(obs, action, np.ones(8, np.float32))
    network = ap.default_network(1, (4,))
    key = jax.random.key(0)
    learner = ap.make(ap.AdvantagePolicyConfig(), network)
    state = jax.eval_shape(learner.init, key, batch)
    with pytest.raises(ValueError, match="no advantage"):
        jax.eval_shape(learner.update, state, batch)
    with pytest.raises(ValueError, match="leading shape"):
        jax.eval_shape(learner.update, state, batch._replace(advantage=np.zeros(7)))
    with pytest.raises(ValueError, match="action size mismatch"):
        jax.eval_shape(ap.make(ap.AdvantagePolicyConfig(), ap.default_network(2, (4,))).init,
                       key, batch)
    with pytest.raises(ValueError, match="beta"):
        ap.AdvantagePolicyConfig(beta=0.0)
