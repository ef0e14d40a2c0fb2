"""Batched CPU rollouts (BatchedEnv) and the MJX backend against Gymnasium HalfCheetah-v5."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import jax
import numpy as np
import prefrl.envs  # noqa: F401  (registers the tasks)
import pytest
from prefrl.envs import make_task

from prefrl.networks import GaussianPolicy
from prefrl.rollout import BatchedEnv, observation, policy_from_params, reset_rng
from prefrl.types import Trajectory


class ReplayPolicy:
    """Plays back a fixed ``[T, B, act]`` action array, one row per call."""

    def __init__(self, actions: np.ndarray) -> None:
        self.actions = actions
        self.t = 0

    def __call__(self, obs: np.ndarray, key: jax.Array) -> np.ndarray:
        assert obs.shape == (self.actions.shape[1], 17)
        action = self.actions[self.t]
        self.t += 1
        return action


@pytest.fixture(scope="module")
def small_policy():
    net = GaussianPolicy(action_dim=6, hidden=(16, 16))
    params = net.init(jax.random.key(0), np.zeros((1, 17), np.float32))
    return net, params


def test_batched_rollout_equals_gymnasium_through_truncation():
    """B envs vs B HalfCheetah-v5 envs whose reset generator is env i's: bit-identical."""
    B, T, seed = 3, 1010, 11
    env = BatchedEnv("run", num_envs=B, seed=seed, num_threads=2)
    obs0 = env.reset()
    actions = np.random.default_rng(0).uniform(-1.0, 1.0, (T, B, 6))
    traj = env.rollout(ReplayPolicy(actions), T, jax.random.key(0))
    env.close()
    for i in range(B):
        ref = gym.make("HalfCheetah-v5")
        ref.unwrapped.np_random = reset_rng(seed, i)
        obs, _ = ref.reset()
        np.testing.assert_array_equal(obs0[i], obs)
        for t in range(T):
            np.testing.assert_array_equal(traj.obs[t, i], obs)
            obs, reward, terminated, truncated, info = ref.step(actions[t, i])
            np.testing.assert_array_equal(traj.next_obs[t, i], obs)
            assert traj.reward[t, i] == reward
            assert traj.x_velocity[t, i] == info["x_velocity"]
            assert not traj.terminated[t, i]
            assert traj.truncated[t, i] == truncated == (t == 999)
            if truncated:
                obs, _ = ref.reset()


def test_trajectory_structure_and_consistency():
    B, T = 4, 30
    with BatchedEnv("target-speed", num_envs=B, seed=0) as env:
        traj = env.rollout(prefrl.rollout.random_policy(6), T, jax.random.key(1))
    assert isinstance(traj, Trajectory)
    assert traj.obs.shape == (T, B, 17) and traj.next_obs.shape == (T, B, 17)
    assert traj.action.shape == (T, B, 6) and traj.reward.shape == (T, B)
    assert traj.qpos.shape == (T, B, 9) and traj.qvel.shape == (T, B, 9)
    # No episode ends in 30 steps: next_obs[t] is obs[t + 1].
    assert not traj.done.any()
    np.testing.assert_array_equal(traj.next_obs[:-1], traj.obs[1:])
    np.testing.assert_array_equal(traj.obs, observation(traj.qpos, traj.qvel))
    spec = make_task("target-speed")
    np.testing.assert_array_equal(traj.reward, spec.reward(traj.x_velocity, traj.action))
    # x_velocity is the root displacement over dt = 0.05 s.
    np.testing.assert_allclose(
        traj.x_velocity[:-1], (traj.qpos[1:, :, 0] - traj.qpos[:-1, :, 0]) / 0.05, rtol=1e-12
    )


