"""PPO: GAE, losses, the adaptive-KL rule, compile-once, determinism, learning."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppo_toy import ACT_DIM, OBS_DIM, reset, rollout

from prefrl.learners import ppo
from prefrl.networks import tanh_gaussian_log_prob

SMALL = ppo.PPOConfig(
    num_epochs=4,
    num_minibatches=4,
    learning_rate=3e-3,
    policy_hidden=(32,),
    value_hidden=(32,),
)


def _gae_loop(reward, value, next_value, terminated, truncated, gamma, lam):
    """Plain-Python GAE on one environment's [T] arrays (the reference)."""
    adv = np.zeros_like(reward)
    running = 0.0
    for t in reversed(range(len(reward))):
        bootstrap = 0.0 if terminated[t] else gamma * next_value[t]
        delta = reward[t] + bootstrap - value[t]
        if terminated[t] or truncated[t]:
            running = 0.0
        running = delta + gamma * lam * running
        adv[t] = running
    return adv


@pytest.mark.parametrize("jit", [False, True])
def test_gae_scan_matches_python_loop(rng, jit):
    t_len, gamma, lam = 40, 0.97, 0.9
    reward = rng.normal(size=t_len).astype(np.float32)
    value = rng.normal(size=t_len).astype(np.float32)
    next_value = rng.normal(size=t_len).astype(np.float32)
    terminated = rng.random(t_len) < 0.1
    truncated = (rng.random(t_len) < 0.1) & ~terminated
    assert terminated.any() and truncated.any()
    fn = jax.jit(ppo.gae_advantages) if jit else ppo.gae_advantages
    got = fn(
        jnp.asarray(reward),
        jnp.asarray(value),
        jnp.asarray(next_value),
        jnp.asarray(terminated),
        jnp.asarray(truncated),
        gamma,
        lam,
    )
    want = _gae_loop(reward, value, next_value, terminated, truncated, gamma, lam)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_gae_truncation_bootstraps_and_termination_does_not():
    # One step, r = 1, V(s) = 0, V(s') = 10, γ = 0.5:
    # truncated -> A = 1 + 0.5·10 − 0 = 6; terminated -> A = 1 + 0 − 0 = 1.
    args = (jnp.array([1.0]), jnp.array([0.0]), jnp.array([10.0]))
    trunc = ppo.gae_advantages(*args, jnp.array([False]), jnp.array([True]), 0.5, 0.9)
    term = ppo.gae_advantages(*args, jnp.array([True]), jnp.array([False]), 0.5, 0.9)
    assert float(trunc[0]) == pytest.approx(6.0)
    assert float(term[0]) == pytest.approx(1.0)


def test_clipped_surrogate_known_values():
    # ρ = 1.5, A = 2, ε = 0.2: min(1.5·2, 1.2·2) = 2.4 -> loss −2.4.
    loss = ppo.clipped_surrogate_loss(jnp.log(1.5), jnp.array(0.0), jnp.array(2.0), 0.2)
    assert float(loss) == pytest.approx(-2.4, rel=1e-6)
    # ρ = 0.5, A = −1: min(−0.5, 0.8·−1 = −0.8) = −0.8 -> loss 0.8.
    loss = ppo.clipped_surrogate_loss(jnp.log(0.5), jnp.array(0.0), jnp.array(-1.0), 0.2)
    assert float(loss) == pytest.approx(0.8, rel=1e-6)
    # ρ = 1.1 inside the clip range, A = 3: loss = −3.3.
    loss = ppo.clipped_surrogate_loss(jnp.log(1.1), jnp.array(0.0), jnp.array(3.0), 0.2)
    assert float(loss) == pytest.approx(-3.3, rel=1e-6)
    # Tiny batch, mean: (−2.4 + 0.8 − 3.3)/3 = −1.6333…
    batch = jax.vmap(ppo.clipped_surrogate_loss, in_axes=(0, 0, 0, None))(
        jnp.log(jnp.array([1.5, 0.5, 1.1])), jnp.zeros(3), jnp.array([2.0, -1.0, 3.0]), 0.2
    )
    assert float(jnp.mean(batch)) == pytest.approx(-4.9 / 3, rel=1e-6)


