"""Reward-model learner: equivalences, determinism, learning, files and bad input."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reward_fits
from _readme import readme_example
from reward_fits import FIT_MODEL

from prefrl import checkpoints
from prefrl.bench import reward as reward_bench
from prefrl.data import pairs as pair_data
from prefrl.learners import reward_model as rm
from prefrl.loops import active
from prefrl.studies import two_by_two as study

OBS, ACT, K = 3, 2, 4


def random_batch(key, size=12, obs=OBS, act=ACT, length=K, label=None):
    ks = jax.random.split(key, 5)
    if label is None:
        label = jax.random.bernoulli(ks[4], 0.5, (size,)).astype(jnp.float32)
    return rm.PairBatch(
        obs_1=jax.random.normal(ks[0], (size, length, obs)),
        action_1=jax.random.uniform(ks[1], (size, length, act), minval=-1, maxval=1),
        mask_1=jnp.ones((size, length)),
        obs_2=jax.random.normal(ks[2], (size, length, obs)),
        action_2=jax.random.uniform(ks[3], (size, length, act), minval=-1, maxval=1),
        mask_2=jnp.ones((size, length)),
        label=label,
    )


def small_config(**kw):
    base = dict(hidden=(16, 16), ensemble_size=3, chunk_pairs=4, learning_rate=1e-2)
    base.update(kw)
    return rm.RewardModelConfig(**base)


def member(tree, m):
    return jax.tree.map(lambda x: x[m: m + 1], tree)


EQ_CFG = small_config(l2=0.01, label_smoothing=0.1)
# A coupling transform (global-norm clipping) must still act per member.
EQ_OPT = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(1e-2))
EQ_LEARNER = rm.make(EQ_CFG, optimizer=EQ_OPT)
EQ_UPDATE = jax.jit(EQ_LEARNER.update)


def eq_batch(size=10):
    # Chunks of 4 pairs: with 10 pairs the last chunk is padded with weight-0 rows.
    batch = random_batch(jax.random.key(1), size=size)
    weight = jax.random.poisson(jax.random.key(2), 1.0, (3, size)).astype(jnp.float32)
    return batch._replace(weight=weight)


def test_ensemble_update_equals_separate_member_updates():
    batch = eq_batch()
    single = rm.make(dataclass_replace(EQ_CFG, ensemble_size=1), optimizer=EQ_OPT)
    single_update = jax.jit(single.update)
    state = EQ_LEARNER.init(jax.random.key(0), batch)
    for _ in range(2):  # two steps, so Adam's moments matter too
        new_state, metrics = EQ_UPDATE(state, batch)
        for m in range(3):
            s_m = state.replace(params=member(state.params, m),
                                opt_state=member(state.opt_state, m))
            out_m, met_m = single_update(s_m, batch._replace(weight=batch.weight[m: m + 1]))
            chex_close(out_m.params, member(new_state.params, m))
            np.testing.assert_allclose(met_m["loss"][0], metrics["loss"][m], rtol=1e-5)
        state = new_state


def test_update_same_with_and_without_jit():
    batch = eq_batch()
    state = EQ_LEARNER.init(jax.random.key(0), batch)
    eager, m_eager = EQ_LEARNER.update(state, batch)
    jitted, m_jit = EQ_UPDATE(state, batch)
    chex_close(eager.params, jitted.params)
    np.testing.assert_allclose(m_eager["loss"], m_jit["loss"], rtol=1e-6)


def dataclass_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def chex_close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def test_known_loss_with_label_smoothing_and_custom_network():
    # f(s) = Σ_i s_i (a Dense(1) with unit kernel, no actions). Segment 1: two
    # steps with s = 1 -> score 2; segment 2: zeros -> score 0; logit 2, label 1.
    # No smoothing: −log σ(2) = log(1 + e^−2) = 0.126928.
    # Smoothing ε = 0.2: μ' = 0.9 -> 0.9·0.126928 + 0.1·(2 + 0.126928) = 0.326928.
    net = nn.Dense(1, kernel_init=nn.initializers.ones, bias_init=nn.initializers.zeros)
    batch = rm.PairBatch(jnp.ones((1, 2, 1)), jnp.zeros((1, 2, 1)), jnp.ones((1, 2)),
                         jnp.zeros((1, 2, 1)), jnp.zeros((1, 2, 1)), jnp.ones((1, 2)),
                         jnp.ones((1,)))
    for eps, expected in ((0.0, 0.126928), (0.2, 0.326928)):
        cfg = rm.RewardModelConfig(use_action=False, ensemble_size=2, label_smoothing=eps)
        learner = rm.make(cfg, network=net)
        _, metrics = jax.jit(learner.update)(learner.init(jax.random.key(0), batch), batch)
        np.testing.assert_allclose(metrics["loss"], [expected, expected], rtol=1e-5)
        np.testing.assert_allclose(metrics["accuracy"], [1.0, 1.0])


def test_regret_assumption_discounts_the_advantage_sum():
    # f(s) = s (1-d). Steps 1, 1: under regret with γ = 0.5 the score is
    # 1 + 0.5 = 1.5, under partial return (γ = 1) 2; the other segment scores 0.
    # loss = log(1 + e^{−score}): 0.201413 (1.5) and 0.126928 (2).
    net = nn.Dense(1, kernel_init=nn.initializers.ones, bias_init=nn.initializers.zeros)
    batch = rm.PairBatch(jnp.ones((1, 2, 1)), jnp.zeros((1, 2, 1)), jnp.ones((1, 2)),
                         jnp.zeros((1, 2, 1)), jnp.zeros((1, 2, 1)), jnp.ones((1, 2)),
                         jnp.ones((1,)))
    for assumption, gamma, expected in (("regret", 0.5, 0.201413),
                                        ("partial_return", 1.0, 0.126928)):
        cfg = rm.RewardModelConfig(assumption=assumption, discount=gamma, use_action=False,
                                   ensemble_size=1)
        learner = rm.make(cfg, network=net)
        _, metrics = jax.jit(learner.update)(learner.init(jax.random.key(0), batch), batch)
        np.testing.assert_allclose(metrics["loss"], [expected], rtol=1e-5)


def test_warm_members_share_init_and_reward_fn_uses_averaged_weights():
    batch = random_batch(jax.random.key(4))
    cfg = small_config(combine="warm")
    model = rm.model(cfg)
    state = rm.make(cfg).init(jax.random.key(0), batch)
    k0 = state.params["params"]["Dense_0"]["kernel"]
    np.testing.assert_array_equal(k0[0], k0[2])
    # Members drift apart in training; emulate that with a member-specific shift.
    shift = jnp.array([0.3, -0.1, 0.5])
    params = jax.tree.map(lambda p: p + shift.reshape((3,) + (1,) * (p.ndim - 1)), state.params)
    state = state.replace(params=params)
    averaged = state.replace(params=rm.combined_params(state))
    expected = rm.member_outputs(model, averaged, batch.obs_1, batch.action_1)[0]
    np.testing.assert_allclose(rm.reward_fn(model, state)(batch.obs_1, batch.action_1), expected,
                               rtol=1e-5, atol=1e-6)
    # …which is not the mean of the members' outputs (the network is nonlinear).
    mean_of_members = rm.member_outputs(model, state, batch.obs_1, batch.action_1).mean(0)
    assert not np.allclose(expected, mean_of_members, atol=1e-3)


def test_save_load_roundtrip(tmp_path):
    _, _, batch = reward_fits.synth()
    state = reward_fits.fitted().state
    path = checkpoints.save_reward_model(tmp_path / "model.npz", FIT_MODEL, state, obs_dim=6,
                                         act_dim=2, segment_length=10, extra={"note": "x"})
    (model, loaded), header = checkpoints.load_reward_model(path)
    assert header["extra"] == {"note": "x"} and header["segment_length"] == 10
    assert model == FIT_MODEL
    np.testing.assert_allclose(rm.reward_fn(model, loaded)(batch.obs_2, batch.action_2),
                               rm.reward_fn(FIT_MODEL, state)(batch.obs_2, batch.action_2),
                               rtol=1e-6)
    from prefrl.io import FileFormatError

    (tmp_path / "bad.npz").write_bytes(path.read_bytes()[:100])
    with pytest.raises(FileFormatError, match="not a readable"):
        checkpoints.load_reward_model(tmp_path / "bad.npz")


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #


def test_dataset_model_mismatch_errors():
    learner = rm.make(small_config())
    state = learner.init(jax.random.key(0), random_batch(jax.random.key(1)))
    with pytest.raises(ValueError, match=r"input size mismatch.*act_dim 2 = 7.*takes 5"):
        learner.update(state, random_batch(jax.random.key(1), obs=5))
    with pytest.raises(ValueError, match="input size mismatch"):
        active.ensemble_preferences(rm.model(small_config()), state,
                                random_batch(jax.random.key(1), act=1))
    # The model is per step: segments of another length fit.
    learner.update(state, random_batch(jax.random.key(1), length=7))


def test_empty_and_single_class_labels_error():
    with pytest.raises(ValueError, match="empty label set"):
        pair_data.validate(random_batch(jax.random.key(0), size=0))
    with pytest.raises(ValueError, match="single-class label set.*all 12 labels are 1"):
        pair_data.validate(random_batch(jax.random.key(0), label=jnp.ones(12)))
    with pytest.raises(ValueError, match=r"labels must be finite values in \[0, 1\]"):
        pair_data.validate(random_batch(jax.random.key(0), label=jnp.full(12, 2.0)))
    skipped = random_batch(jax.random.key(0))._replace(weight=jnp.zeros(12))
    with pytest.raises(ValueError, match="weight 0"):
        pair_data.validate(skipped)
    pair_data.validate(random_batch(jax.random.key(0)))  # a good batch passes


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="assumption"):
        rm.RewardModelConfig(assumption="return")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label_smoothing"):
        rm.RewardModelConfig(label_smoothing=1.0)


def test_analytic_flops_count():
    # in 5 -> 4 -> 1, M = 2, 3 pairs, k = 2: MACs/row 20 + 4 = 24; per row
    # fwd 48 + weight grads 48 + input grad of layer 2: 8 = 104; rows 2·3·2·2 = 24.
    cfg = rm.RewardModelConfig(hidden=(4,), ensemble_size=2)
    assert reward_bench.analytic_update_flops(cfg, 5, 3, 2) == 104 * 24


README_EXAMPLE = readme_example("reward_model")


def test_readme_example_runs(capsys):
    # Executes exactly the README snippet (under the suite's strict rank promotion).
    exec(compile(README_EXAMPLE, "README example", "exec"), {})
    assert capsys.readouterr().out.split() == ["(8,", "3)", "(5,)"]



# --------------------------------------------------------------------------- #
# prefrl fit
# --------------------------------------------------------------------------- #

CLI_MODEL = ["--hidden", "8", "--ensemble-size", "2", "--num-steps", "4", "--eval-every", "2",
             "--batch-size", "16", "--chunk-pairs", "16"]


def write_dataset(path, *, length=10, obs_dim=6, num_queries=200, single_class=False,
                  obs_scale=1.0):
    from prefrl.data import dataset as dataset_io
    from prefrl.types import PreferenceDataset, Segments

    cfg = study.StudyConfig(num_segments=200, num_train=num_queries, num_test=10,
                            segment_length=length)
    data = study.synthetic_data(cfg, study.SyntheticTask(obs_dim=obs_dim))
    n, k = data.obs.shape[:2]
    zeros = np.zeros((n, k, 1), np.float32)
    seg = Segments(obs=data.obs * obs_scale, action=data.action, reward=data.reward,
                   next_obs=data.next_obs, mask=data.mask, x_velocity=zeros[..., 0],
                   qpos=zeros, qvel=zeros, source=np.zeros((n, 2), np.int32))
    labels = {name: np.ones(num_queries, np.float32) if single_class else v
              for name, v in data.labels["train"].items()}
    ds = PreferenceDataset(segments=seg, first=data.train[0].astype(np.int32),
                           second=data.train[1].astype(np.int32), labels=labels,
                           label_mask={name: np.ones(num_queries, bool) for name in labels})
    return dataset_io.save(path, ds, task="synthetic")


def test_offset_is_a_known_term_of_every_logit():
    """``PairBatch.offset`` adds offset/β to each member's logit; chunked updates carry it."""
    cfg = small_config(temperature=2.0)
    learner = rm.make(cfg)
    batch = eq_batch()  # 10 pairs, chunks of 4: the last chunk is padded
    offset = jax.random.normal(jax.random.key(7), (batch.size,))
    shifted = batch._replace(offset=offset)
    state = learner.init(jax.random.key(0), batch)
    network = rm.model(cfg).network
    plain = rm.pair_logits(cfg, network, state.params, batch)
    with_offset = rm.pair_logits(cfg, network, state.params, shifted)
    np.testing.assert_allclose(with_offset, plain + offset[None, :] / 2.0, rtol=1e-5, atol=1e-6)
    # The update's loss is the weighted BT loss of the shifted logits, member by member.
    _, metrics = jax.jit(learner.update)(state, shifted)
    label = batch.label[None, :]
    bt = -(label * jax.nn.log_sigmoid(with_offset) + (1 - label) * jax.nn.log_sigmoid(-with_offset))
    expected = jnp.sum(batch.weight * bt, axis=1) / jnp.sum(batch.weight, axis=1)
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(rm.evaluate(rm.model(cfg), state, shifted, chunk=3)["loss"],
                               expected, rtol=1e-5)
    # The one gather keeps each row's offset; the host check names a bad one.
    rows = jnp.array([3, 0, 3])
    np.testing.assert_array_equal(pair_data.take(shifted, rows).offset, offset[rows])
    with pytest.raises(ValueError, match="offset contains NaN"):
        pair_data.validate(shifted._replace(offset=offset.at[2].set(jnp.nan)))
    with pytest.raises(ValueError, match=r"offset must be \[B\]"):
        pair_data.validate(shifted._replace(offset=offset[:4]))


