"""The regret-model reward with a snapshot library (prefrl.learners.reward_sf): known answers."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prefrl.learners import reward_model as rm
from prefrl.learners import reward_sf
from prefrl.learners.reward_potential import state_inputs

OBS, ACT, K = 3, 1, 5


def _model(library_size: int = 2, discount: float = 0.5, **kw):
    config = rm.RewardModelConfig(hidden=(8,), ensemble_size=2, library_size=library_size,
                                  discount=discount, **kw)
    model = rm.model(config)
    x = jnp.zeros((1, OBS + ACT))
    params = jax.vmap(model.network.init, (0, None))(jax.random.split(jax.random.key(0), 2), x)
    return config, model, params


def test_successor_targets_known_answer():
    # γ = ½, φ = 1, 2, 3 and ψ(s_k) = 8, by hand:
    # G_0 = 1 + ½·2 + ¼·3 + ⅛·8 = 3.75, G_1 = 2 + ½·3 + ¼·8 = 5.5, G_2 = 3 + ½·8 = 7.
    phi = jnp.asarray([[[1.0], [2.0], [3.0]]])
    full = reward_sf.successor_targets(phi, jnp.ones((1, 3)), jnp.asarray([[8.0]]), 0.5)
    np.testing.assert_allclose(full[0, :, 0], [3.75, 5.5, 7.0])
    # An episode end after step 1: step 2 is masked and nothing is bootstrapped.
    cut = reward_sf.successor_targets(phi, jnp.asarray([[1.0, 1.0, 0.0]]), jnp.asarray([[8.0]]),
                                      0.5)
    np.testing.assert_allclose(cut[0, :, 0], [2.0, 2.0, 0.0])


def test_fit_successors_reaches_the_stationary_fixed_point():
    """A snapshot that stays in one state s_j with one action: ψ^j(s_j) = φ(s_j, a_j)/(1 − γ)."""
    config, model, params = _model()
    states = jnp.asarray([[0.5, -1.0, 2.0], [-0.3, 0.8, 0.1]])
    actions = jnp.asarray([[0.4], [-0.7]])
    size = 4
    library = reward_sf.Snapshot(
        obs=jnp.broadcast_to(states[:, None, None], (2, size, K, OBS)),
        action=jnp.broadcast_to(actions[:, None, None], (2, size, K, ACT)),
        mask=jnp.ones((2, size, K)), final_obs=jnp.broadcast_to(states[:, None], (2, size, OBS)))
    fitted, loss = jax.jit(lambda p: reward_sf.fit_successors(
        model.network, p, library, jax.random.key(1), discount=0.5, use_action=True, rounds=6,
        steps=300, batch_size=64, learning_rate=1e-2))(params)
    assert loss.shape == (2,)
    net = model.network
    for m in range(2):
        p = jax.tree.map(lambda x, m=m: x[m], fitted)
        before = jax.tree.map(lambda x, m=m: x[m], params)
        for j in range(2):
            x = jnp.concatenate([states[j], actions[j]])
            phi = net.apply(p, x, method=reward_sf.SFReward.features)
            psi = net.apply(p, state_inputs(states[j], ACT, True),
                            method=reward_sf.SFReward.successors)
            np.testing.assert_allclose(psi[j], phi / 0.5, rtol=2e-2, atol=2e-2)
        # Only ψ moved: φ, w and b are read, not trained.
        for part in ("body", "head"):
            jax.tree.map(np.testing.assert_array_equal, p["params"][part],
                         before["params"][part])


def test_gaps_are_the_gpi_regret_terms_and_pass_no_gradient_to_psi():
    config, model, params = _model(library_size=3, discount=0.9)
    rng = np.random.default_rng(0)
    obs = jnp.asarray(rng.normal(size=(4, K, OBS)), jnp.float32)
    final = jnp.asarray(rng.normal(size=(4, OBS)), jnp.float32)
    mask = jnp.ones((4, K)).at[3, -1].set(0.0)  # the last segment ends inside
    gaps = reward_sf.segment_gaps(config, model.network, params, obs, final, mask, ACT)
    net = model.network
    for m in range(2):
        p = jax.tree.map(lambda x, m=m: x[m], params)
        w = p["params"]["head"]["kernel"][:, 0]
        b = p["params"]["head"]["bias"][0]

        def v_star(s, p=p, w=w, b=b):
            psi = net.apply(p, state_inputs(s, ACT, True), method=reward_sf.SFReward.successors)
            return jnp.max(psi @ w, axis=-1) + b / (1 - 0.9)

        want = 0.9 ** K * mask[:, -1] * v_star(final) - v_star(obs[:, 0])
        np.testing.assert_allclose(gaps[m], want, rtol=1e-5, atol=1e-5)
    # Soft GPI (τ > 0) lies above the hard max, by at most τ log Π, at every state.
    soft_config = dataclasses.replace(config, library_temperature=0.5)
    value = lambda c: jax.vmap(lambda p: model.network.apply(
        p, state_inputs(final, ACT, True), c.library_temperature, method=reward_sf.SFReward.gpi))(
            params)
    hard, soft = value(config), value(soft_config)
    assert np.all(soft >= hard - 1e-5) and np.all(soft <= hard + 0.5 * np.log(3) + 1e-5)
    # ψ is a constant of the preference fit; w and b get gradient through V̂*.
    grads = jax.grad(lambda p: jnp.sum(reward_sf.segment_gaps(
        config, model.network, p, obs, final, mask, ACT)))(params)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0
               for g in jax.tree.leaves(grads["params"]["successor"]))
    assert float(jnp.max(jnp.abs(grads["params"]["head"]["kernel"]))) > 0


def test_pair_logits_add_the_gaps_and_bad_input_is_refused():
    config, model, params = _model(library_size=2, discount=0.9)
    rng = np.random.default_rng(1)
    arr = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
    from prefrl.types import PairBatch

    batch = PairBatch(arr(3, K, OBS), arr(3, K, ACT), jnp.ones((3, K)), arr(3, K, OBS),
                      arr(3, K, ACT), jnp.ones((3, K)), jnp.asarray([1.0, 0.0, 0.5]),
                      final_obs_1=arr(3, OBS), final_obs_2=arr(3, OBS))
    logits = rm.pair_logits(config, model.network, params, batch)
    obs = jnp.concatenate([batch.obs_1, batch.obs_2])
    act = jnp.concatenate([batch.action_1, batch.action_2])
    r = jax.vmap(lambda p: model.network.apply(p, jnp.concatenate([obs, act], -1))[..., 0])(
        params)
    ret = jnp.sum(r * (0.9 ** jnp.arange(K))[None, None, :], -1)
    gaps = reward_sf.segment_gaps(config, model.network, params, obs,
                                  jnp.concatenate([batch.final_obs_1, batch.final_obs_2]),
                                  jnp.ones((6, K)), ACT)
    score = ret + gaps
    np.testing.assert_allclose(logits, score[:, :3] - score[:, 3:], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="final state"):
        rm.pair_logits(config, model.network, params, batch._replace(final_obs_1=None,
                                                                     final_obs_2=None))
    with pytest.raises(ValueError, match="library_size must be >= 0"):
        rm.RewardModelConfig(library_size=-1)
    with pytest.raises(ValueError, match="needs discount < 1"):
        rm.model(rm.RewardModelConfig(library_size=2))  # γ = 1: ψ would be infinite
    with pytest.raises(ValueError, match="two value terms"):
        rm.RewardModelConfig(library_size=2, discount=0.9, potential=True)
    with pytest.raises(ValueError, match="library_temperature"):
        rm.RewardModelConfig(library_size=2, discount=0.9, library_temperature=-1.0)