def test_auto_reset_is_per_env_and_does_not_stall_others():
    """Envs at different episode steps: only the one reaching 1000 resets."""
    env = BatchedEnv("run", num_envs=2, seed=3, num_threads=1)
    env.reset()
    zero = lambda obs, key: np.zeros((obs.shape[0], 6))
    env.rollout(zero, 990, jax.random.key(0))
    env._steps[1] = 500  # desynchronise env 1 (test-only poke at the step counter)
    traj = env.rollout(zero, 20, jax.random.key(0))
    # env 0 reaches step 1000 at row 9 (990 + 9 + 1 = 1000).
    assert traj.truncated[:, 0].tolist() == [t == 9 for t in range(20)]
    assert not traj.truncated[:, 1].any()
    # After the reset env 0's obs is a fresh reset state, not next_obs[9].
    assert not np.allclose(traj.obs[10, 0], traj.next_obs[9, 0])
    assert abs(traj.qpos[10, 0, 0]) <= 0.1  # rootx = 0 + U(-0.1, 0.1)
    np.testing.assert_array_equal(traj.next_obs[:-1, 1], traj.obs[1:, 1])
    np.testing.assert_array_equal(env.episode_steps, [10, 520])


def test_determinism_and_thread_invariance(small_policy):
    net, params = small_policy
    policy = policy_from_params(net.apply, params)
    runs = []
    for threads in (1, 2, 2):
        with BatchedEnv("run", num_envs=5, seed=7, num_threads=threads) as env:
            runs.append(env.rollout(policy, 25, jax.random.key(3)))
    for other in runs[1:]:
        jax.tree.map(np.testing.assert_array_equal, runs[0], other)
    with BatchedEnv("run", num_envs=5, seed=8) as env:
        different = env.rollout(policy, 25, jax.random.key(3))
    assert not np.array_equal(different.obs[0], runs[0].obs[0])
    with BatchedEnv("run", num_envs=5, seed=7) as env:
        other_key = env.rollout(policy, 25, jax.random.key(4))
    np.testing.assert_array_equal(other_key.obs[0], runs[0].obs[0])  # same resets
    assert not np.array_equal(other_key.action, runs[0].action)  # different sampling


def test_step_keys_depend_only_on_key_and_step():
    """key_t is a function of (key, t): a longer rollout starts with the same actions."""
    seen = []

    def record(obs, key):
        seen.append(np.asarray(jax.random.key_data(key)))
        return np.zeros((obs.shape[0], 6))

    env = BatchedEnv("run", num_envs=1, seed=0)
    env.rollout(record, 300, jax.random.key(9))
    first = np.stack(seen)
    seen.clear()
    BatchedEnv("run", num_envs=1, seed=0).rollout(record, 5, jax.random.key(9))
    np.testing.assert_array_equal(np.stack(seen), first[:5])
    assert len({k.tobytes() for k in first}) == 300  # a fresh key every step, across blocks


def test_reset_streams_are_explicit():
    env = BatchedEnv("run", num_envs=3, seed=2)
    first = env.reset()
    second = env.reset()  # continues the streams
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(env.reset(seed=2), first)
    # Env i's reset noise: qpos = qpos0 + U(-0.1, 0.1) from reset_rng(2, i).
    rng = reset_rng(2, 1)
    expected_qpos = env.model.qpos0 + rng.uniform(-0.1, 0.1, 9)
    np.testing.assert_array_equal(first[1, :8], expected_qpos[1:])
    assert not np.array_equal(first[0], first[1])


def test_state_persists_across_rollout_calls(small_policy):
    net, params = small_policy
    policy = policy_from_params(net.apply, params, deterministic=True)
    with BatchedEnv("run", num_envs=2, seed=0) as env:
        whole = env.rollout(policy, 20, jax.random.key(0))
    with BatchedEnv("run", num_envs=2, seed=0) as env:
        first = env.rollout(policy, 12, jax.random.key(0))
        second = env.rollout(policy, 8, jax.random.key(1))
    joined = prefrl.rollout.stack_trajectories([first, second])
    jax.tree.map(np.testing.assert_array_equal, joined, whole)