def test_regret_labels_with_known_value_terms_recover_the_reward():
    """Regret-model labels (Σγ^t r + γ^k V(s_k) − V(s_0)) with V known: passing the V terms as
    ``offset`` lets the fit recover r; without them r̂ must explain V's part too, and cannot."""
    from prefrl import evaluation
    from prefrl.loops import fit as fit_loop

    rng = np.random.default_rng(0)
    n, k, gamma = 600, 5, 0.9
    obs = rng.normal(size=(2, n, k + 1, 3)).astype(np.float32)  # s_0 … s_k of each segment
    act = rng.uniform(-1, 1, size=(2, n, k, 1)).astype(np.float32)
    reward = obs[..., :k, 0]  # r(s, a) = s[0]
    value = 4.0 * obs[..., 1]  # a potential on another coordinate, dominating the labels
    gap = gamma ** k * value[..., k] - value[..., 0]
    score = (reward * gamma ** np.arange(k)).sum(-1) + gap
    ones = np.ones((n, k), np.float32)
    batch = rm.PairBatch(obs[0, :, :k], act[0], ones, obs[1, :, :k], act[1], ones,
                         (score[0] > score[1]).astype(np.float32))
    cfg = rm.RewardModelConfig(hidden=(16,), ensemble_size=1, discount=gamma, num_steps=400,
                               eval_every=400, batch_size=64, learning_rate=1e-2,
                               normalize=False, chunk_pairs=64, bootstrap=False)
    probe_obs = rng.normal(size=(500, 3)).astype(np.float32)
    probe_act = rng.uniform(-1, 1, size=(500, 1)).astype(np.float32)
    fit = jax.jit(lambda b: fit_loop.fit(jax.random.key(0), cfg, b))
    pearson = {}
    for name, b in (("without", batch), ("with", batch._replace(offset=gap[0] - gap[1]))):
        state = fit(b).state
        out = np.asarray(rm.combined_output(rm.model(cfg), state, probe_obs, probe_act))
        pearson[name] = evaluation.pearson(out, probe_obs[:, 0])
    assert pearson["with"] > 0.95, pearson
    assert pearson["without"] < 0.8, pearson
