"""SAC: known answers (Bellman target, temperature loss, Polyak), config checks, learning."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppo_toy import ACT_DIM, OBS_DIM, reset, rollout

from prefrl.data.buffers import make_ring_buffer
from prefrl.learners import sac

OBS, ACT, N = 3, 2, 8


def _batch(terminated: bool = False, n: int = N) -> sac.Transition:
    k_obs, k_act, k_rew, k_next = jax.random.split(jax.random.key(3), 4)
    return sac.Transition(
        obs=jax.random.normal(k_obs, (n, OBS)),
        action=jax.random.uniform(k_act, (n, ACT), minval=-0.9, maxval=0.9),
        reward=jax.random.normal(k_rew, (n,)),
        next_obs=jax.random.normal(k_next, (n, OBS)),
        terminated=jnp.full((n,), terminated))


SMALL = sac.SACConfig(hidden=(16, 16), batch_size=N, buffer_size=64)


# --------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("jit", [False, True])
def test_soft_td_target_known_answer(jit):
    fn = jax.jit(sac.soft_td_target, static_argnums=5) if jit else sac.soft_td_target
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    # r = 1, γ = 0.99, min(Q̄_1, Q̄_2) = min(2.5, 2.0) = 2.0, log π(ã'|s') = −0.5, α = 0.2:
    # the soft value of s' is 2.0 − 0.2·(−0.5) = 2.1 (the entropy bonus adds 0.1), so
    # y = 1 + 0.99 · 2.1 = 1 + 2.079 = 3.079.
    got = fn(f32(1.0), jnp.asarray(False), jnp.min(f32([2.5, 2.0])), f32(-0.5), f32(0.2), 0.99)
    np.testing.assert_allclose(float(got), 3.079, rtol=1e-6)
    # A terminal s' stops bootstrapping: y = r = 1.
    got = fn(f32(1.0), jnp.asarray(True), f32(2.0), f32(-0.5), f32(0.2), 0.99)
    np.testing.assert_allclose(float(got), 1.0, rtol=1e-6)


def test_critic_and_actor_losses_known_answers():
    # Σ_i ½(Q_i − y)² with Q = (2, 4), y = 3: ½·1 + ½·1 = 1.
    assert float(sac.critic_loss(jnp.asarray([2.0, 4.0]), jnp.asarray(3.0))) == 1.0
    # α log π − min Q = 0.5·(−2) − 1.5 = −2.5.
    assert float(sac.actor_loss(jnp.asarray(-2.0), jnp.asarray(1.5), jnp.asarray(0.5))) == -2.5


def test_temperature_loss_known_answer_and_gradient():
    # α = 0.5, log π = −1, H̄ = −6: J = −α (log π + H̄) = −0.5 · (−1 − 6) = 3.5.
    assert float(sac.temperature_loss(jnp.asarray(0.5), jnp.asarray(-1.0), -6.0)) == 3.5
    # In log α: dJ/d log α = −α (log π + H̄) = 3.5 > 0: the entropy 1 exceeds H̄ = −6,
    # so gradient descent lowers α.
    grad = jax.grad(lambda la: sac.temperature_loss(jnp.exp(la), jnp.asarray(-1.0), -6.0))(
        jnp.log(0.5))
    np.testing.assert_allclose(float(grad), 3.5, rtol=1e-6)


def test_polyak_known_answer():
    online = {"w": jnp.asarray([1.0, 2.0]), "b": jnp.asarray(4.0)}
    target = {"w": jnp.asarray([0.0, 0.0]), "b": jnp.asarray(2.0)}
    # τ = 0.005: w̄ = 0.005·(1, 2) = (0.005, 0.01); b̄ = 0.005·4 + 0.995·2 = 0.02 + 1.99 = 2.01.
    got = sac.polyak(online, target, 0.005)
    np.testing.assert_allclose(np.asarray(got["w"]), [0.005, 0.01], rtol=1e-6)
    np.testing.assert_allclose(float(got["b"]), 2.01, rtol=1e-6)


def test_update_moves_targets_by_one_polyak_step_and_alpha_by_one_adam_step():
    learner = sac.make(SMALL, OBS, ACT)
    state = learner.init(jax.random.key(0))
    # Make the target critics differ from the critics, so the step is visible.
    state = state.replace(target_critic_params=jax.tree.map(jnp.zeros_like,
                                                            state.critic_params))
    new, metrics = jax.jit(learner.update)(state, _batch())
    chex.assert_trees_all_close(
        new.target_critic_params,
        jax.tree.map(lambda c: 0.005 * c, new.critic_params), rtol=1e-6, atol=1e-9)
    # The initial policy (σ = 1 on 2 dims) has entropy ≈ 1.3 > H̄ = −|A| = −2, so the
    # temperature gradient in log α is positive and Adam's first step is −lr·sign(g).
    assert float(metrics["entropy"]) > -2.0
    np.testing.assert_allclose(float(new.log_alpha), math.log(1.0) - SMALL.learning_rate,
                               atol=1e-7)
    assert int(new.step) == 1


def test_update_target_is_the_soft_bellman_target_of_its_networks():
    """The update's y, rebuilt by hand from its key: r + γ (min_i Q̄_i(s', ã') − α log π(ã'|s'))."""
    from prefrl.learners.sac_networks import q_values
    from prefrl.networks import tanh_gaussian_sample

    learner = sac.make(SMALL, OBS, ACT)
    state = learner.init(jax.random.key(0)).replace(log_alpha=jnp.log(jnp.float32(0.3)))
    # Target critics apart from the critics, so the test sees which ones y uses.
    state = state.replace(target_critic_params=jax.tree.map(lambda p: 1.5 * p,
                                                            state.critic_params))
    batch = _batch()
    _, metrics = learner.update(state, batch)
    _, critic_key, _ = jax.random.split(state.key, 3)  # the update's split
    nets = sac.make_networks(ACT, SMALL.hidden)
    next_action, next_log_prob = tanh_gaussian_sample(
        critic_key, *nets.actor.apply(state.actor_params, batch.next_obs))
    next_q = q_values(nets.critic, state.target_critic_params, batch.next_obs, next_action)
    want = batch.reward + 0.99 * (jnp.min(next_q, axis=0) - 0.3 * next_log_prob)
    np.testing.assert_allclose(float(metrics["target_mean"]), float(jnp.mean(want)), rtol=1e-5)


