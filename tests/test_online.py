"""The online preference loop (prefrl.loops.online) on a 1-D point mass: no MuJoCo, tiny sizes."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppo_toy import PointMassBatchedEnv

from prefrl import oracles
from prefrl.data.buffers import filled
from prefrl.learners import ppo
from prefrl.learners import reward_model as rm
from prefrl.loops import online
from prefrl.loops.online import registry


class MarkerEnv(PointMassBatchedEnv):
    """The point mass with a third observation: how many rollouts this env has made.

    Every segment therefore carries the number of the rollout that produced it.
    """

    obs_dim = 3

    def __init__(self, num_envs: int, seed: int):
        super().__init__(num_envs, seed)
        self.calls = 0

    def rollout(self, policy_fn, num_steps, key):
        self.calls += 1
        marker = float(self.calls)
        # (the marker counts this env's rollouts; state_dict carries it across a resume)
        traj = super().rollout(lambda obs, k: policy_fn(_mark(obs, marker), k), num_steps, key)
        return traj.replace(obs=_mark(traj.obs, marker), next_obs=_mark(traj.next_obs, marker))


    def state_dict(self):
        return {**super().state_dict(), "calls": np.asarray(self.calls)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.calls = int(state["calls"])


def _raw(x):
    # Arrays as NumPy (PRNG keys as their key data) for bitwise comparisons.
    if jnp.issubdtype(jnp.asarray(x).dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def _mark(obs, marker: float):
    obs = np.asarray(obs)
    return np.concatenate([obs, np.full((*obs.shape[:-1], 1), marker, obs.dtype)], -1)


CONFIG = online.OnlineConfig(
    task="run", total_steps=8 * 10 * 12, num_envs=8, rollout_steps=10, label_budget=40,
    refit_every=3, segment_length=5, segment_stride=5, pool_capacity=64, initial_fit_steps=20,
    heldout_queries=16, eval_every=0, eval_episodes=2, progress=False, oversample=4,
)
PPO = ppo.PPOConfig(num_minibatches=2, num_epochs=2, policy_hidden=(16,), value_hidden=(16,))
REWARD = online.default_reward_config(hidden=(16,), ensemble_size=2, num_steps=10, eval_every=10,
                                      batch_size=16, chunk_pairs=16)
PROBE_OBS = jnp.asarray(np.random.default_rng(0).normal(size=(32, 3)), jnp.float32)
PROBE_ACT = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, size=(32, 1)), jnp.float32)


def _train(config=CONFIG, oracle=None, callback=None, **kwargs):
    return online.train(config, PPO, REWARD, oracle, callback=callback,
                        env_factory=lambda n, s: MarkerEnv(n, s), **kwargs)


@pytest.fixture(scope="module")
def recorded():
    seen = []

    def callback(state, record):
        pool = state.pool
        rows = np.asarray(filled(pool))
        markers = np.asarray(pool.data.obs)[rows][:, :, 2]
        seen.append({
            "record": record,
            "update": record["update"],
            "tags": np.asarray(pool.data.tag)[rows].copy(),
            "markers": markers.copy(),
            "newest_marker": float(pool.data.obs[(int(pool.head) - 1) % pool.capacity, 0, 2]),
            "reward": state.reward,
        })

    result = _train(callback=callback)
    for s in seen:
        s["probe"] = np.asarray(rm.reward_fn(result["reward_model"], s["reward"])(PROBE_OBS,
                                                                                PROBE_ACT))
    return result, seen


def test_schedule_of_the_run_spends_the_budget_exactly(recorded):
    result, seen = recorded
    assert sum(result["schedule"]) == CONFIG.label_budget
    assert result["labels_used"] == CONFIG.label_budget == int(result["state"].labels.count)
    assert [s["record"]["labels"] for s in seen] == result["schedule"]
    assert len(seen) == len(CONFIG.round_updates()) == 4


def test_pool_segments_come_from_the_current_policys_rollouts(recorded):
    _, seen = recorded
    for s in seen:
        # Every segment's marker is the rollout (= PPO update) that produced it …
        np.testing.assert_array_equal(s["markers"], np.broadcast_to(
            s["tags"][:, None].astype(np.float32), s["markers"].shape))
        # … and the newest segments come from this round's rollout.
        assert s["newest_marker"] == s["update"]


def test_refits_reach_ppo_without_recompiling(recorded):
    result, seen = recorded
    # r̂ on a fixed batch changes at every refit …
    for a, b in zip(seen, seen[1:], strict=False):
        assert not np.allclose(a["probe"], b["probe"])
    # … and PPO's jitted update compiled once for the whole run.
    assert result["ppo_update"]._cache_size() == 1


def test_round_records_hold_the_logged_quantities(recorded):
    _, seen = recorded
    last = seen[-1]["record"]
    for key in ("labels_used", "true_reward", "reward_pearson", "heldout_acc_partial_return",
                "fit_train_loss", "value_loss_after", "value_loss_before", "proxy_reward",
                "wall"):
        assert key in last, key
    assert set(last["wall"]) >= {"rollout_s", "ppo_s", "select_label_s", "fit_s"}


def test_no_leak_true_rewards_reach_only_the_oracle(recorded, monkeypatch):
    """Scramble the rewards the policy learner's batch carries: the run's results do not change."""
    result, _ = recorded
    real = registry.POLICY_LEARNERS["ppo"]

    def scrambled(**kwargs):
        learner = real.make(**kwargs)

        def update(state, traj):
            noise = jax.random.normal(jax.random.key(7), traj.reward.shape) * 100.0
            return learner.update(state, traj.replace(reward=noise))

        return learner._replace(update=update)

    monkeypatch.setitem(registry.POLICY_LEARNERS, "ppo_scrambled",
                        registry.PolicyLearnerSpec(scrambled, "PPO fed noise as the reward"))
    other = _train(dataclasses.replace(CONFIG, policy_learner="ppo_scrambled"))
    same = jax.tree.map(lambda a, b: np.array_equal(_raw(a), _raw(b)),
                        result["ppo_state"].policy_params, other["ppo_state"].policy_params)
    assert all(jax.tree.leaves(same))
    np.testing.assert_array_equal(result["state"].labels.data.label,
                                  other["state"].labels.data.label)


def test_label_noise_is_the_offline_oracle_function(monkeypatch):
    """Online labels come from prefrl.oracles.label_traced with the run's own oracle config."""
    noisy = oracles.OracleConfig(mistake_prob=0.3, equal_threshold=0.05)
    configs = []
    real = oracles.label_traced

    def spy(config, *args, **kwargs):
        configs.append(config)
        return real(config, *args, **kwargs)

    monkeypatch.setattr(oracles, "label_traced", spy)
    config = dataclasses.replace(CONFIG, total_steps=8 * 10 * 2, heldout_queries=0)
    result = _train(config, oracle=noisy)
    assert noisy in configs  # the training labels (traced once)
    labels = result["state"].labels
    n = int(labels.count)
    assert n == config.label_budget
    assert set(np.unique(np.asarray(labels.data.label)[:n])) <= {0.0, 0.5, 1.0}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"label_budget": 0}, "label_budget"),
        ({"selection": "best"}, "selection"),
        ({"schedule": "linear"}, "schedule"),
        ({"segment_length": 11}, "longer than the rollout"),
        ({"initial_fraction": 1.5}, "initial_fraction"),
        ({"valid_fraction": 0.7}, "valid_fraction"),
    ],
)
def test_bad_options_are_refused_before_any_work(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(CONFIG, **change)


def test_regret_oracle_without_an_expert_critic_is_refused():
    with pytest.raises(ValueError, match="expert critic"):
        _train(oracle=oracles.OracleConfig(model="regret", discount=0.99))


def test_killed_run_resumes_to_the_same_final_state(recorded, tmp_path):
    """Stop after update 5 (checkpoint at 4), run again: equal to an uninterrupted run."""
    result, _ = recorded
    config = dataclasses.replace(CONFIG, out_dir=str(tmp_path), checkpoint_every=2)
    partial = _train(config, stop_after_updates=5)
    assert partial["updates"] == 5 and (tmp_path / "last.npz").exists()
    assert not (tmp_path / "result.json").exists()
    resumed = _train(config)
    for a, b in ((result["ppo_state"], resumed["ppo_state"]),
                 (result["state"], resumed["state"])):
        same = jax.tree.map(lambda x, y: np.array_equal(_raw(x), _raw(y)), a, b)
        assert all(jax.tree.leaves(same))
    lines = (tmp_path / "rounds.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [0, 1, 2, 3]  # none repeated
    assert resumed["labels_used"] == CONFIG.label_budget
    # Running a finished run again trains nothing and keeps its final evaluation.
    again = _train(config)
    assert again["final"]["mean_return"] == resumed["final"]["mean_return"]
    assert json.loads((tmp_path / "result.json").read_text())["final"]["mean_return"] == (
        resumed["final"]["mean_return"])



@pytest.mark.slow
def test_online_labels_beat_a_fixed_random_policy_pool_on_target_speed():
    """Christiano et al.'s ablation at a small budget: the same labels, queried before any RL
    from the initial (random) policy, give a reward that PPO exploits past v* = 2."""
    def final_return(**changes):
        config = online.OnlineConfig(task="target-speed", total_steps=400_000, label_budget=300,
                                     eval_every=0, eval_episodes=2, progress=False, seed=3,
                                     **changes)
        result = online.train(config)
        return result["final"]["mean_return"]

    online_return = final_return()
    offline_return = final_return(initial_fraction=1.0, initial_rollouts=8)
    assert online_return > offline_return + 500, (online_return, offline_return)


def test_regret_critic_learner_adds_the_critics_value_terms(tmp_path):
    """reward_learner='regret_critic': the fit's logits carry σ·(γ^k V(s_k) − V(s_0))."""
    from prefrl.loops.online import cpu

    config = dataclasses.replace(CONFIG, reward_learner="regret_critic", total_steps=8 * 10 * 7)
    seen = []
    built = {}

    def callback(state, record):
        seen.append({"record": dict(record), "state": state})

    result = _train(config, callback=callback)
    built = cpu._build_cached(cpu._shape_key(config), PPO, REWARD, oracles.OracleConfig(),
                              (3, 1, 1, 1))
    assert result["labels_used"] == config.label_budget
    assert seen[0]["record"]["critic_offset_std"] == 0.0  # no critic of r̂ before a fit
    later = seen[-1]
    assert later["record"]["critic_offset_std"] > 0
    state = later["state"]
    offsets, scale = jax.jit(built.core.logit_offsets)(state)
    # By hand from PPO's critic: σ of r̂ times the difference of the two segments' gaps.
    value = jax.jit(ppo.make_acting(PPO, 1).value)
    d, n = state.labels.data, int(state.labels.count)
    g = PPO.discount ** config.segment_length
    gap = [g * value(state.policy, getattr(d, f"final_obs_{i}")[:n])
           - value(state.policy, getattr(d, f"obs_{i}")[:n, 0]) for i in (1, 2)]
    assert float(scale) == float(state.reward.reward_std)
    np.testing.assert_allclose(offsets[:n], float(scale) * (gap[0] - gap[1]), rtol=1e-4,
                               atol=1e-5)
    assert result["reward_model"].config.discount == PPO.discount  # Σ γ^t r̂, the critic's γ
    # s_k is stored per labelled segment: same rollout (marker) as the segment.
    np.testing.assert_array_equal(d.final_obs_1[:n, 2], d.obs_1[:n, 0, 2])
    # The reward config's γ must agree with PPO's; old names warn and keep working.
    with pytest.raises(ValueError, match="policy's γ"):
        online.train(config, PPO, dataclasses.replace(REWARD, discount=0.5), None,
                     env_factory=lambda n, s: MarkerEnv(n, s))
    with pytest.raises(ValueError, match="reward_learner"):
        dataclasses.replace(CONFIG, reward_learner="bogus")
    with pytest.warns(FutureWarning, match="regret_critic"):
        registry._warned.discard("regret")
        assert registry.reward_learner("regret").name == "regret_critic"
    # A killed run resumes to the same rounds (critic terms and held-out scores included).
    files = dataclasses.replace(config, out_dir=str(tmp_path), checkpoint_every=2)
    _train(files, stop_after_updates=5)
    resumed = _train(files)
    keys = ("critic_offset_std", "fit_train_loss", "heldout_acc_partial_return")
    assert [[r.get(k) for k in keys] for r in resumed["rounds"]] == [
        [r.get(k) for k in keys] for r in result["rounds"]]


def test_regret_sf_learner_keeps_a_snapshot_library_and_resumes(tmp_path):
    """reward_learner='regret_sf': Π = the last rounds' rollouts (the first fills every slot),
    ψ refitted before each refit, the γ of the labels (the policy's for partial return), and
    an exact resume with the library in last.npz."""
    config = dataclasses.replace(CONFIG, reward_learner="regret_sf", total_steps=8 * 10 * 10,
                                 out_dir=str(tmp_path), checkpoint_every=2)
    seen = []

    def callback(state, record):
        lib = state.library
        seen.append({"record": dict(record), "count": int(lib.count), "head": int(lib.head),
                     "markers": np.asarray(lib.data.obs[:, :, 0, 2]),
                     "newest": float(state.pool.data.obs[(int(state.pool.head) - 1)
                                                         % state.pool.capacity, 0, 2])})

    reward = dataclasses.replace(REWARD, library_size=3)  # a library of 3 snapshots
    result = online.train(config, PPO, reward, None, callback=callback,
                          env_factory=lambda n, s: MarkerEnv(n, s))
    fitted = result["reward_model"].config
    assert fitted.library_size == 3 and fitted.discount == PPO.discount
    assert registry.reward_learner("regret_sf").configure(REWARD, 0.99, 1.0).library_size == (
        registry.DEFAULT_LIBRARY_SIZE)
    # A library size given with the reward options (the CLI: γ still 1 there) is kept; γ is set.
    given = registry.reward_learner("regret_sf").configure(rm.RewardModelConfig(library_size=1),
                                                           0.99, 0.9)
    assert (given.library_size, given.discount) == (1, 0.9)
    assert len(seen) >= 3 and all(np.isfinite(s["record"]["successor_loss"]) for s in seen)
    first = seen[0]["markers"]  # [Π, S]: one rollout's marker in every slot
    assert first.min() == first.max() == seen[0]["newest"]
    for s in seen[1:]:
        slot = (s["head"] - 1) % fitted.library_size
        assert np.all(s["markers"][slot] == s["newest"])  # the newest rollout, whole
    assert len(np.unique(seen[-1]["markers"][:, 0])) == 3  # three rounds' policies
    # Killed after update 5 and run again: the same rounds, bit for bit.
    other = tmp_path / "resumed"
    files = dataclasses.replace(config, out_dir=str(other))
    resume = lambda **kw: online.train(files, PPO, reward, None,
                                       env_factory=lambda n, s: MarkerEnv(n, s), **kw)
    resume(stop_after_updates=5)
    resumed = resume()
    keys = ("successor_loss", "fit_train_loss", "heldout_acc_partial_return")
    assert [[r.get(k) for k in keys] for r in resumed["rounds"]] == [
        [r.get(k) for k in keys] for r in result["rounds"]]
    same = jax.tree.map(lambda x, y: np.array_equal(_raw(x), _raw(y)),
                        result["state"].library, resumed["state"].library)
    assert all(jax.tree.leaves(same))