def test_step_matches_rollout_and_close_keeps_the_state():
    """``step`` gives a rollout's rows; after ``close`` the env continues on one thread."""
    actions = np.random.default_rng(1).uniform(-1.0, 1.0, (6, 3, 6))
    with BatchedEnv("run", num_envs=3, seed=5, num_threads=2) as env:
        traj = env.rollout(ReplayPolicy(actions), 6, jax.random.key(0))
    env = BatchedEnv("run", num_envs=3, seed=5, num_threads=2)
    for t in range(6):
        if t == 3:
            env.close()  # the state moves to a one-thread batch mid-rollout
        row = env.step(actions[t])
        for name, value in row.items():
            np.testing.assert_array_equal(value, getattr(traj, name)[t], err_msg=name)
    env.close()  # idempotent


def test_state_dict_resume_is_bit_identical(small_policy, tmp_path):
    """30 steps, save, 40 more (A); a new env loads the save, 40 steps (B): A == B bitwise.

    Episodes of 50 steps, so every env resets inside the window (the reset noise
    comes from the restored generators), env 1 at a different step from the others.
    """
    net, params = small_policy
    policy = policy_from_params(net.apply, params)  # stochastic: the step keys matter too
    spec = dataclasses.replace(make_task("run"), episode_length=50)
    with BatchedEnv(spec, num_envs=3, seed=4, num_threads=2) as env:
        env.rollout(policy, 30, jax.random.key(0))
        env._steps[1] = 40  # desynchronise env 1 (test-only poke at the step counter)
        state = env.state_dict()
        a = env.rollout(policy, 40, jax.random.key(1))
    assert a.truncated[:, 1].tolist() == [t == 9 for t in range(40)]
    assert a.truncated[:, 0].tolist() == [t == 19 for t in range(40)]
    # Everything is a plain array: it survives a file.
    np.savez(tmp_path / "env.npz", **state)
    with np.load(tmp_path / "env.npz") as f:
        loaded = dict(f)
    assert {"qpos", "qvel", "act", "qacc_warmstart", "time", "episode_steps"} <= set(loaded)
    # Another seed, thread count and dtype: the state overrides all that matters.
    with BatchedEnv(spec, num_envs=3, seed=99, num_threads=1) as env2:
        env2.load_state_dict(loaded)
        np.testing.assert_array_equal(env2.episode_steps, [30, 40, 30])
        jax.tree.map(np.testing.assert_array_equal, env2.state_dict(), state)
        b = env2.rollout(policy, 40, jax.random.key(1))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    # The solver warm-start is part of the state: restoring without it drifts.
    cold = dict(loaded, qacc_warmstart=np.zeros_like(loaded["qacc_warmstart"]))
    with BatchedEnv(spec, num_envs=3, seed=4) as env3:
        env3.load_state_dict(cold)
        c = env3.rollout(policy, 40, jax.random.key(1))
    assert not np.array_equal(c.next_obs, a.next_obs)


def test_load_state_dict_rejects_a_mismatch():
    with BatchedEnv("run", num_envs=2, seed=0, num_threads=1) as env:
        state = env.state_dict()
    with BatchedEnv("run", num_envs=3, seed=0, num_threads=1) as env:
        with pytest.raises(ValueError, match=r"has shape \(2,\), expected \(3,\) \(num_envs=3\)"):
            env.load_state_dict(state)
    with BatchedEnv("run", num_envs=2, seed=0, num_threads=1) as env:
        with pytest.raises(ValueError, match=r"missing \['qacc_warmstart'\]"):
            env.load_state_dict({k: v for k, v in state.items() if k != "qacc_warmstart"})
        with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
            env.load_state_dict({**state, "extra": np.zeros(1)})


def test_policy_from_params(small_policy):
    net, params = small_policy
    obs = np.random.default_rng(0).normal(size=(4, 17)).astype(np.float32)
    mean, _ = net.apply(params, obs)
    det = policy_from_params(net.apply, params, deterministic=True)
    np.testing.assert_allclose(det(obs, jax.random.key(0)), np.tanh(mean), rtol=1e-6)
    sto = policy_from_params(net.apply, params)
    a1, a2 = sto(obs, jax.random.key(0)), sto(obs, jax.random.key(1))
    assert np.all(np.abs(a1) < 1) and not np.allclose(a1, a2)
    # New parameters reuse the same compiled function (no retrace per PPO iteration).
    from prefrl import policies

    compiled = policies._act_jit._cache_size()
    params2 = jax.tree.map(lambda x: x + 0.1, params)
    a3 = policy_from_params(net.apply, params2)(obs, jax.random.key(0))
    assert policies._act_jit._cache_size() == compiled
    assert not np.allclose(a3, a1)