def test_kl_penalty_loss_and_value_loss_known_values():
    # ρ = 2, A = 1, KL = 0.1, β = 3: −(2 − 0.3) = −1.7.
    loss = ppo.kl_penalty_loss(jnp.log(2.0), jnp.array(0.0), jnp.array(1.0), jnp.array(0.1), 3.0)
    assert float(loss) == pytest.approx(-1.7, rel=1e-6)
    # V = 3, target 1, V_old = 2, ε = 0.5: unclipped (3−1)² = 4, clipped V = 2.5 -> 2.25;
    # max = 4 -> ½·4 = 2. Without clipping also 2. With V = 0.5: (0.5−1)² = 0.25,
    # clipped V = 1.5 -> 0.25 as well; V = 1.2, V_old = 0: clipped 0.5 -> 0.25 vs 0.04 -> 0.125.
    v = ppo.value_loss(jnp.array(3.0), jnp.array(1.0), jnp.array(2.0), 0.5)
    assert float(v) == pytest.approx(2.0)
    v = ppo.value_loss(jnp.array(1.2), jnp.array(1.0), jnp.array(0.0), 0.5)
    assert float(v) == pytest.approx(0.125)
    v = ppo.value_loss(jnp.array(1.2), jnp.array(1.0), jnp.array(0.0), None)
    assert float(v) == pytest.approx(0.02, rel=1e-5)


def test_adaptive_kl_rule_doubles_and_halves():
    target = 0.01
    # KL > 1.5·δ = 0.015 -> double; KL < δ/1.5 ≈ 0.00667 -> halve; in between -> keep.
    assert float(ppo.adapt_kl_coef(jnp.array(1.0), jnp.array(0.02), target)) == 2.0
    assert float(ppo.adapt_kl_coef(jnp.array(1.0), jnp.array(0.005), target)) == 0.5
    assert float(ppo.adapt_kl_coef(jnp.array(1.0), jnp.array(0.01), target)) == 1.0
    assert float(ppo.adapt_kl_coef(jnp.array(1.0), jnp.array(0.0149), target)) == 1.0
    assert float(ppo.adapt_kl_coef(jnp.array(1.0), jnp.array(0.0067), target)) == 1.0


def test_gaussian_kl_matches_monte_carlo_of_squashed_densities():
    # KL(p‖q) = E_p[log p(a) − log q(a)] with a = tanh(u): the Jacobians cancel.
    key = jax.random.key(0)
    mp, sp = jnp.array([0.3, -0.2]), jnp.array([-0.5, -0.3])
    mq, sq = jnp.array([0.1, 0.0]), jnp.array([-0.4, -0.6])
    u = mp[None] + jnp.exp(sp)[None] * jax.random.normal(key, (200_000, 2))
    a = jnp.tanh(u)
    n = a.shape[0]

    def tile(x):
        return jnp.broadcast_to(x, (n, 2))

    log_p = tanh_gaussian_log_prob(tile(mp), tile(sp), a)
    mc = jnp.mean(log_p - tanh_gaussian_log_prob(tile(mq), tile(sq), a))
    assert float(ppo.gaussian_kl(mp, sp, mq, sq)) == pytest.approx(float(mc), abs=5e-3)


def test_running_stats_equal_statistics_of_concatenation(rng):
    a = rng.normal(2.0, 3.0, size=(50, 3)).astype(np.float32)
    b = rng.normal(-1.0, 0.5, size=(70, 3)).astype(np.float32)
    stats = ppo.running_stats_init((3,))
    stats = ppo.running_stats_update(stats, jnp.asarray(a))
    stats = ppo.running_stats_update(stats, jnp.asarray(b))
    both = np.concatenate([a, b])
    np.testing.assert_allclose(np.asarray(stats.mean), both.mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(stats.var), both.var(0), rtol=1e-4)
    assert float(stats.count) == 120.0


def test_popart_rescale_preserves_values(rng):
    config = SMALL
    acting = ppo.make_acting(config, ACT_DIM)
    state = ppo.make(config, OBS_DIM, ACT_DIM, num_updates=1).init(jax.random.key(0))
    obs = jnp.asarray(rng.normal(size=(9, OBS_DIM)), jnp.float32)
    before = acting.value(state, obs)
    new_stats = ppo.RunningStats(mean=jnp.array(5.0), var=jnp.array(16.0), count=jnp.array(10.0))
    params = ppo.popart_rescale(state.value_params, state.return_stats, new_stats)
    after = acting.value(state.replace(value_params=params, return_stats=new_stats), obs)
    np.testing.assert_allclose(np.asarray(after), np.asarray(before), rtol=1e-5, atol=1e-5)


