"""PEBBLE (prefrl.learners.pebble, policy learner ``pebble`` of the online core; issue #25).

Known answers for the state-entropy reward, the three phases of the learner
(warm-up, unsupervised pre-training, preference phase with one critic reset),
an online run on the point mass that resumes bit for bit, and the refusals.
"""

from __future__ import annotations

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppo_toy import PointMassBatchedEnv

from prefrl.learners import pebble, sac
from prefrl.loops import online
from prefrl.loops.online import registry


def _transitions(n: int, seed: int, obs_dim: int = 3, act_dim: int = 2) -> sac.Transition:
    ks = jax.random.split(jax.random.key(seed), 4)
    return sac.Transition(jax.random.normal(ks[0], (n, obs_dim)),
                          jax.random.uniform(ks[1], (n, act_dim), minval=-1, maxval=1),
                          jax.random.normal(ks[2], (n,)), jax.random.normal(ks[3], (n, obs_dim)),
                          jnp.zeros((n,), bool))


# --------------------------------------------------------------------------- the entropy reward

def test_knn_distance_known_answer_skips_the_state_itself():
    line = jnp.asarray([[0.0], [1.0], [3.0], [7.0]])
    everything = jnp.ones(4, bool)
    # Nearest other point: 1, 1, 2, 4; second nearest: 3, 2, 3, 6.
    np.testing.assert_allclose(pebble.knn_distance(line, line, everything, 1), [1, 1, 2, 4])
    np.testing.assert_allclose(pebble.knn_distance(line, line, everything, 2), [3, 2, 3, 6])
    # Rows not yet written are no neighbours: without 7, the point 3's nearest is 1 (at 2).
    valid = jnp.asarray([True, True, True, False])
    np.testing.assert_allclose(pebble.knn_distance(line[:3], line, valid, 2), [3, 2, 3])
    # Euclidean in several dimensions: a 3-4-5 triangle.
    plane = jnp.asarray([[0.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(pebble.knn_distance(plane, plane, jnp.ones(2, bool), 1), [5, 5])
    np.testing.assert_allclose(
        pebble.entropy_reward(plane, plane, jnp.ones(2, bool), 1, 1.0), np.log([6.0, 6.0]),
        rtol=1e-6)


def test_running_moments_match_numpy_over_chunks():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3.0, 2.0, size=n).astype(np.float32) for n in (5, 17, 64, 3)]
    m = pebble.Moments.empty()
    for c in chunks:
        m = m.update(jnp.asarray(c))
    everything = np.concatenate(chunks)
    # The ε-count prior (mean 0, var 1, count 1e-4) moves the answer by ~1e-6.
    np.testing.assert_allclose(float(m.mean), everything.mean(), rtol=1e-4)
    np.testing.assert_allclose(float(m.var), everything.var(), rtol=1e-4)


# --------------------------------------------------------------------------- the learner

CONFIG = pebble.PEBBLEConfig(warmup_steps=8, unsup_steps=8, hidden=(16,), batch_size=4,
                             learning_rate=1e-9, entropy_k=2)


def _learner(config=CONFIG, reward=7.0):
    return pebble.make(config, 3, 2, capacity=64,
                       reward_fn=lambda obs, action, next_obs, extras: jnp.full(
                           obs.shape[:1], reward))


def _distance(a, b):
    return max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a),
                                                           jax.tree.leaves(b), strict=True))


@pytest.fixture(scope="module")
def jitted():
    learner = _learner()
    return learner, jax.jit(learner.update)


def test_phases_warmup_pretraining_then_learned_reward_with_one_critic_reset(jitted):
    learner, update = jitted
    state = learner.init(jax.random.key(0))
    states, metrics = [state], []
    for i in range(4):
        state, m = update(state, _transitions(8, i))
        states.append(state)
        metrics.append(jax.device_get(m))
    # Warm-up: stored, no update.
    assert int(states[1].sac.step) == 0 and int(states[1].buffer.count) == 8
    assert np.isnan(metrics[0]["critic_loss"]) and not metrics[0]["nonfinite"]
    # Pre-training: 8 updates on the entropy reward (not the learned reward's 7).
    assert int(states[2].sac.step) == 8 and metrics[1]["pretraining"] == 1.0
    assert np.isfinite(metrics[1]["learning_reward"]) and metrics[1]["learning_reward"] != 7.0
    assert float(states[2].entropy.count) > 8 and not bool(states[2].critic_reset)
    # Preference phase: the learned reward, the critics re-initialised once (lr 1e-9: the
    # updates themselves move the parameters by ~1e-8).
    assert metrics[2]["pretraining"] == 0.0
    np.testing.assert_allclose(metrics[2]["learning_reward"], 7.0)
    assert bool(states[3].critic_reset)
    assert _distance(states[1].sac.critic_params, states[2].sac.critic_params) < 1e-6
    assert _distance(states[2].sac.critic_params, states[3].sac.critic_params) > 1e-2
    assert _distance(states[3].sac.critic_params, states[4].sac.critic_params) < 1e-6
    assert _distance(states[3].sac.target_critic_params, states[3].sac.critic_params) < 1e-6
    # The entropy statistics stop at the end of pre-training; the actor was never reset.
    assert float(states[4].entropy.count) == float(states[2].entropy.count)
    assert _distance(states[2].sac.actor_params, states[4].sac.actor_params) < 1e-6
    assert update._cache_size() == 1


