"""r̂ with a learned potential Φ (prefrl.learners.reward_potential; reward learner ``potential``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppo_toy import PointMassBatchedEnv

from prefrl import evaluation
from prefrl.bench import _rows
from prefrl.data import pairs as pair_data
from prefrl.learners import ppo
from prefrl.learners import reward_model as rm
from prefrl.learners.reward_potential import PotentialReward
from prefrl.loops import fit as fit_loop
from prefrl.loops import online

GAMMA, K = 0.9, 4


def _batch(rng, n, k=K, obs_dim=3):
    obs = rng.normal(size=(2, n, k + 1, obs_dim)).astype(np.float32)  # s_0 … s_k per segment
    act = rng.uniform(-1, 1, size=(2, n, k, 1)).astype(np.float32)
    mask = np.ones((2, n, k), np.float32)
    batch = rm.PairBatch(obs[0, :, :k], act[0], mask[0], obs[1, :, :k], act[1], mask[1],
                         np.zeros(n, np.float32), final_obs_1=obs[0, :, k],
                         final_obs_2=obs[1, :, k])
    return batch, obs, act


def test_logits_are_the_discounted_sum_plus_the_potential_gap():
    """By hand from the member's two heads: Σ γ^t r̂ + m_{k−1} γ^k Φ(s_k) − Φ(s_0), over β."""
    cfg = rm.RewardModelConfig(hidden=(8,), ensemble_size=2, discount=GAMMA, potential=True,
                               temperature=2.0)
    batch, _, _ = _batch(np.random.default_rng(0), 5)
    batch = batch._replace(mask_2=jnp.asarray(batch.mask_2).at[0, -1].set(0.0))  # cut: no end term
    model = rm.model(cfg)
    assert isinstance(model.network, PotentialReward)
    state = rm.make(cfg).init(jax.random.key(0), batch)
    logits = rm.pair_logits(cfg, model.network, state.params, batch)
    firsts = []
    for m in range(2):
        p = jax.tree.map(lambda x, m=m: x[m], state.params)
        head = lambda x, method=None, p=p: model.network.apply(p, x, method=method)[..., 0]
        score = []
        for i in (1, 2):
            obs, act, mask = (np.asarray(getattr(batch, f"{f}_{i}")) for f in
                              ("obs", "action", "mask"))
            final = np.asarray(getattr(batch, f"final_obs_{i}"))
            r = head(np.concatenate([obs, act], -1))
            zero = np.zeros((*final.shape[:-1], 1), np.float32)
            phi_k = head(np.concatenate([final, zero], -1), PotentialReward.potential)
            phi_0 = head(np.concatenate([obs[:, 0], zero], -1), PotentialReward.potential)
            score.append((np.asarray(r) * mask * GAMMA ** np.arange(K)).sum(-1)
                         + mask[:, -1] * GAMMA ** K * np.asarray(phi_k) - np.asarray(phi_0))
        np.testing.assert_allclose(logits[m], (score[0] - score[1]) / 2.0, rtol=1e-5, atol=1e-5)
        firsts.append(score[0])
    # The learner's own segment score (held-out accuracy): the member means (mean 0, std 1).
    scores = rm.segment_scores(model, state, batch.obs_1, batch.action_1, batch.mask_1,
                               batch.final_obs_1)
    np.testing.assert_allclose(scores, np.mean(firsts, axis=0), rtol=1e-5, atol=1e-5)


