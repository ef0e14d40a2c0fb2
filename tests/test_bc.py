"""Behaviour cloning, and the offline loop's input checks, divergence stop and CLI."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

from prefrl.learners import bc, cpl
from prefrl.loops import offline
from prefrl.networks import GaussianPolicy
from prefrl.types import PreferenceDataset, Segments


def synthetic_dataset(seed: int = 0, num_segments: int = 64, length: int = 6,
                      num_queries: int = 96, obs_dim: int = 1, act_dim: int = 1,
                      slope: float = 0.6) -> PreferenceDataset:
    """Random 1-D segments; the segment whose actions are closer to slope·s is preferred."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (num_segments, length, obs_dim)).astype(np.float32)
    act = rng.uniform(-0.95, 0.95, (num_segments, length, act_dim)).astype(np.float32)
    score = -np.sum((act - slope * obs[..., :1]) ** 2, axis=(-1, -2))
    first = rng.integers(0, num_segments, num_queries)
    second = (first + rng.integers(1, num_segments, num_queries)) % num_segments
    label = (score[first] > score[second]).astype(np.float32)
    zeros = np.zeros((num_segments, length), np.float32)
    segments = Segments(
        obs=obs, action=act, reward=zeros, next_obs=obs, mask=np.ones_like(zeros),
        x_velocity=zeros, qpos=np.zeros((num_segments, length, 2), np.float32),
        qvel=np.zeros((num_segments, length, 2), np.float32),
        source=np.zeros((num_segments, 2), np.int32))
    return PreferenceDataset(segments=segments, first=first.astype(np.int32),
                             second=second.astype(np.int32), labels={"regret": label},
                             label_mask={"regret": np.ones(num_queries, bool)})


SMALL = offline.TrainConfig(num_steps=40, batch_size=16, learning_rate=3e-3, log_every=20,
                            hidden=(16,), validation_fraction=0.25)


# ------------------------------------------------------------ the loss


def test_nll_known_answer_and_mask():
    # −(−1 − 2)/2 = 1.5; the masked −inf step is excluded.
    got = bc.nll_loss(jnp.array([-1.0, -2.0, -jnp.inf]), jnp.array([1.0, 1.0, 0.0]))
    assert float(got) == pytest.approx(1.5)


def test_bc_loss_is_mean_negative_log_density():
    policy = GaussianPolicy(action_dim=2, hidden=(8,), state_dependent_std=True)
    obs = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 5)), jnp.float32)
    action = jnp.asarray(np.random.default_rng(1).uniform(-0.9, 0.9, (3, 4, 2)), jnp.float32)
    mask = jnp.ones((3, 4)).at[:, 3].set(0.0)
    learner = bc.make(bc.BCConfig(), policy, optax.sgd(0.0))
    batch = bc.Batch(obs, action, mask)
    state = learner.init(jax.random.key(0), batch)
    update = jax.jit(learner.update)
    _, metrics = update(state, batch)
    mean, log_std = (np.asarray(x, np.float64) for x in policy.apply(state.params, obs))
    # Change of variables a = tanh(u): log p(a) = Σ_i [log N(atanh a_i) − log(1 − a_i²)].
    a = np.asarray(action, np.float64)
    logp = np.sum(scipy.stats.norm.logpdf(np.arctanh(a), mean, np.exp(log_std))
                  - np.log1p(-a * a), axis=-1)
    expected = -logp[:, :3].mean()  # masked step t = 3 excluded
    assert float(metrics["nll"]) == pytest.approx(expected, rel=1e-4)
    # Garbage in masked steps changes nothing.
    garbage = bc.Batch(obs, action.at[:, 3].set(1.0), mask)
    _, m2 = update(state, garbage)
    assert float(m2["nll"]) == pytest.approx(float(metrics["nll"]), rel=1e-6)


def test_bc_recovers_mean_and_std():
    # Data: a = tanh(0.8 s + 0.1 ε); BC's maximum likelihood is mean 0.8 s, std 0.1.
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (4096, 1)).astype(np.float32)
    act = np.tanh(0.8 * obs + 0.1 * rng.normal(size=obs.shape)).astype(np.float32)
    policy = GaussianPolicy(action_dim=1, hidden=(32,), state_dependent_std=True)
    learner = bc.make(bc.BCConfig(), policy, optax.adam(1e-2))
    data = bc.Batch(jnp.asarray(obs), jnp.asarray(act), jnp.ones(4096))
    state = learner.init(jax.random.key(0), data)

    def step(state, key):
        idx = jax.random.randint(key, (256,), 0, 4096)
        return learner.update(state, jax.tree.map(lambda x: x[idx], data))

    state, _ = jax.jit(lambda s: jax.lax.scan(step, s, jax.random.split(jax.random.key(1),
                                                                        500)))(state)
    grid = jnp.linspace(-0.9, 0.9, 7)[:, None]
    mean, log_std = policy.apply(state.params, grid)
    np.testing.assert_allclose(mean[:, 0], 0.8 * grid[:, 0], atol=0.05)
    np.testing.assert_allclose(np.exp(log_std[:, 0]), 0.1, atol=0.03)


