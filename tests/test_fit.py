"""The reward-model fit loop (prefrl.loops.fit): determinism, learning, vmap, divergence."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reward_fits
from reward_fits import FIT, FIT_CFG, FIT_MODEL, TINY_CFG, synth

from prefrl import evaluation
from prefrl.learners import reward_model as rm
from prefrl.loops import fit as reward_fit


def chex_close(a, b, rtol=1e-5, atol=1e-6):
    chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


def test_same_key_identical_parameters_and_different_key_differs():
    _, train, test = synth()
    fitted = reward_fits.fitted()
    again = FIT(jax.random.key(0), train, test)
    jax.tree.map(np.testing.assert_array_equal, fitted.state.params, again.state.params)
    other = FIT(jax.random.key(1), train, test)
    assert not np.array_equal(fitted.state.params["params"]["Dense_0"]["kernel"],
                              other.state.params["params"]["Dense_0"]["kernel"])


def test_learns_true_reward_from_2000_labels():
    data, train, test = synth()
    fitted = reward_fits.fitted()
    reward_fit.check_finite(fitted.metrics)
    state = fitted.state
    on = np.asarray(data.mask) > 0
    learned = rm.reward_fn(FIT_MODEL, state)(jnp.asarray(data.obs), jnp.asarray(data.action))
    rho = evaluation.pearson(np.asarray(learned)[on], data.reward[on])
    assert rho > 0.95, rho
    # Output normalisation: r̂ has mean 0, std 1 over the training steps.
    train_vals = np.asarray(rm.reward_fn(FIT_MODEL, state)(
        jnp.concatenate([train.obs_1, train.obs_2]), jnp.concatenate([train.action_1,
                                                                       train.action_2])))
    np.testing.assert_allclose([train_vals.mean(), train_vals.std()], [0.0, 1.0], atol=1e-3)
    # Early stopping kept each member's best validation loss.
    best = np.asarray(fitted.metrics["valid_loss"]).min(axis=0)
    np.testing.assert_allclose(rm.evaluate(FIT_MODEL, state, test)["loss"], best, rtol=1e-4)
    assert np.all(np.asarray(fitted.metrics["best_step"]) % FIT_CFG.eval_every == 0)


def _tiny_fit(key, train, learning_rate):
    # SGD, not Adam: Adam turns float-rounding differences in near-zero
    # gradients into full-size steps, so batched and single runs would drift.
    return reward_fit.fit(key, TINY_CFG, train, optimizer=optax.sgd(learning_rate))


_TINY_FIT = jax.jit(_tiny_fit)


@pytest.mark.slow
def test_fit_vmaps_over_seeds():
    _, train, _ = synth()
    keys = jax.random.split(jax.random.key(0), 4)
    many = jax.jit(jax.vmap(_tiny_fit, in_axes=(0, None, None)))(keys, train, 1e-2)
    one = _TINY_FIT(keys[2], train, 1e-2)
    chex_close(jax.tree.map(lambda x: x[2], many.state.params), one.state.params,
               rtol=1e-4, atol=1e-5)
    assert many.metrics["train_loss"].shape == (4, 10, 3)


def test_nan_run_names_step_and_metric():
    _, train, _ = synth()
    result = jax.jit(lambda k: reward_fit.fit(k, TINY_CFG, train, optimizer=optax.sgd(1e30)))(
        jax.random.key(0))
    with pytest.raises(reward_fit.NonFiniteError,
                       match=r"metric '.*' became non-finite at step \d+"):
        reward_fit.check_finite(result.metrics)
    # The skipped updates left finite parameters behind (nothing NaN to save by accident).
    assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(result.state.params))