def test_presampled_noise_gives_the_key_path_actions_bit_for_bit(small_policy):
    """The rollout's fast path (noise drawn per block, Actor.act_with_noise) changes no bit."""
    from prefrl.policies import Policy, policy_fn

    net, params = small_policy
    actor = policy_fn(Policy(net.apply, params))
    runs = []
    for policy in (actor, lambda obs, key: actor(obs, key)):  # an Actor, then a plain PolicyFn
        with BatchedEnv("run", num_envs=3, seed=1, num_threads=1) as env:
            runs.append(env.rollout(policy, 300, jax.random.key(5)))  # crosses a key block
    jax.tree.map(np.testing.assert_array_equal, runs[0], runs[1])
    # Several seeds' stacked policies: the same on each seed's block of environments.
    stacked = jax.tree.map(lambda a, b: np.stack([a, b]), params,
                           jax.tree.map(lambda x: x * 0.5, params))
    actor2 = policy_fn(Policy(net.apply, stacked), stacked=True)
    keys = jax.numpy.stack([jax.random.key(1), jax.random.key(2)])
    runs = []
    for policy in (actor2, lambda obs, key: actor2(obs, key)):
        with BatchedEnv("run", num_envs=4, seed=[0, 1], num_threads=1) as env:
            runs.append(env.rollout(policy, 40, keys))
    jax.tree.map(np.testing.assert_array_equal, runs[0], runs[1])
    det = policy_fn(Policy(net.apply, params), deterministic=True)
    with pytest.raises(ValueError, match="deterministic actor takes no noise"):
        det.act_with_noise(np.zeros((1, 17), np.float32), np.zeros((1, 6), np.float32))


def test_actions_are_clipped():
    env = BatchedEnv("run", num_envs=2, seed=0)
    big = lambda obs, key: np.full((2, 6), 3.0)
    traj = env.rollout(big, 2, jax.random.key(0))
    np.testing.assert_array_equal(traj.action, np.ones((2, 2, 6)))
    # ctrl cost of the clipped action: 0.1 * 6 * 1 = 0.6
    np.testing.assert_allclose(traj.reward, traj.x_velocity - 0.6, rtol=1e-12)


def test_bad_inputs():
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        BatchedEnv("run", num_envs=0)
    with pytest.raises(ValueError, match="unknown task 'sprint'"):
        BatchedEnv("sprint", num_envs=2)
    env = BatchedEnv("run", num_envs=2, seed=0)
    with pytest.raises(ValueError, match=r"action has shape \(2, 5\), expected \(2, 6\)"):
        env.rollout(lambda obs, key: np.zeros((2, 5)), 3, jax.random.key(0))
    with pytest.raises(ValueError, match=r"action has shape \(6,\)"):
        env.step(np.zeros(6))

    def nan_at_step_2(obs, key, calls=[0]):  # noqa: B006 - call counter
        calls[0] += 1
        a = np.zeros((2, 6))
        if calls[0] == 3:
            a[1, 4] = np.nan
        return a

    with pytest.raises(
        ValueError, match="policy at step 2: action contains non-finite.*env 1, dim 4"
    ):
        env.rollout(nan_at_step_2, 5, jax.random.key(0))
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.full((2, 6), np.inf))
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        env.rollout(nan_at_step_2, 0, jax.random.key(0))


