"""The online core (prefrl.loops.online.core): one round for both backends; registries; golden."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppo_toy import PointMassBatchedEnv

from prefrl import oracles
from prefrl.data import queries
from prefrl.data.buffers import filled, make_ring_buffer
from prefrl.learners import ppo
from prefrl.learners import reward_model as rm
from prefrl.loops import online
from prefrl.loops.online import core as core_lib
from prefrl.loops.online import cpu, registry
from prefrl.param_scheme import unflatten_dict
from prefrl.types import Trajectory

GOLDEN = Path(__file__).parent / "data" / "online_refit_golden.npz"


# --------------------------------------------------------------------------- ring buffer

def test_ring_buffer_fifo_partial_adds_and_uniform_samples():
    buf = make_ring_buffer(5)
    state = buf.init({"x": jnp.zeros(2), "t": jnp.int32(0)})
    # Only the first 2 of 3 items are written (a traced count): rows 0, 1; the third is dropped.
    state, rows = jax.jit(buf.add)(state, {"x": jnp.ones((3, 2)), "t": jnp.arange(3)}, 2)
    np.testing.assert_array_equal(rows, [0, 1, 5])
    assert int(state.count) == 2 and int(state.head) == 2
    # Four more: rows 2, 3, 4 then 0 (the oldest replaced).
    state, rows = buf.add(state, {"x": jnp.ones((4, 2)), "t": jnp.arange(4) + 10})
    np.testing.assert_array_equal(rows, [2, 3, 4, 0])
    np.testing.assert_array_equal(state.data["t"], [13, 1, 10, 11, 12])
    assert int(state.count) == 5 and bool(filled(state).all())
    draws = buf.sample(state, jax.random.key(0), 2000)["t"]
    assert set(np.unique(draws)) == {1, 10, 11, 12, 13}  # every filled row, nothing else
    with pytest.raises(ValueError, match="capacity"):
        make_ring_buffer(0)
    with pytest.raises(ValueError, match="do not fit"):
        buf.add(state, {"x": jnp.ones((6, 2)), "t": jnp.arange(6)})


# --------------------------------------------------------------------------- CPU vs MJX

K, B, T = 4, 4, 8
CHEETAH = online.OnlineConfig(
    task="run", total_steps=B * T * 4, num_envs=B, rollout_steps=T, segment_length=K,
    segment_stride=K, pool_capacity=32, refit_every=2, label_budget=12, schedule="constant",
    initial_fraction=0.5, initial_fit_steps=10, heldout_queries=8, selection="disagreement",
    oversample=2, eval_every=0, eval_episodes=2, progress=False)
TINY_PPO = ppo.PPOConfig(num_epochs=2, num_minibatches=2, policy_hidden=(16, 16),
                         value_hidden=(16, 16))
TINY_REWARD = online.default_reward_config(hidden=(16, 16), ensemble_size=2, batch_size=8,
                                           num_steps=5, eval_every=5, chunk_pairs=8)
SAMPLED = oracles.OracleConfig(temperature=1.0)


def _cheetah_rollout(seed: int) -> Trajectory:
    """A recorded-looking ``[T, B, …]`` rollout of half-cheetah shapes (episode end at t = 5)."""
    rng = np.random.default_rng(seed)
    f = lambda *shape: jnp.asarray(rng.normal(size=(T, B, *shape)), jnp.float32)
    truncated = np.zeros((T, B), bool)
    truncated[5, 1] = True  # column 1's window [4, 8) is masked after t = 5
    return Trajectory(obs=f(17), action=jnp.tanh(f(6)), reward=f(), next_obs=f(17),
                      terminated=jnp.zeros((T, B), bool), truncated=jnp.asarray(truncated),
                      x_velocity=f(), qpos=f(9), qvel=f(9))


def test_cpu_and_mjx_rounds_agree():
    """The same rollouts and keys through both backends: the same queries, labels and fit.

    MJX: ``OnlineTrainer.labelled_round`` (what its compiled round runs between the
    rollout and the update). CPU: ``prefrl.loops.online.cpu``'s round (jitted select,
    labeller, add → refit, each its own jit). One segmentation for both: the fixed grid
    of ``grid_segments``, windows that cross an episode end masked after it.
    """
    pytest.importorskip("mujoco.mjx")
    from prefrl.loops.online import mjx

    trainer = mjx.make_trainer(CHEETAH, TINY_PPO, TINY_REWARD, SAMPLED)
    inputs = mjx.default_inputs(TINY_PPO, TINY_REWARD, SAMPLED)
    state = jax.jit(trainer.init)(jax.random.key(3), inputs)
    built = cpu._build_uncached(cpu._shape_key(CHEETAH), TINY_PPO, TINY_REWARD, SAMPLED,
                                (17, 6, 9, 9), None)
    observe = jax.jit(built.core.observe)
    cpu_state = state.replace(policy=built.policy.init(jax.random.key(0)), inputs=None)
    for update in (1, 2):  # two rollouts in the pool, a round on the second
        traj = _cheetah_rollout(update)
        state, rows = observe(state, traj, jnp.int32(update))
        cpu_state, cpu_rows = observe(cpu_state, traj, jnp.int32(update))
    np.testing.assert_array_equal(rows, cpu_rows)
    # Rows are ordered (column, start): column 1's window at t = 4 ends its episode at t = 5.
    np.testing.assert_array_equal(state.pool.data.mask[int(rows[3])], [1, 1, 0, 0])
    for r in (0, 1):
        state, metrics = jax.jit(trainer.labelled_round)(state, traj, rows, jnp.int32(r))
        cpu_state, record = cpu._round(CHEETAH, built, cpu_state, r, 2 + r, traj, rows,
                                       cpu.RunLog())
        got, want = cpu_state.labels, state.labels
        assert int(got.count) == int(want.count) == 6 * (r + 1)
        for name in ("index_1", "index_2", "label", "keep", "split", "round", "obs_1",
                     "action_2", "mask_1", "final_obs_2"):
            np.testing.assert_array_equal(getattr(got.data, name), getattr(want.data, name),
                                          err_msg=name)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4),
                     cpu_state.reward.params, state.reward.params)
        np.testing.assert_allclose(cpu_state.reward.reward_std, state.reward.reward_std,
                                   rtol=1e-4)
        np.testing.assert_allclose(record["heldout_acc_partial_return"],
                                   metrics["heldout_acc_partial_return"], atol=1e-6)
    # The reward reached each backend's policy learner.
    assert state.policy.ppo.reward_params is not None
    assert cpu_state.policy.reward_params is not None


# --------------------------------------------------------------------------- golden refit

def test_refit_equals_the_pre_refactor_refit_on_a_recorded_pool():
    """Recorded from the online loop before the core existed (commit 398efb3's
    ``online_run._fit`` + ``_standardize``, by ``tests/data/record_online_refit_golden.py``):
    the same labels, keys and warm start give the same reward model to atol 1e-6."""
    arrays = dict(np.load(GOLDEN))
    reward_config = online.default_reward_config(hidden=(16,), ensemble_size=2, num_steps=10,
                                                 eval_every=10, batch_size=16, chunk_pairs=16)
    config = online.OnlineConfig(num_envs=8, rollout_steps=10, segment_length=5,
                                 segment_stride=5, pool_capacity=24, label_budget=24,
                                 initial_fit_steps=20, heldout_queries=0)
    core = core_lib.make_core(config, reward_config, policy_discount=0.99, oracle_discount=1.0,
                              counts=np.asarray([14]))
    state = core.init(jax.random.key(0), None, 3, 1, 1, 1)
    names = ("obs_1", "action_1", "mask_1", "obs_2", "action_2", "mask_2", "final_obs_1",
             "final_obs_2", "label", "keep", "split")
    data = state.labels.data.replace(**{n: jnp.asarray(arrays[f"labels.{n}"]) for n in names})
    count = int(arrays["labels.count"])
    state = state.replace(labels=state.labels.replace(data=data, count=jnp.int32(count),
                                                      head=jnp.int32(count)))
    fit_key = jax.random.key(42)
    obs, act = jnp.asarray(arrays["traj_obs"]), jnp.asarray(arrays["traj_act"])
    # The old loop initialised round 0's members inside its first fit, from that fit's key.
    train = core_lib.pair_batch(data, None)
    first_fit_key = jax.random.fold_in(jax.random.fold_in(fit_key, 0), 0)
    init = rm.make(core.fit_config, core.model.network).init(
        jax.random.split(first_fit_key, 3)[0], train)
    refit = jax.jit(core.refit)
    close = lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6)
    probe = jnp.asarray(np.random.default_rng(5).normal(size=(64, 3)), jnp.float32)
    probe_act = jnp.tanh(probe[:, :1])
    state = state.replace(reward=state.reward.replace(params=init.params))
    for r in (0, 1):
        state, _ = refit(state, jax.random.fold_in(fit_key, r), obs, act, jnp.zeros(obs.shape[:2]))
        want = unflatten_dict(arrays, f"params_{r}")
        got = state.reward.params
        # The output bias is not identified by the Bradley–Terry loss (segments of equal
        # length: its gradient is Σ_t 1 − Σ_t 1 = 0 up to rounding, which Adam turns into
        # ±lr steps that differ between compilations); the standardised r̂ cancels it.
        jax.tree.map(close, got["params"]["Dense_0"], want["params"]["Dense_0"])
        close(got["params"]["Dense_1"]["kernel"], want["params"]["Dense_1"]["kernel"])
        close(state.reward.reward_std, arrays[f"std_{r}"])
        old = state.reward.replace(params=want, reward_mean=jnp.asarray(arrays[f"mean_{r}"]),
                                   reward_std=jnp.asarray(arrays[f"std_{r}"]))
        close(rm.reward_fn(core.model, state.reward)(probe, probe_act),
              rm.reward_fn(core.model, old)(probe, probe_act))


# --------------------------------------------------------------------------- registries

class _Env(PointMassBatchedEnv):
    pass


POINT = online.OnlineConfig(
    task="run", total_steps=8 * 10 * 4, num_envs=8, rollout_steps=10, label_budget=24,
    refit_every=2, segment_length=5, segment_stride=5, pool_capacity=48, initial_fit_steps=20,
    heldout_queries=8, eval_every=0, eval_episodes=2, progress=False, oversample=3)
POINT_PPO = ppo.PPOConfig(num_minibatches=2, num_epochs=2, policy_hidden=(16,),
                          value_hidden=(16,))
POINT_REWARD = online.default_reward_config(hidden=(16,), ensemble_size=2, num_steps=10,
                                            eval_every=10, batch_size=16, chunk_pairs=16)


def _point_train(config, **kwargs):
    return online.train(config, POINT_PPO, POINT_REWARD, None,
                        env_factory=lambda n, s: _Env(n, s), **kwargs)


def test_a_learner_and_a_query_rule_defined_here_run_a_cpu_round(monkeypatch):
    """Registered from this file only: no library file knows these names."""
    asked = []

    def most_confident(probs):
        asked.append(probs.shape)  # traced once: the rule is called inside the jitted select
        return jnp.abs(jnp.mean(probs, axis=0) - 0.5)

    def half_gamma(config, policy_discount, oracle_discount):
        return dataclasses.replace(config, discount=0.5)

    queries.register_acquisition("most_confident", most_confident)
    learner = registry.OnlineRewardLearner("rhat_half", "Σ 0.5^t r̂ (a test learner)", half_gamma)
    monkeypatch.setitem(registry.REWARD_LEARNERS, "rhat_half", learner)
    try:
        config = dataclasses.replace(POINT, selection="most_confident",
                                     reward_learner="rhat_half")
        result = _point_train(config)
    finally:
        queries.ACQUISITIONS.pop("most_confident", None)
    assert result["labels_used"] == 24 and asked  # the rule scored candidates
    assert result["reward_model"].config.discount == 0.5
    assert all(np.isfinite(r["fit_train_loss"]) for r in result["rounds"])
    with pytest.raises(ValueError, match="most_confident"):
        dataclasses.replace(POINT, selection="most_confident")  # gone with the test


def _replay_learner(**kwargs) -> registry.PolicyLearner:
    """An off-policy test double: a replay buffer in its state, many updates per rollout.

    A linear-Gaussian policy a = tanh(w·s) + noise; each update stores the rollout's
    transitions, then takes ``steps`` gradient steps, each on a batch sampled from the
    buffer, ascending r̂(s, tanh(w·s)) through the learned reward in its state.
    """
    model = kwargs["reward_model"]
    obs_dim, act_dim = kwargs["obs_dim"], kwargs["act_dim"]
    buffer = make_ring_buffer(200)
    steps = 3

    def init(key):
        example = {"obs": jnp.zeros(obs_dim), "action": jnp.zeros(act_dim)}
        return {"w": jnp.zeros((obs_dim, act_dim)), "buffer": buffer.init(example),
                "reward": None, "key": key, "updates": jnp.int32(0)}

    def update(state, traj):
        items = {"obs": traj.obs.reshape(-1, obs_dim), "action": traj.action.reshape(-1, act_dim)}
        buf, _ = buffer.add(state["buffer"], jax.tree.map(lambda x: x[-200:], items))

        def objective(w, obs):
            return jnp.mean(rm.reward_fn(model, state["reward"])(obs, jnp.tanh(obs @ w)))

        def step(w, key):
            batch = buffer.sample(buf, key, 32)
            return w + 0.1 * jax.grad(objective)(w, batch["obs"]), None

        key, sub = jax.random.split(state["key"])
        w, _ = jax.lax.scan(step, state["w"], jax.random.split(sub, steps))
        return ({**state, "w": w, "buffer": buf, "key": key,
                 "updates": state["updates"] + steps}, {"nonfinite": ~jnp.all(jnp.isfinite(w))})

    def act(state, deterministic):
        def fn(obs, key):
            mean = np.tanh(np.asarray(obs) @ np.asarray(state["w"]))
            if deterministic:
                return mean
            noise = np.asarray(jax.random.normal(key, mean.shape)) * 0.3
            return np.clip(mean + noise, -1.0, 1.0)
        return fn

    return registry.PolicyLearner(
        init=init, update=update, set_reward=lambda s, r: {**s, "reward": r},
        behaviour=lambda s: act(s, False), greedy=lambda s: act(s, True), critic=None,
        checkpoint_view=lambda s: {**s, "reward": None}, restore=lambda loaded, fresh: loaded,
        discount=0.99)


def test_policy_learner_interface_takes_an_off_policy_learner(monkeypatch, tmp_path):
    monkeypatch.setitem(registry.POLICY_LEARNERS, "replay",
                        registry.PolicyLearnerSpec(_replay_learner, "a test double"))
    seen = []
    config = dataclasses.replace(POINT, policy_learner="replay")
    result = _point_train(config, callback=lambda state, record: seen.append(state))
    final = result["state"].policy
    # Every rollout went into its buffer; 3 gradient steps per rollout; the refitted r̂ in it.
    assert int(final["buffer"].count) == min(200, 4 * 8 * 10)
    assert int(final["updates"]) == 3 * 4
    assert final["reward"] is not None and float(jnp.abs(final["w"]).sum()) > 0
    for state in seen:  # after each round, the policy learner holds that round's r̂
        jax.tree.map(np.testing.assert_array_equal, state.policy["reward"].params,
                     state.reward.params)
    # Resume bit for bit with the test double, too (its buffer is part of the state).
    files = dataclasses.replace(config, out_dir=str(tmp_path), checkpoint_every=1)
    _point_train(files, stop_after_updates=3)
    resumed = _point_train(files)
    jax.tree.map(np.testing.assert_array_equal, resumed["state"].policy["w"], final["w"])


def test_readme_online_registry_example_runs():
    """The README's extension example, verbatim; its registrations are undone afterwards."""
    from _readme import readme_example

    try:
        exec(compile(readme_example("online_registry"), "README.md", "exec"), {})
        assert "margin" in queries.ACQUISITIONS and "rhat_half" in registry.REWARD_LEARNERS
    finally:
        queries.ACQUISITIONS.pop("margin", None)
        registry.REWARD_LEARNERS.pop("rhat_half", None)


def test_settings_diff_lets_a_run_resume_across_a_field_added_with_its_default():
    """A checkpoint written before a config field existed resumes while the field keeps its
    default; any other difference (or a non-default new field) is named."""
    from prefrl.loops.online import files
    from prefrl.loops.online.config import OnlineConfig

    def settings(**reward):
        return files.run_settings(OnlineConfig(), ppo.PPOConfig(),
                                  rm.RewardModelConfig(**reward), oracles.OracleConfig())

    now = settings()
    old = json.loads(json.dumps(now))
    del old["reward_config"]["library_size"], old["reward_config"]["library_fit_steps"]
    assert files.settings_diff(now, old) == []
    assert files.settings_diff(settings(library_size=4, discount=0.9), old) == [
        "reward_config.discount", "reward_config.library_size"]
    assert files.settings_diff(settings(num_steps=7), now) == ["reward_config.num_steps"]
    # Newer checkpoints are not resumed by older code; a removed option is named.
    assert files.settings_diff(old, now) == ["reward_config.library_fit_steps",
                                             "reward_config.library_size"]
    old["oracle"]["removed_option"] = 1
    assert files.settings_diff(now, old) == ["oracle.removed_option"]