def test_without_pretraining_the_learned_reward_is_used_from_the_first_update():
    config = dataclasses.replace(CONFIG, warmup_steps=0, unsup_steps=0)
    learner = _learner(config, reward=-3.0)
    state, m = jax.jit(learner.update)(learner.init(jax.random.key(1)), _transitions(8, 0))
    np.testing.assert_allclose(m["learning_reward"], -3.0)
    assert int(state.sac.step) == 8 and not bool(state.critic_reset)


def test_reset_actor_reinitialises_actor_and_temperature_after_pretraining():
    config = dataclasses.replace(CONFIG, reset_actor=True, init_temperature=0.5)
    learner = _learner(config)
    update = jax.jit(learner.update)
    states = [learner.init(jax.random.key(0))]
    for i in range(2):
        states.append(update(states[-1], _transitions(8, i))[0])
    # Stand-in for what pre-training does to α (lr 1e-9 here moves nothing).
    states[2] = states[2].replace(sac=states[2].sac.replace(log_alpha=jnp.float32(3.0)))
    states.append(update(states[2], _transitions(8, 2))[0])
    before, after = states[2].sac, states[3].sac  # the reset falls in the third update
    assert bool(states[3].critic_reset) and int(after.step) == int(before.step) + 8
    assert _distance(before.actor_params, after.actor_params) > 1e-2  # lr 1e-9: the reset
    np.testing.assert_allclose(float(after.log_alpha), np.log(0.5), atol=1e-6)
    fresh = learner.init(jax.random.key(0)).sac
    # The networks are new draws, not the initial ones restored.
    assert _distance(fresh.actor_params, after.actor_params) > 1e-2


def test_task_reward_variant_learns_from_the_stored_environment_reward():
    # The diagnostic learner (experiments/bench/pebble_diagnostic.py): SAC on the rollout's
    # own reward, here a constant 5, whatever the reward model says.
    from prefrl.learners import reward_model as rm
    from prefrl.loops.online import pebble as online_pebble
    from prefrl.types import Trajectory

    config = dataclasses.replace(CONFIG, warmup_steps=0, unsup_steps=0)
    learner = online_pebble.make(config=POINT, obs_dim=3, act_dim=2,
                                 reward_model=rm.model(REWARD), policy_config=config,
                                 task_reward=True)
    t = _transitions(8, 2)
    shape = lambda x, *tail: x.reshape(2, 4, *tail)  # noqa: E731
    traj = Trajectory(shape(t.obs, 3), shape(t.action, 2), jnp.full((2, 4), 5.0),
                      shape(t.next_obs, 3), jnp.zeros((2, 4), bool), jnp.zeros((2, 4), bool),
                      jnp.zeros((2, 4)), jnp.zeros((2, 4, 9)), jnp.zeros((2, 4, 9)))
    _, m = learner.update(learner.init(jax.random.key(3)), traj)
    np.testing.assert_allclose(m["proxy_reward"], 5.0)


def test_same_key_same_numbers(jitted):
    learner, update = jitted
    run = lambda: update(learner.init(jax.random.key(3)), _transitions(8, 0))  # noqa: E731
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(run()[0].sac.actor_params),
                 jax.device_get(run()[0].sac.actor_params))


@pytest.mark.parametrize("kwargs, match", [
    (dict(entropy_k=0), "entropy_k must be an integer >= 1"),
    (dict(entropy_c=0.0), "entropy_c"),
    (dict(replay_capacity=100), "smaller than one batch"),
    (dict(target_entropy=float("inf")), "target_entropy must be finite"),
    (dict(unsup_steps=-1), "unsup_steps"),
    (dict(updates_per_step=0), "updates_per_step"),
    (dict(reset_actor=True, reset_critic=False), "reset_actor needs reset_critic"),
])
def test_bad_config_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pebble.PEBBLEConfig(**kwargs)


def test_a_buffer_smaller_than_a_batch_is_refused():
    with pytest.raises(ValueError, match="smaller than one batch"):
        pebble.make(pebble.PEBBLEConfig(batch_size=32), 3, 2, capacity=16)


