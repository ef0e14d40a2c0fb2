"""Learners matched to regret labels, online (issue #24): advantage_greedy, cpl, the MC oracle.

Tiny sizes: the point mass of ``tests/ppo_toy.py`` for the policy learners, a few
half-cheetah steps with a stand-in expert for the Monte-Carlo labeller.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ppo_toy import PointMassBatchedEnv

from prefrl import oracles
from prefrl.data.buffers import make_ring_buffer
from prefrl.learners import advantage_greedy as ag
from prefrl.learners import ppo
from prefrl.loops import online
from prefrl.loops.online import core as core_lib
from prefrl.loops.online import cpl as online_cpl
from prefrl.loops.online import registry
from prefrl.networks import GaussianPolicy

POINT = online.OnlineConfig(
    task="run", total_steps=8 * 10 * 4, num_envs=8, rollout_steps=10, label_budget=24,
    refit_every=2, segment_length=5, segment_stride=5, pool_capacity=48, initial_fit_steps=20,
    heldout_queries=8, eval_every=0, eval_episodes=2, progress=False, oversample=3)
POINT_PPO = ppo.PPOConfig(num_minibatches=2, num_epochs=2, policy_hidden=(16,),
                          value_hidden=(16,))
POINT_REWARD = online.default_reward_config(hidden=(16,), ensemble_size=2, num_steps=10,
                                            eval_every=10, batch_size=16, chunk_pairs=16)
GREEDY = ag.AdvantageGreedyConfig(hidden=(16,), batch_size=32, steps=4, replay_rollouts=2)
CPL = online_cpl.OnlineCPLConfig(hidden=(16,), batch_size=8, steps=4, alpha=0.5)
SAMPLED = oracles.OracleConfig(temperature=1.0, temperature_mode="relative")


def _point_train(config, oracle=None, **kwargs):
    fits = registry.reward_learner(config.reward_learner).fits
    return online.train(config, POINT_PPO, POINT_REWARD if fits else None, oracle,
                        env_factory=lambda n, s: PointMassBatchedEnv(n, s), **kwargs)


# --------------------------------------------------------------------------- Â greedy

def test_greedy_actor_step_known_answer():
    """Â(s, a) = −(a − ½)², s = 0, data actions ±½, SGD(η), α = 1; the mean head's bias b = 0.

    λ = α / std(Â(s, a_data)) = 1 / std{−1, 0} = 2. Â at the mode tanh(b):
    dÂ/db = −2(tanh b − ½)(1 − tanh² b) = 1 at b = 0, so the actor term's gradient
    is −λ·1 = −2. BC: d(−log π(a|s))/db = −(atanh a − b)/σ² averages to 0 over ±½.
    One SGD step: b ← 0 − η·(−2) = 2η.
    """
    eta = 0.1
    network = GaussianPolicy(action_dim=1, hidden=())  # mean = W s + b, s = 0
    a_hat = lambda p, obs, act: -((act[..., 0] - 0.5) ** 2)[None]  # noqa: E731  [1, N]
    learner = ag.make(ag.AdvantageGreedyConfig(alpha=1.0), network, optax.sgd(eta), a_hat=a_hat)
    batch = ag.StepBatch(jnp.zeros((2, 3)), jnp.asarray([[0.5], [-0.5]]), jnp.ones(2))
    state = learner.init(jax.random.key(0), batch)
    state, metrics = jax.jit(learner.update)(state, batch)
    np.testing.assert_allclose(state.params["params"]["Dense_0"]["bias"], [2 * eta], rtol=1e-4)
    np.testing.assert_allclose(metrics["lambda"], 2.0, rtol=1e-4)
    # The greedy action moved towards argmax_a Â = ½; the data's mean action is 0.
    assert 0 < float(jnp.tanh(state.params["params"]["Dense_0"]["bias"][0])) < 0.5


def test_pessimism_climbs_the_lower_bound():
    # Two members agree at a = 0 and disagree elsewhere: mean − κ·std peaks at 0 for κ = 2.
    members = jnp.stack([jnp.linspace(-1, 1, 5), -jnp.linspace(-1, 1, 5)])[:, None, :]
    np.testing.assert_allclose(ag.pessimistic(members[:, 0], 0.0), jnp.zeros(5), atol=1e-7)
    lower = ag.pessimistic(members[:, 0], 2.0)
    assert int(jnp.argmax(lower)) == 2 and float(lower[2]) == 0.0


# --------------------------------------------------------------------------- CPL online

def _one_label_buffer(preferred_first: float, k: int = 3):
    """A label buffer holding one hand-made query: σ¹ takes a = +½, σ² a = −½, at s = 0."""
    seg = lambda a: (jnp.zeros((1, k, 2)), jnp.full((1, k, 1), a), jnp.ones((1, k)))  # noqa: E731
    o1, a1, m1 = seg(0.5)
    o2, a2, m2 = seg(-0.5)
    z = jnp.zeros((1,))
    item = core_lib.LabelItem(obs_1=o1, action_1=a1, mask_1=m1, obs_2=o2, action_2=a2,
                              mask_2=m2, final_obs_1=jnp.zeros((1, 2)),
                              final_obs_2=jnp.zeros((1, 2)), label=z + preferred_first,
                              keep=z + 1, split=z, round=z.astype(jnp.int32),
                              index_1=z.astype(jnp.int32), index_2=z.astype(jnp.int32))
    buffer = make_ring_buffer(4)
    labels = buffer.init(jax.tree.map(lambda x: x[0], item))
    labels, _ = buffer.add(labels, item)
    return labels


@pytest.mark.parametrize("label, sign", [(1.0, 1.0), (0.0, -1.0)])
def test_cpl_update_on_a_hand_made_pair(label, sign):
    """s = 0, so only the output biases move. The two segments are mirror images (a = ±½):
    their Gaussian densities and tanh Jacobians are equal, S_1 = S_2, and the BT gradient on
    the mean bias b is −(μ − ½)·α·Σ_t (atanh(½) − atanh(−½))/σ² — towards the preferred
    action. The log-σ gradient, (u − b)²/σ² − 1, is equal on both sides and cancels. Adam's
    first step is −lr·sign(g) per parameter: b = sign · lr, log σ unchanged."""
    config = dataclasses.replace(CPL, hidden=(), steps=1, bias=1.0, learning_rate=1e-2)
    run = dataclasses.replace(POINT, segment_length=3, segment_stride=3,
                              policy_learner="cpl", reward_learner="none")
    learner = online_cpl.make(config=run, obs_dim=2, act_dim=1, policy_config=config)
    state = learner.set_labels(learner.init(jax.random.key(0)), _one_label_buffer(label))
    traj = jax.tree.map(jnp.asarray, PointMassBatchedEnv(2, 0).rollout(
        lambda o, k: np.zeros((2, 1)), 3, jax.random.key(1)))
    before = state.learner.params["params"]
    state, metrics = jax.jit(learner.update)(state, traj)
    after = state.learner.params["params"]
    np.testing.assert_allclose(after["Dense_0"]["bias"], [sign * 1e-2], rtol=1e-3)
    np.testing.assert_allclose(after["Dense_1"]["bias"], before["Dense_1"]["bias"], atol=1e-7)
    np.testing.assert_allclose(metrics["cpl_pref_loss"], np.log(2.0), rtol=1e-5)  # S_1 = S_2


def test_cpl_samples_only_kept_training_labels():
    labels = _one_label_buffer(1.0)
    assert float(online_cpl.training_weights(labels).sum()) == 1.0
    held = labels.replace(data=labels.data.replace(split=labels.data.split + 1))
    batch = online_cpl.sample_pairs(held, jax.random.key(0), 5)
    assert float(batch.weight.sum()) == 0.0  # nothing to train on: every weight 0


# --------------------------------------------------------------------------- CPU rounds

def test_advantage_greedy_runs_online_rounds_with_the_fitted_advantage():
    seen = []
    config = dataclasses.replace(POINT, policy_learner="advantage_greedy",
                                 reward_learner="advantage")
    result = _point_train(config, callback=lambda s, r: seen.append(s),
                          policy_config=GREEDY)
    assert result["labels_used"] == 24 and len(seen) == 2
    assert result["reward_model"].config.discount == 1.0  # the oracle's γ (partial return)
    for state in seen:  # after each round the actor climbs that round's Â
        jax.tree.map(np.testing.assert_array_equal,
                     state.policy.actor.advantage_params.params, state.reward.params)
    final = result["state"].policy
    assert int(final.actor.step) == 4 * GREEDY.steps
    assert int(final.replay.count) == min(2, 4) * 8 * 10
    assert all(np.isfinite(r["fit_train_loss"]) and np.isfinite(r["proxy_reward"])
               for r in result["rounds"])
    assert np.isfinite(result["final"]["mean_return"])


def test_cpl_runs_online_rounds_without_a_reward_model(tmp_path):
    config = dataclasses.replace(POINT, policy_learner="cpl", reward_learner="none")
    seen = []
    result = _point_train(config, SAMPLED, policy_config=CPL,
                          callback=lambda s, r: seen.append((s, r)))
    assert result["labels_used"] == 24
    for state, record in seen:
        # The loop's label buffer, handed over after the round.
        jax.tree.map(np.testing.assert_array_equal, state.policy.labels, state.labels)
        assert "fit_train_loss" not in record  # no reward model was fitted
        assert 0.0 <= record["heldout_acc_partial_return"] <= 1.0  # under Σ α log π
    final = result["state"].policy
    assert int(final.learner.step) == 4 * CPL.steps
    init = online_cpl.make(config=config, obs_dim=2, act_dim=1, policy_config=CPL).init(
        jax.random.split(jax.random.key(0), 5)[0])
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), final.learner.params,
                         init.learner.params)
    assert max(jax.tree.leaves(moved)) > 0
    # Checkpoint and resume bit for bit (the label buffer is restored through set_labels).
    files = dataclasses.replace(config, out_dir=str(tmp_path), checkpoint_every=1)
    _point_train(files, SAMPLED, policy_config=CPL, stop_after_updates=3)
    resumed = _point_train(files, SAMPLED, policy_config=CPL)
    jax.tree.map(np.testing.assert_array_equal, resumed["state"].policy.learner.params,
                 final.learner.params)


@pytest.mark.parametrize("changes, oracle, message", [
    (dict(policy_learner="cpl"), SAMPLED, "reward_learner in \\['none'\\]"),
    (dict(policy_learner="advantage_greedy"), None, "reward_learner in \\['advantage'\\]"),
    (dict(reward_learner="none"), None, "fits none"),
    (dict(policy_learner="cpl", reward_learner="none", selection="disagreement"), SAMPLED,
     "selection"),
    (dict(policy_learner="cpl", reward_learner="none"), None, "stochastic labels"),
    (dict(oracle_value="mc"), None, "needs the expert checkpoint"),
    (dict(oracle_value="mc", expert="x.npz", mc_rollouts=0), None, "mc_rollouts"),
    (dict(oracle_value="mc", expert="x.npz", mc_horizon=0), None, "mc_horizon"),
])
def test_bad_pairings_are_refused_before_anything_is_written(changes, oracle, message, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        _point_train(dataclasses.replace(POINT, out_dir=str(out), **changes), oracle)
    assert not out.exists()


def test_cli_refuses_reward_options_for_cpl(tmp_path):
    from prefrl import cli
    from prefrl.config import ConfigError

    out = tmp_path / "run"

    def run(*argv):
        args = cli.build_parser().parse_args(["train", "online", *argv, "--out-dir", str(out)])
        return args.func(args)

    with pytest.raises(ConfigError, match="--reward-hidden"):
        run("--policy-learner", "cpl", "--reward-learner", "none", "--reward-hidden", "8")
    with pytest.raises(ConfigError, match="--cpl-"):
        run("--cpl-alpha", "0.3")
    assert not out.exists()


def test_registry_lists_the_regret_learners():
    assert {"advantage_greedy", "cpl"} <= set(registry.POLICY_LEARNERS)
    assert not registry.REWARD_LEARNERS["none"].fits
    config = dataclasses.replace(POINT, policy_learner="cpl", reward_learner="none")
    with pytest.raises(ValueError, match="pass no reward_config"):  # CPL given reward options
        online.train(config, POINT_PPO, POINT_REWARD, SAMPLED,
                     env_factory=lambda n, s: PointMassBatchedEnv(n, s))


# --------------------------------------------------------------------------- MC oracle online

class _Deterministic:
    """A stand-in expert policy that ignores its noise: a = 0.5 tanh(obs[:, :6])."""

    @staticmethod
    def act_with_noise(obs, noise):
        del noise
        return 0.5 * np.tanh(np.asarray(obs, np.float64)[:, :6])


def test_mc_labeller_labels_online_rounds_and_counts_its_env_steps():
    from prefrl.envs import make_task

    from prefrl import oracles_mc as omc
    from prefrl.loops.online.mc import mc_labeller

    gamma = 0.99
    expert = omc.MCExpert(_Deterministic(), lambda obs: np.full(len(obs), 10.0), gamma,
                          make_task("run"))
    config = online.OnlineConfig(
        task="run", total_steps=2 * 8 * 2, num_envs=2, rollout_steps=8, segment_length=4,
        segment_stride=4, pool_capacity=8, refit_every=1, label_budget=4, schedule="constant",
        initial_fraction=0.5, initial_fit_steps=5, heldout_queries=4, eval_every=0,
        eval_episodes=1, progress=False, oversample=1, oracle_value="mc", expert="stand-in",
        mc_rollouts=1, mc_horizon=3, mc_heldout_queries=2, mc_heldout_every=1, num_threads=1)
    oracle = oracles.OracleConfig(model="regret", discount=gamma)
    labeller = mc_labeller(config, oracle, make_task("run"), expert=expert, num_threads=1)
    seen = []
    tiny_ppo = ppo.PPOConfig(num_epochs=1, num_minibatches=1, policy_hidden=(8,),
                             value_hidden=(8,))
    try:
        result = online.train(config, tiny_ppo, POINT_REWARD, labeller=labeller,
                              callback=lambda s, r: seen.append((s, r)))
    finally:
        labeller.close()
    assert result["labels_used"] == 4
    mc = omc.MCConfig(expert="stand-in", rollouts=1, horizon=3)
    for r, (state, record) in enumerate(seen):
        # The buffer's labels of round r are the MC oracle's on the same pool and key.
        data = jax.tree.map(np.asarray, state.labels.data)
        rows = np.flatnonzero(data.round == r)[: int(result["schedule"][r])]
        pool = jax.tree.map(np.asarray, state.pool.data)
        key = jax.random.split(jax.random.fold_in(state.key, r), 4)[1]
        want, info = omc.label_queries_mc(oracle, mc, expert, key, pool, data.index_1[rows],
                                          data.index_2[rows], env=omc.EnvCache("run", 16, 3))
        np.testing.assert_array_equal(data.label[rows], np.asarray(want.label))
        # Its env steps are logged: M·H per distinct endpoint plus the stepped s_k.
        assert record["oracle_env_steps"] == info["env_steps"] > 0
        assert record["oracle_heldout_env_steps"] > 0
        assert "heldout_acc_regret_mc" in record and "heldout_acc_regret" in record