_ACTING = ppo.make_acting(SMALL, ACT_DIM)
_LEARNER = ppo.make(SMALL, OBS_DIM, ACT_DIM, num_updates=3)
# Shared by the tests below (all call it on 16×16 rollouts): it must trace once.
_UPDATE = jax.jit(chex.assert_max_traces(_LEARNER.update, n=1))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _toy_rollout(state, key, num_envs, num_steps):
    env_key, roll_key = jax.random.split(key)
    env_state = reset(env_key, num_envs)
    _, traj = rollout(lambda o, k: _ACTING.act(state, o, k), env_state, roll_key, num_steps)
    return traj


def _toy_batch(state, key, num_envs=16, num_steps=16):
    """A [num_steps, num_envs] point-mass rollout of ``state``'s policy (SMALL's networks)."""
    return _toy_rollout(state, key, num_envs, num_steps)


def test_update_compiles_once_and_is_deterministic():
    learner, update = _LEARNER, _UPDATE

    def run(seed):
        state = learner.init(jax.random.key(seed))
        for i in range(3):
            traj = _toy_batch(state, jax.random.key(100 + i))
            state, metrics = update(state, traj)
            assert np.isfinite(float(metrics["policy_loss"]))
        return state

    first, second = run(0), run(0)
    chex.assert_trees_all_equal(first.policy_params, second.policy_params)
    chex.assert_trees_all_equal(first.value_params, second.value_params)
    chex.assert_trees_all_equal(first.obs_stats, second.obs_stats)
    other = run(1)
    assert not np.allclose(
        np.asarray(other.policy_params["params"]["Dense_0"]["kernel"]),
        np.asarray(first.policy_params["params"]["Dense_0"]["kernel"]),
    )


def test_vmap_over_seeds_matches_single_seed_runs():
    learner = _LEARNER
    keys = jax.random.split(jax.random.key(3), 2)
    states = jax.vmap(learner.init)(keys)
    # One env batch per seed (the unbatched rollout twice: no extra compilation).
    per_seed = [_toy_batch(learner.init(keys[i]), keys[i]) for i in range(2)]
    trajs = jax.tree.map(lambda *xs: jnp.stack(xs), *per_seed)
    new_states, metrics = jax.jit(jax.vmap(learner.update))(states, trajs)
    assert metrics["kl"].shape == (2,)
    single_update = _UPDATE
    for i in range(2):
        single, _ = single_update(
            learner.init(keys[i]), jax.tree.map(lambda x, i=i: x[i], trajs)
        )
        chex.assert_trees_all_close(
            jax.tree.map(lambda x, i=i: x[i], new_states.policy_params),
            single.policy_params,
            rtol=1e-4,
            atol=1e-5,
        )


def test_kl_reference_penalty_enters_the_reward():
    # π_ref = the initial policy itself: at the first update log π − log π_ref = 0,
    # so the learning reward equals the proxy reward; a shifted π_ref lowers it.
    config = SMALL.__class__(**{**SMALL.__dict__, "kl_ref_coef": 0.5})
    state = ppo.make(SMALL, OBS_DIM, ACT_DIM, num_updates=1).init(jax.random.key(0))
    nets = ppo.make_networks(SMALL, ACT_DIM)

    def ref_apply(ref, obs):
        # ref = (policy params, mean shift); the reference sees raw observations
        # (the learner's normaliser is the identity at init).
        mean, log_std = nets.policy.apply(ref[0], obs)
        return mean + ref[1], log_std

    learner = ppo.make(config, OBS_DIM, ACT_DIM, num_updates=1, reference_apply=ref_apply)
    jitted = jax.jit(learner.update)

    def update(state, traj, ref):
        # π_ref's parameters travel in the state: a new π_ref does not recompile.
        return jitted(state.replace(ref_params=ref), traj)

    traj = _toy_batch(state, jax.random.key(1))
    _, m = update(state, traj, (state.policy_params, jnp.array(0.0)))
    assert float(m["ref_kl"]) == pytest.approx(0.0, abs=1e-5)
    assert float(m["learning_reward"]) == pytest.approx(float(m["proxy_reward"]), abs=1e-5)

    _, m = update(state, traj, (state.policy_params, jnp.array(1.0)))
    # E_π[log π − log π_ref] is a KL: positive on average.
    assert float(m["ref_kl"]) > 0.1
    want = float(m["proxy_reward"]) - 0.5 * float(m["ref_kl"])
    assert float(m["learning_reward"]) == pytest.approx(want, rel=1e-4)
    assert jitted._cache_size() == 1
    with pytest.raises(ValueError, match="ref_params"):
        learner.update(state, traj)

    # β_KL as an input (PPOState.kl_ref_coef): the configured 0.5 given as an array,
    # then 2.0; vmapped over two β_KL values in one call.
    ref = (state.policy_params, jnp.array(1.0))
    _, m2 = update(state.replace(kl_ref_coef=jnp.float32(2.0)), traj, ref)
    assert float(m2["learning_reward"]) == pytest.approx(
        float(m2["proxy_reward"]) - 2.0 * float(m2["ref_kl"]), rel=1e-4)
    _, same = update(state.replace(kl_ref_coef=jnp.float32(0.5)), traj, ref)
    assert float(same["learning_reward"]) == pytest.approx(float(m["learning_reward"]), rel=1e-6)
    both = jax.tree.map(lambda x: jnp.stack([x, x]), state.replace(ref_params=ref))
    both = both.replace(kl_ref_coef=jnp.array([0.5, 2.0], jnp.float32))
    _, mv = jax.jit(jax.vmap(learner.update, in_axes=(0, None)))(both, traj)
    np.testing.assert_allclose(mv["learning_reward"],
                               [float(m["learning_reward"]), float(m2["learning_reward"])],
                               rtol=1e-5)