def test_update_bootstraps_truncations_only_terminations_stop_it():
    learner = sac.make(SMALL, OBS, ACT)
    state = learner.init(jax.random.key(0))
    _, terminal = learner.update(state, _batch(terminated=True))
    _, not_terminal = learner.update(state, _batch(terminated=False))
    # Terminal: y = r exactly; a truncated (non-terminal) s' adds γ·(soft value of s').
    np.testing.assert_allclose(float(terminal["target_mean"]),
                               float(jnp.mean(_batch().reward)), rtol=1e-6)
    assert float(not_terminal["target_mean"]) != pytest.approx(float(terminal["target_mean"]))


def test_learned_reward_is_computed_in_the_update_from_state_params():
    """r̂(s, a) from state.reward_params: a new value changes the target without recompiling."""

    def reward_fn(obs, action, next_obs, extras):
        del next_obs
        return extras["reward_params"] * jnp.sum(obs, -1) + 0.0 * jnp.sum(action, -1)

    learner = sac.make(SMALL, OBS, ACT, reward_fn=reward_fn)
    update = jax.jit(learner.update)
    state = learner.init(jax.random.key(0))
    batch = _batch(terminated=True)
    _, m1 = update(state.replace(reward_params=jnp.asarray(1.0)), batch)
    _, m2 = update(state.replace(reward_params=jnp.asarray(2.0)), batch)
    assert update._cache_size() == 1
    np.testing.assert_allclose(float(m1["target_mean"]), float(jnp.mean(jnp.sum(batch.obs, -1))),
                               rtol=1e-5)
    np.testing.assert_allclose(float(m2["target_mean"]), 2 * float(m1["target_mean"]), rtol=1e-5)


def test_fixed_temperature_stays():
    config = sac.SACConfig(hidden=(8,), batch_size=N, buffer_size=N, learn_temperature=False,
                           init_temperature=0.1)
    learner = sac.make(config, OBS, ACT)
    state, _ = learner.update(learner.init(jax.random.key(0)), _batch())
    np.testing.assert_allclose(float(jnp.exp(state.log_alpha)), 0.1, rtol=1e-6)


def test_same_key_same_numbers():
    learner = sac.make(SMALL, OBS, ACT)
    a, _ = jax.jit(learner.update)(learner.init(jax.random.key(5)), _batch())
    b, _ = jax.jit(learner.update)(learner.init(jax.random.key(5)), _batch())
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, a.actor_params),
                                jax.tree.map(np.asarray, b.actor_params))