def test_regret_labels_fit_the_reward_and_learn_the_value_as_the_potential():
    """Labels by Σγ^t r + γ^k V(s_k) − V(s_0) with V unknown: r̂ alone cannot explain V's part
    (tests/test_reward_model.py, the offset test); with Φ the fit recovers r and Φ ≈ V + c."""
    rng = np.random.default_rng(0)
    batch, obs, act = _batch(rng, 600)
    reward = obs[..., :K, 0]  # r(s, a) = s[0]
    value = 4.0 * obs[..., 1]  # V on another coordinate, dominating the labels
    score = (reward * GAMMA ** np.arange(K)).sum(-1) + GAMMA ** K * value[..., K] - value[..., 0]
    batch = batch._replace(label=(score[0] > score[1]).astype(np.float32))
    cfg = rm.RewardModelConfig(hidden=(16,), ensemble_size=1, discount=GAMMA, num_steps=400,
                               eval_every=400, batch_size=64, learning_rate=1e-2,
                               normalize=False, chunk_pairs=64, bootstrap=False, potential=True)
    state = jax.jit(lambda b: fit_loop.fit(jax.random.key(0), cfg, b))(batch).state
    probe_obs = rng.normal(size=(500, 3)).astype(np.float32)
    probe_act = rng.uniform(-1, 1, size=(500, 1)).astype(np.float32)
    model = rm.model(cfg)
    r_hat = np.asarray(rm.combined_output(model, state, probe_obs, probe_act))
    phi = model.network.apply(jax.tree.map(lambda x: x[0], state.params),
                              np.concatenate([probe_obs, 0 * probe_act], -1),
                              method=PotentialReward.potential)[..., 0]
    assert evaluation.pearson(r_hat, probe_obs[:, 0]) > 0.95
    assert evaluation.pearson(np.asarray(phi), probe_obs[:, 1]) > 0.95
    # The learned scores order the training pairs as the labels do.
    logits = rm.pair_logits(cfg, model.network, state.params, batch)[0]
    assert float(jnp.mean((logits > 0) == (batch.label > 0.5))) > 0.95


def test_a_potential_without_final_states_is_refused():
    cfg = rm.RewardModelConfig(hidden=(8,), ensemble_size=1, potential=True)
    batch, _, _ = _batch(np.random.default_rng(1), 4)
    learner = rm.make(cfg)
    state = learner.init(jax.random.key(0), batch)
    with pytest.raises(ValueError, match="final_obs_1/final_obs_2"):
        learner.update(state, batch._replace(final_obs_1=None, final_obs_2=None))
    with pytest.raises(ValueError, match="final_obs_2 must be"):
        pair_data.dims(batch._replace(final_obs_2=batch.final_obs_2[:, :2]))
    bad = batch._replace(label=jnp.asarray([0.0, 1.0, 1.0, 0.0]),
                         final_obs_1=jnp.asarray(batch.final_obs_1).at[0, 0].set(np.nan))
    with pytest.raises(ValueError, match="final_obs_1 contains NaN"):
        pair_data.validate(bad)


def test_potential_runs_online_rounds_and_is_a_row_of_the_bench():
    config = online.OnlineConfig(
        task="run", total_steps=8 * 10 * 4, num_envs=8, rollout_steps=10, label_budget=24,
        refit_every=2, segment_length=5, segment_stride=5, pool_capacity=48,
        initial_fit_steps=20, heldout_queries=8, eval_every=0, eval_episodes=2, progress=False,
        oversample=3, reward_learner="potential", selection="disagreement")
    reward = online.default_reward_config(hidden=(16,), ensemble_size=2, num_steps=10,
                                          eval_every=10, batch_size=16, chunk_pairs=16)
    result = online.train(config, ppo.PPOConfig(num_minibatches=2, num_epochs=2,
                                                policy_hidden=(16,), value_hidden=(16,)),
                          reward, None, env_factory=lambda n, s: PointMassBatchedEnv(n, s))
    assert result["labels_used"] == 24
    assert result["reward_model"].config.potential
    assert result["reward_model"].config.discount == 1.0  # the oracle's γ (partial return)
    assert "phi" in result["state"].reward.params["params"]
    for record in result["rounds"]:
        assert np.isfinite(record["fit_train_loss"])
        assert 0.0 <= record["heldout_acc_partial_return"] <= 1.0
    row = _rows.parse_row("online-regret-mc-rphi-1000")
    assert row["config"]["reward_learner"] == "potential"
    assert row["config"]["policy_learner"] == "ppo"