# --------------------------------------------------------------------------- online

POINT = online.OnlineConfig(
    task="run", total_steps=4 * 10 * 12, num_envs=4, rollout_steps=10, label_budget=24,
    refit_every=3, segment_length=5, segment_stride=5, pool_capacity=48, initial_fit_steps=20,
    heldout_queries=8, eval_every=0, eval_episodes=2, progress=False, oversample=3,
    policy_learner="pebble")
PEBBLE = pebble.PEBBLEConfig(warmup_steps=40, unsup_steps=80, hidden=(16,), batch_size=16)
REWARD = online.default_reward_config(hidden=(16,), ensemble_size=2, num_steps=10,
                                      eval_every=10, batch_size=16, chunk_pairs=16)


def _train(config=POINT, **kwargs):
    return online.train(config, None, REWARD, None, policy_config=PEBBLE,
                        env_factory=lambda n, s: PointMassBatchedEnv(n, s), **kwargs)


@pytest.fixture(scope="module")
def point_run():
    return _train()


def test_first_round_at_the_end_of_pretraining_and_the_budget_spent(point_run):
    rounds = point_run["rounds"]
    # 40 + 80 = 120 env steps of warm-up and pre-training = 3 updates of 40: round 0 at 4.
    assert rounds[0]["update"] == 4 and rounds[0]["env_steps"] == 120
    assert point_run["labels_used"] == POINT.label_budget
    history = point_run["history"]
    assert all(np.isnan(h["proxy_reward"]) for h in history[:1])  # warm-up: no update
    assert all(np.isfinite(h["proxy_reward"]) for h in history[1:])
    state = point_run["state"].policy
    assert int(state.env_steps) == POINT.total_steps and bool(state.critic_reset)
    # The policy learner uses the refitted r̂: its parameters are the core's.
    jax.tree.map(np.testing.assert_array_equal, state.reward_params.params,
                 point_run["state"].reward.params)


def test_killed_pebble_run_resumes_bit_for_bit(point_run, tmp_path):
    config = dataclasses.replace(POINT, out_dir=str(tmp_path), checkpoint_every=2)
    _train(config, stop_after_updates=5)
    assert (tmp_path / "last.npz").exists() and not (tmp_path / "result.json").exists()
    resumed = _train(config)

    def raw(x):
        x = jnp.asarray(x)
        return np.asarray(jax.random.key_data(x) if jnp.issubdtype(
            x.dtype, jax.dtypes.prng_key) else x)

    same = jax.tree.map(lambda a, b: np.array_equal(raw(a), raw(b)), point_run["state"],
                        resumed["state"])
    assert all(jax.tree.leaves(same))
    rounds = [json.loads(x)["round"] for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert rounds == list(range(len(point_run["rounds"])))


def test_pretraining_longer_than_the_run_is_refused_and_nothing_written(tmp_path):
    out = tmp_path / "run"
    long = dataclasses.replace(PEBBLE, unsup_steps=10_000)
    with pytest.raises(ValueError, match="pre-training"):
        online.train(dataclasses.replace(POINT, out_dir=str(out)), None, REWARD, None,
                     policy_config=long, env_factory=lambda n, s: PointMassBatchedEnv(n, s))
    assert not out.exists()


@pytest.mark.parametrize("argv, match", [
    (["--pebble-entropy-k", "0"], "entropy_k"),
    (["--pebble-target-entropy", "inf"], "target_entropy|finite"),
    (["--pebble-unsup-steps", "2000000"], "pre-training"),
])
def test_cli_refuses_bad_pebble_options_and_writes_nothing(tmp_path, capsys, argv, match):
    from prefrl import cli

    out = tmp_path / "run"
    try:
        code = cli.main(["train", "online", "--policy-learner", "pebble", "--out-dir", str(out),
                         *argv])
    except SystemExit as exit_:  # argparse's own refusal of a non-finite number
        code = exit_.code
    assert code == 2
    assert re.search(match, capsys.readouterr().err)
    assert not out.exists()


def test_registry_lists_pebble_and_resolves_its_first_round():
    assert "pebble" in registry.POLICY_LEARNERS
    resolved = registry.resolve(dataclasses.replace(POINT, total_steps=100_000), PEBBLE)
    assert resolved.label_from_step == 120
    own = registry.resolve(dataclasses.replace(POINT, label_from_step=0), PEBBLE)
    assert own.label_from_step == 0
    ppo_run = registry.resolve(dataclasses.replace(POINT, policy_learner="ppo"))
    assert ppo_run.label_from_step == 0 and ppo_run.round_updates()[0] == 1