# ------------------------------------------------------------ bad input


def test_dataset_without_actions_is_rejected():
    ds = synthetic_dataset()
    no_actions = ds.replace(segments=ds.segments.replace(
        action=np.zeros(ds.segments.obs.shape[:2] + (0,), np.float32)))
    with pytest.raises(ValueError, match="no actions"):
        offline.train("cpl", no_actions, label_name="regret", config=SMALL,
                      learner_config=cpl.CPLConfig(), seeds=[0])
    with pytest.raises(ValueError, match="no actions"):
        offline.check_dataset(ds.replace(segments=ds.segments.replace(action=None)), "regret")


def test_action_dimension_mismatch_is_rejected():
    ds = synthetic_dataset(act_dim=2)
    policy = GaussianPolicy(action_dim=6, hidden=(8,))
    with pytest.raises(ValueError, match="action dimension 2 differs from the policy's "
                                         "action_dim 6"):
        offline.train("bc", ds, label_name="regret", config=SMALL,
                      learner_config=bc.BCConfig(), seeds=[0], network=policy)


def test_other_bad_input():
    ds = synthetic_dataset()
    with pytest.raises(ValueError, match="no label 'partial_return'"):
        offline.check_dataset(ds, "partial_return")
    bad_obs = np.asarray(ds.segments.obs).copy()
    bad_obs[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="segments.obs holds NaN"):
        offline.check_dataset(ds.replace(segments=ds.segments.replace(obs=bad_obs)), "regret")
    with pytest.raises(ValueError, match="bc_weight > 0"):
        offline.train("cpl_bc", ds, label_name="regret", config=SMALL,
                      learner_config=cpl.CPLConfig(), seeds=[0])
    with pytest.raises(ValueError, match="reference policy"):
        offline.train("dpo", ds, label_name="regret", config=SMALL,
                      learner_config=cpl.DPOConfig(), seeds=[0])
    with pytest.raises(ValueError, match="multiples of log_every"):
        offline.TrainConfig(num_steps=50, log_every=20)


# ------------------------------------------------------------ the loop


def test_offline_loop_vmaps_seeds_deterministically():
    ds = synthetic_dataset()
    a = offline.train("cpl", ds, label_name="regret", config=SMALL,
                      learner_config=cpl.CPLConfig(), seeds=[0, 1])
    b = offline.train("cpl", ds, label_name="regret", config=SMALL,
                      learner_config=cpl.CPLConfig(), seeds=[1, 0])
    assert a.history["pref"]["val_accuracy"].shape == (2, 2)  # [seeds, chunks]
    assert a.num_val_queries == 24 and a.num_train_queries == 72  # 25 % of 96 held out
    # A run depends on its seed only, not on its position in the vmapped batch.
    for x, y in zip(jax.tree.leaves(offline.select_seed(a.params, 1)),
                    jax.tree.leaves(offline.select_seed(b.params, 0)), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # The two seeds differ.
    assert not np.allclose(jax.tree.leaves(a.params)[0][0], jax.tree.leaves(a.params)[0][1])


def test_non_finite_loss_stops_before_anything_is_saved(tmp_path, capsys):
    from prefrl.cli import main
    from prefrl.data import dataset as dataset_io

    path = tmp_path / "data.npz"
    dataset_io.save(path, synthetic_dataset(), task="synthetic")
    out = tmp_path / "policy.npz"
    # α = 1e38: S = α Σ log π overflows float32 to ±inf at the first step.
    code = main(["train", "cpl", "--dataset", str(path), "--out", str(out), "--alpha", "1e38",
                 "--num-steps", "20", "--log-every", "20", "--hidden", "8",
                 "--eval-task", "none", "--seeds", "3"])
    assert code == 1  # a diverged run: a data error, not a usage error
    err = capsys.readouterr().err
    assert "non-finite loss or gradient at pref step 0 (seed 3)" in err
    assert "nothing was saved" in err
    assert not out.exists() and list(tmp_path.iterdir()) == [path]