def test_custom_reward_fn_is_used():
    def doubled(obs, action, next_obs, extras):
        return 2.0 * extras["reward"] + extras["reward_params"]

    learner = ppo.make(SMALL, OBS_DIM, ACT_DIM, num_updates=1, reward_fn=doubled)
    state = learner.init(jax.random.key(0))
    traj = _toy_batch(state, jax.random.key(1))
    update = jax.jit(learner.update)
    _, m = update(state.replace(reward_params=jnp.array(1.0)), traj)
    assert float(m["proxy_reward"]) == pytest.approx(2 * float(m["true_reward"]) + 1.0, rel=1e-5)
    # New reward parameters reach the update without a recompile.
    _, m = update(state.replace(reward_params=jnp.array(3.0)), traj)
    assert float(m["proxy_reward"]) == pytest.approx(2 * float(m["true_reward"]) + 3.0, rel=1e-5)
    assert update._cache_size() == 1


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="clip_epsilon"):
        ppo.PPOConfig(clip_epsilon=0.0)
    with pytest.raises(ValueError, match="loss must be"):
        ppo.PPOConfig(loss="trpo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_updates"):
        ppo.make(SMALL, OBS_DIM, ACT_DIM)
    with pytest.raises(ValueError, match="reference"):
        ppo.make(SMALL.__class__(kl_ref_coef=0.1), OBS_DIM, ACT_DIM, num_updates=1)
    learner = ppo.make(SMALL, OBS_DIM, ACT_DIM, num_updates=1)
    state = learner.init(jax.random.key(0))
    # T·B = 3·3 = 9 samples cannot split into 4 minibatches.
    traj = _toy_batch(state, jax.random.key(0), 3, 3)
    with pytest.raises(ValueError, match="divisible"):
        learner.update(state, traj)


@pytest.mark.parametrize("loss", ["clip", "kl"])
def test_ppo_learns_point_mass(loss):
    """Return per step rises from ≈ −1.4 (random policy) to ≈ −0.2 (drive x to 0)."""
    config = SMALL.__class__(**{**SMALL.__dict__, "loss": loss})
    num_updates = 40
    learner = ppo.make(config, OBS_DIM, ACT_DIM, num_updates=num_updates)
    acting = ppo.make_acting(config, ACT_DIM)

    @jax.jit
    def iteration(state, env_state, key):
        env_state, traj = rollout(lambda o, k: acting.act(state, o, k), env_state, key, 20)
        state, metrics = learner.update(state, traj)
        return state, env_state, metrics

    state = learner.init(jax.random.key(0))
    env_state = reset(jax.random.key(1), 32)
    rewards = []
    for i in range(num_updates):
        state, env_state, metrics = iteration(state, env_state, jax.random.key(100 + i))
        rewards.append(float(metrics["true_reward"]))
    assert np.mean(rewards[:2]) < -0.9
    assert np.mean(rewards[-5:]) > -0.45
    if loss == "kl":
        assert float(state.kl_coef) != config.kl_init_coef
