"""PPO for several seeds in one process (prefrl.loops.ppo_seeds): equal to one seed at a time."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from prefrl.learners import ppo
from prefrl.loops import ppo as training
from prefrl.loops import ppo_seeds
from prefrl.policies import Policy, policy_fn
from prefrl.rollout import BatchedEnv

TINY = ppo.PPOConfig(num_epochs=2, num_minibatches=2, policy_hidden=(16,), value_hidden=(16,))
SEEDS = (0, 1, 2)


def _config(**kw) -> training.TrainConfig:
    base = dict(task="run", total_steps=4 * 8 * 3, num_envs=4, rollout_steps=8, eval_every=0,
                eval_episodes=2, checkpoint_every=0, out_dir=None, progress=False,
                num_threads=1, snapshots=())
    base.update(kw)
    return training.TrainConfig(**base)


@pytest.fixture(scope="module")
def runs():
    tc = _config()
    together = ppo_seeds.train_seeds(tc, TINY, SEEDS)
    apart = [training.train(_config(seed=s), TINY) for s in SEEDS]
    return together, apart


def test_three_seeds_in_one_batch_equal_single_seed_runs(runs):
    together, apart = runs
    for seed, a, b in zip(SEEDS, together, apart, strict=True):
        assert int(a.state.step) == int(b.state.step) == 3, seed
        leaves_a = jax.tree.leaves((a.state.policy_params, a.state.value_params,
                                    a.state.obs_stats, a.state.return_stats))
        leaves_b = jax.tree.leaves((b.state.policy_params, b.state.value_params,
                                    b.state.obs_stats, b.state.return_stats))
        for x, y in zip(leaves_a, leaves_b, strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)
        assert a.evaluations[-1]["mean_return"] == pytest.approx(
            b.evaluations[-1]["mean_return"], rel=1e-4)
        assert [h["update"] for h in a.history] == [1, 2, 3]


def test_update_is_sharded_over_host_devices_and_results_come_back_to_one(runs):
    """conftest makes two host devices: 3 seeds run as 4 (padded) on 2 shards."""
    assert len(jax.local_devices()) == 2
    shards = ppo_seeds._SeedShards(3)
    assert shards.padded == 4 and shards.sharding is not None
    padded = shards.put({"x": np.array([0.0, 1.0, 2.0, 0.0])})
    assert len(padded["x"].sharding.device_set) == 2
    back = shards.first(lambda tree: tree)(padded)
    np.testing.assert_array_equal(back["x"], [0.0, 1.0, 2.0])
    assert back["x"].sharding.device_set == {jax.local_devices()[0]}
    apart = shards.first(lambda tree: tree, split=True)(padded)
    assert [float(t["x"]) for t in apart] == [0.0, 1.0, 2.0]
    by_seed = ppo_seeds._by_seed({"r": np.arange(6.0).reshape(1, 6)}, 3, 4)["r"]
    np.testing.assert_array_equal(by_seed[:, 0], [[0, 1], [2, 3], [4, 5], [0, 1]])
    together, _ = runs
    for result in together:
        for leaf in jax.tree.leaves(result.state.policy_params):
            assert leaf.sharding.device_set == {jax.local_devices()[0]}
    assert ppo_seeds._SeedShards(1).sharding is None


def test_seeds_differ_from_each_other(runs):
    together, _ = runs
    first = [np.asarray(jax.tree.leaves(r.state.policy_params)[0]) for r in together]
    assert not np.allclose(first[0], first[1])


def test_multi_seed_env_blocks_reset_like_single_seed_envs():
    with BatchedEnv("run", num_envs=6, seed=[3, 5], num_threads=1) as both, \
            BatchedEnv("run", num_envs=3, seed=3, num_threads=1) as a, \
            BatchedEnv("run", num_envs=3, seed=5, num_threads=1) as b:
        np.testing.assert_array_equal(both.reset(), np.concatenate([a.reset(), b.reset()]))


def test_stacked_policy_and_keys_match_each_seed_alone():
    learner = ppo.make(TINY, 17, 6, num_updates=1)
    states = [learner.init(jax.random.key(s)) for s in (0, 1)]
    stacked = jax.tree.map(lambda *x: np.stack(x), *[ppo.policy_bundle(s) for s in states])
    apply = ppo.make_policy_apply(TINY, 6)
    obs = np.random.default_rng(0).normal(size=(8, 17)).astype(np.float32)
    keys = jax.numpy.stack([jax.random.key(10), jax.random.key(11)])
    together = np.asarray(policy_fn(Policy(apply, stacked), stacked=True)(obs, keys))
    for i, s in enumerate(states):
        alone = np.asarray(policy_fn(Policy(apply, ppo.policy_bundle(s)))(obs[4 * i:4 * i + 4],
                                                                         keys[i]))
        np.testing.assert_allclose(together[4 * i:4 * i + 4], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("seeds", "kw", "match"), [
    ((), {}, "at least one"),
    ((1, 1), {}, "distinct"),
    ((0,), {"out_dir": "somewhere"}, "writes no files"),
])
def test_bad_arguments_are_refused(seeds, kw, match):
    with pytest.raises(ValueError, match=match):
        ppo_seeds.train_seeds(_config(**kw), TINY, seeds)


def test_env_seeds_must_split_the_batch():
    with pytest.raises(ValueError, match="equal blocks"):
        BatchedEnv("run", num_envs=5, seed=[0, 1])