def test_float32_dtype():
    with BatchedEnv("run", num_envs=2, seed=0, dtype=np.float32) as env:
        traj = env.rollout(prefrl.rollout.random_policy(6), 3, jax.random.key(0))
    assert traj.obs.dtype == np.float32 and traj.reward.dtype == np.float32
    with BatchedEnv("run", num_envs=2, seed=0) as env:
        traj64 = env.rollout(prefrl.rollout.random_policy(6), 3, jax.random.key(0))
    np.testing.assert_allclose(traj.obs, traj64.obs, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- MJX backend
# MJX compiles slowly on CPU (tens of seconds for one step function), so one
# compiled rollout is shared by the MJX tests: B = 2, T = 8, episodes of 6 steps.
MJX_EPISODE = 6
MJX_T = 8
# Tolerance for float32 MJX vs float64 MuJoCo C. With jax_enable_x64 the two
# agree to ~1e-11 over 12 steps (test_mjx_matches_mujoco_c_in_float64), so the
# gap is float32 rounding (eps 1.2e-7 on values up to ~20) amplified by the
# stiff contact dynamics (5 physics steps per control step) and fed back
# through the policy; measured in this setup: max |Δobs| = 2.3e-4, |Δreward|
# = 1.5e-5 over the 6 steps compared. 2e-3 leaves a ~10x margin yet still
# fails for any real modelling difference (a wrong frame skip, reward or
# observation layout moves these numbers by O(0.1) or more within one step).
MJX_ATOL = 2e-3


def _mjx_policy():
    net = GaussianPolicy(action_dim=6, hidden=(16, 16))
    params = net.init(jax.random.key(5), np.zeros((1, 17), np.float32))
    # Scale the (0.01-initialised) mean layer so actions are O(1), not ~0.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 100.0 if "Dense_2" in jax.tree_util.keystr(path) else x, params
    )
    return policy_from_params(net.apply, params, deterministic=True)


@pytest.fixture(scope="module")
def mjx_case():
    from prefrl.envs import mjx as mjx_env

    spec = dataclasses.replace(make_task("run"), episode_length=MJX_EPISODE)
    policy = _mjx_policy()
    with BatchedEnv(spec, num_envs=2, seed=0, num_threads=1) as env:
        env.reset()
        cpu = env.rollout(policy, MJX_T, jax.random.key(0))
    model = mjx_env.make_model()
    # forward=False: mjx.step recomputes everything from (qpos, qvel); saves a compile.
    state = jax.vmap(lambda q, v, k: mjx_env.from_state(model, q, v, k, forward=False))(
        cpu.qpos[0].astype(np.float32),
        cpu.qvel[0].astype(np.float32),
        jax.random.split(jax.random.key(1), 2),
    )
    run = jax.jit(prefrl.rollout.mjx_rollout, static_argnums=(0, 1, 3))
    final_state, mjx_traj = run(spec, policy, state, MJX_T, jax.random.key(0))
    return spec, cpu, jax.tree.map(np.asarray, mjx_traj), final_state


def test_mjx_agrees_with_cpu_backend(mjx_case):
    spec, cpu, mjx_traj, _ = mjx_case
    ep = slice(0, MJX_EPISODE)  # the first episode; resets draw different noise per backend
    for name in ("obs", "next_obs", "action", "x_velocity", "reward", "qpos", "qvel"):
        got, want = getattr(mjx_traj, name), getattr(cpu, name)
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got[ep], want[ep], rtol=0, atol=MJX_ATOL, err_msg=name)
    assert np.abs(cpu.x_velocity[ep]).max() > 0.05  # the comparison is not of a resting body
    np.testing.assert_allclose(
        mjx_traj.reward, spec.reward(mjx_traj.x_velocity, mjx_traj.action), rtol=1e-6
    )


def test_mjx_truncation_contract(mjx_case):
    spec, cpu, mjx_traj, final_state = mjx_case
    expected = np.zeros((MJX_T, 2), bool)
    expected[MJX_EPISODE - 1] = True
    np.testing.assert_array_equal(mjx_traj.truncated, expected)
    np.testing.assert_array_equal(cpu.truncated, expected)
    assert not mjx_traj.terminated.any()
    last = MJX_EPISODE - 1
    # next_obs at the truncation step is the true final state (agrees with the CPU backend) ...
    np.testing.assert_allclose(mjx_traj.next_obs[last], cpu.next_obs[last], atol=MJX_ATOL)
    # ... and the next row is a fresh reset: qpos within qpos0 ± 0.1, not the final state.
    from prefrl.envs.mjx import _mj_model

    assert np.all(np.abs(mjx_traj.qpos[last + 1] - _mj_model().qpos0) <= 0.1 + 1e-6)
    assert np.abs(mjx_traj.obs[last + 1] - mjx_traj.next_obs[last]).max() > 0.1
    np.testing.assert_array_equal(mjx_traj.next_obs[last + 1 : -1], mjx_traj.obs[last + 2 :])
    np.testing.assert_array_equal(np.asarray(final_state.steps), [MJX_T - MJX_EPISODE] * 2)