# --------------------------------------------------------------------------- config checks


@pytest.mark.parametrize("kwargs, match", [
    ({"buffer_size": 100, "batch_size": 256}, "smaller than one batch"),
    ({"target_entropy": float("nan")}, "target_entropy must be finite"),
    ({"target_entropy": float("-inf")}, "target_entropy must be finite"),
    ({"tau": 0.0}, "tau"),
    ({"discount": 1.5}, "discount"),
    ({"init_temperature": 0.0}, "init_temperature"),
    ({"hidden": ()}, "hidden"),
])
def test_bad_config_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sac.SACConfig(**kwargs)


def test_target_entropy_defaults_to_minus_action_dim():
    assert sac.SACConfig().entropy_target(6) == -6.0
    assert sac.SACConfig(target_entropy=-3.0).entropy_target(6) == -3.0


def test_example_of_another_size_is_refused():
    learner = sac.make(SMALL, OBS + 1, ACT)
    with pytest.raises(ValueError, match="SAC was made for"):
        learner.init(jax.random.key(0), _batch())


# --------------------------------------------------------------------------- learning


def test_sac_learns_point_mass():
    """Reward per step of the deterministic policy: ≈ −1.4 at random, ≈ −0.2 when it steers to 0.

    The point mass of ``ppo_toy`` (time-limit truncations every 10 steps), 16
    envs, one gradient update per transition, all in one jitted scan.
    """
    num_envs, iterations = 16, 60
    config = sac.SACConfig(hidden=(64, 64), batch_size=128, buffer_size=4096,
                           learning_rate=1e-3, discount=0.9)
    learner = sac.make(config, OBS_DIM, ACT_DIM)
    buffer = make_ring_buffer(config.buffer_size)
    actor = sac.make_networks(ACT_DIM, config.hidden).actor

    def act(params, obs, key, deterministic):
        mean, log_std = actor.apply(params, obs)
        if deterministic:
            return jnp.tanh(mean)
        return jnp.tanh(mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape))

    def iteration(carry, i):
        state, ring, env_state = carry
        step_key = jax.random.fold_in(jax.random.key(1), i)
        env_state, traj = rollout(lambda o, k: act(state.actor_params, o, k, False),
                                  env_state, step_key, 1)
        items = sac.Transition(traj.obs[0], traj.action[0], traj.reward[0], traj.next_obs[0],
                               traj.terminated[0])
        ring, _ = buffer.add(ring, items)

        def one(state, j):
            batch = buffer.sample(ring, jax.random.fold_in(step_key, j), config.batch_size)
            return learner.update(state, batch)

        state, _ = jax.lax.scan(one, state, jnp.arange(num_envs) + 1)
        return (state, ring, env_state), None

    def evaluate(state):
        _, traj = rollout(lambda o, k: act(state.actor_params, o, k, True),
                          reset(jax.random.key(9), 64), jax.random.key(10), 10)
        return jnp.mean(traj.reward)

    @jax.jit
    def train(key):
        state = learner.init(key)
        ring = buffer.init(jax.tree.map(lambda x: x[0], _point_mass_example()))
        env_state = reset(jax.random.key(2), num_envs)
        before = evaluate(state)
        (state, _, _), _ = jax.lax.scan(iteration, (state, ring, env_state),
                                        jnp.arange(iterations))
        return before, evaluate(state)

    before, after = train(jax.random.key(0))
    assert float(before) < -0.9
    assert float(after) > -0.4


def _point_mass_example() -> sac.Transition:
    return sac.Transition(jnp.zeros((1, OBS_DIM)), jnp.zeros((1, ACT_DIM)), jnp.zeros(1),
                          jnp.zeros((1, OBS_DIM)), jnp.zeros(1, bool))


def test_hand_flop_count_matches_xla_cost_analysis():
    """``prefrl bench sac``'s FLOP count of one update (4F_π + 12F_Q) is XLA's, within 1 %."""
    from prefrl.bench import sac as bench

    config = sac.SACConfig()  # batch 256: the optimiser's per-parameter work is < 1 %
    learner = sac.make(config, bench.OBS_DIM, bench.ACT_DIM)
    state = learner.init(jax.random.key(0))
    batch = jax.tree.map(lambda x: x[0], bench._batches(1, 256))
    cost = jax.jit(learner.update).lower(state, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    np.testing.assert_allclose(cost["flops"], bench.hand_flops(256), rtol=0.01)