@pytest.mark.slow
def test_mjx_matches_mujoco_c_in_float64():
    """With x64 MJX follows MuJoCo C to ~1e-11: the float32 gap above is rounding only."""
    from prefrl.envs import mjx as mjx_env

    T = 12
    actions = np.random.default_rng(0).uniform(-1, 1, (T, 1, 6))
    with BatchedEnv("run", num_envs=1, seed=0, num_threads=1) as env:
        env.reset()
        cpu = env.rollout(ReplayPolicy(actions), T, jax.random.key(0))
    with jax.enable_x64(True):
        model = mjx_env.make_model()
        state = mjx_env.from_state(model, cpu.qpos[0, 0], cpu.qvel[0, 0], jax.random.key(0))
        state = state._replace(
            data=jax.tree.map(
                lambda x: x.astype(np.float64) if np.issubdtype(x.dtype, np.floating) else x,
                state.data,
            )
        )
        step = jax.jit(lambda s, a: mjx_env.step(model, "run", s, a))
        for t in range(T):
            state, out = step(state, np.asarray(actions[t, 0]))
            np.testing.assert_allclose(out["next_obs"], cpu.next_obs[t, 0], rtol=0, atol=1e-9)


@pytest.mark.slow
def test_mjx_reset_batch_distribution():
    """MJX resets: qpos0 + U(-0.1, 0.1), qvel = 0.1 N(0, 1), independent per env.

    Slow: compiles mjx.forward (~20 s of CPU here).
    """
    from prefrl.envs import mjx as mjx_env

    model = mjx_env.make_model()
    state = jax.jit(lambda k: mjx_env.reset_batch(model, "run", k, 64))(jax.random.key(0))
    qpos, qvel = np.asarray(state.data.qpos), np.asarray(state.data.qvel)
    noise = qpos - mjx_env._mj_model().qpos0
    assert np.all(np.abs(noise) <= 0.1)
    # U(-0.1, 0.1) has std 0.1/sqrt(3) = 0.0577; 576 draws -> standard error ~0.002
    assert abs(noise.std() - 0.0577) < 0.01
    assert abs(qvel.std() - 0.1) < 0.015  # 0.1 N(0, 1): sd 0.1, s.e. of the sd ~0.003
    assert len({row.tobytes() for row in qpos}) == 64
    np.testing.assert_array_equal(np.asarray(state.steps), np.zeros(64))
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        mjx_env.reset_batch(model, "run", jax.random.key(0), 0)


def test_bench_rollout_smoke(tmp_path, capsys):
    """`prefrl bench rollout` with tiny sizes: one JSON line, EnvPool columns when installed."""
    import importlib.util
    import json

    from prefrl.bench import rollout as bench

    out = tmp_path / "rollout.json"
    args = ["--num-envs", "2", "4", "--steps", "3", "--repeats", "1", "--gym", "off"]
    assert bench.main([*args, "--out", str(out)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line == json.loads(out.read_text())
    assert [row["num_envs"] for row in line["results"]] == [2, 4]
    assert line["prefrl_env_steps_per_s@4"] > 0 and line["ratio_vs_raw_mujoco@2"] > 0
    if importlib.util.find_spec("envpool") is not None:
        assert line["envpool_sync_env_steps_per_s@2"] > 0
        assert line["envpool_async_env_steps_per_s@4"] > 0
        assert set(line["meets_targets"]) == {"2", "4"}
    else:
        assert line["envpool"] is None and not any("envpool_sync" in k for k in line)
    with pytest.raises(ValueError, match="--num-envs must be >= 1"):
        bench.main(["--num-envs", "0"])
