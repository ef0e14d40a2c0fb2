"""The online preference loop on MJX, a round in one jit (``prefrl.loops.online.mjx``).

MJX compiles slowly on CPU (~20 s per round function), so one jitted round at
tiny sizes (B = 4, T = 8, segments of 4, a 32-segment pool, 2 rounds of 2
updates, 12 labels, a few fit steps) is shared by the tests through module
fixtures, and the command-line run reuses it (same settings). The vmapped
``train`` is the one other compile.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("mujoco.mjx")

from prefrl.envs.mjx_options import GPU  # noqa: E402

from prefrl import checkpoints, cli, evaluation, oracles  # noqa: E402
from prefrl.data import queries  # noqa: E402
from prefrl.data.segments import grid_segments  # noqa: E402
from prefrl.learners import ppo  # noqa: E402
from prefrl.loops.online import core as core_lib  # noqa: E402
from prefrl.loops.online import mjx as online_mjx  # noqa: E402
from prefrl.loops.online import mjx_run as online_mjx_run  # noqa: E402
from prefrl.loops.online.config import OnlineConfig, default_reward_config  # noqa: E402
from prefrl.types import Segments, Trajectory  # noqa: E402

B, T, K, ROUNDS, REFIT = 4, 8, 4, 2, 2
SEEDS = (0, 1)
CONFIG = OnlineConfig(task="run", total_steps=B * T * ROUNDS * REFIT, num_envs=B,
                      rollout_steps=T, segment_length=K, segment_stride=K, pool_capacity=32,
                      refit_every=REFIT, label_budget=12, schedule="constant",
                      initial_fraction=0.5, initial_fit_steps=10, heldout_queries=8,
                      selection="disagreement", oversample=2, eval_every=0, eval_episodes=2,
                      progress=False)
TINY = ppo.PPOConfig(num_epochs=2, num_minibatches=2, policy_hidden=(16, 16),
                     value_hidden=(16, 16))
REWARD = default_reward_config(hidden=(16, 16), ensemble_size=2, batch_size=8, num_steps=5,
                               eval_every=5, chunk_pairs=8)
ORACLE = oracles.OracleConfig(temperature=1.0)


def _inputs():
    return online_mjx.default_inputs(TINY, REWARD, ORACLE)


@pytest.fixture(scope="module")
def jitted():
    return online_mjx.jitted_trainer(CONFIG, TINY, REWARD, ORACLE, GPU)


@pytest.fixture(scope="module")
def host_runs(jitted):
    """Each seed alone: jit(init), then ROUNDS calls of jit(round); final state and metrics."""
    trainer, init, round_fn = jitted
    runs = {}
    for seed in SEEDS:
        state = init(jax.random.key(seed), _inputs())
        history = []
        for r in range(trainer.num_rounds):
            state, metrics = round_fn(state, jnp.int32(r))
            history.append(jax.device_get(metrics))
        runs[seed] = (state, {k: np.stack([m[k] for m in history]) for k in history[0]})
    return runs


def test_round_shapes_finite_metrics_and_exact_label_budget(jitted, host_runs):
    trainer, _, _ = jitted
    state, metrics = host_runs[0]
    # 2 windows of 4 steps per column × 4 columns = 8 segments a rollout; 4 rollouts fill 32.
    assert trainer.segments_per_rollout == 8 and trainer.num_rounds == ROUNDS
    assert int(state.pool.count) == 32 and int(state.pool.head) == 0
    assert state.pool.data.obs.shape == (32, K, 17) and state.pool.data.action.shape == (32, K, 6)
    assert state.pool.data.qpos.shape == (32, 2, 9)  # first and last step's physics state
    # Constant schedule, half the budget up front: 6 + 6 = 12, exactly.
    np.testing.assert_array_equal(trainer.counts, [6, 6])
    np.testing.assert_array_equal(metrics["labels"], [6, 6])
    np.testing.assert_array_equal(metrics["labels_used"], [6, 12])
    labels = state.labels.data
    assert int(state.labels.count) == CONFIG.label_budget == labels.keep.shape[0]
    assert float(labels.keep.sum()) == 12  # no skip rule: every query kept
    # valid_fraction 0.1: every 10th label by position (row 9) is held out.
    np.testing.assert_array_equal(np.nonzero(np.asarray(labels.split))[0], [9])
    assert set(np.unique(labels.label)) <= {0.0, 1.0}  # sampled labels
    assert float(jnp.abs(labels.obs_1).sum(axis=(1, 2)).min()) > 0  # every row written
    for name in ("true_reward", "proxy_reward", "value_loss", "fit_train_loss",
                 "fit_train_accuracy", "reward_pearson", "heldout_acc_partial_return"):
        assert metrics[name].shape == (ROUNDS,) and np.all(np.isfinite(metrics[name])), name
    assert np.isnan(metrics["valid_accuracy"][0]) and np.isfinite(metrics["valid_accuracy"][1])
    assert not metrics["nonfinite"].any()
    # PPO optimises the standardised learned reward, set on the refit's rollout.
    reward = state.policy.ppo.reward_params
    assert reward.opt_state is None and float(reward.reward_std) > 0
    assert int(state.policy.ppo.step) == ROUNDS * REFIT


def test_no_recompilation_across_rounds(jitted, host_runs):
    _, init, round_fn = jitted
    assert round_fn._cache_size() == 1 and init._cache_size() == 1


@pytest.mark.slow  # ~30 s: the compile of jit(vmap(train)); PPO-MJX's vmap test stays default
def test_vmapped_train_equals_seeds_one_at_a_time(jitted):
    """``jit(vmap(train))`` over 2 seeds = each seed through jit(init) and jit(round).

    Compared with the reward model's learning rate 0 (an array input: the same
    compiled functions): the fit itself does not reproduce across batchings
    to rounding, because Adam turns cancellation noise into whole steps — the
    bias of a hidden unit that is active on every step of both segments gets
    the gradient Σ_t 1 − Σ_t 1 of the score difference, zero up to rounding,
    and Adam's m/√v makes ±lr steps of it — and MJX's contacts then amplify
    any difference in the reward into different rollouts. Compared: PPO's
    policy, the reward members, the selected queries' labels and skip mask to
    rtol 1e-5; what MJX's float32 contacts compute (pool observations and
    rewards, per-round means over rollouts) to the looser tolerances below.
    """
    trainer, init, round_fn = jitted
    fixed = _inputs()._replace(reward_learning_rate=jnp.float32(0.0))
    keys = jax.vmap(jax.random.key)(jnp.asarray(SEEDS))
    inputs = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(SEEDS),)), fixed)
    train = jax.jit(jax.vmap(trainer.train))
    state, metrics = train(keys, inputs)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for i, seed in enumerate(SEEDS):
        alone = init(jax.random.key(seed), fixed)
        history = []
        for r in range(trainer.num_rounds):
            alone, m = round_fn(alone, jnp.int32(r))
            history.append(m)
        pick = lambda x, i=i: x[i]
        for got, want in ((state.policy.ppo.policy_params, alone.policy.ppo.policy_params),
                          (state.policy.ppo.reward_params, alone.policy.ppo.reward_params),
                          (state.labels.data.label, alone.labels.data.label),
                          (state.labels.data.keep, alone.labels.data.keep)):
            jax.tree.map(close, jax.tree.map(pick, got), want)
        # Observations and rewards are MJX physics in float32: batched and unbatched contact
        # arithmetic round differently and contacts amplify it (measured: up to 1e-2 in
        # joint velocities of the 4th rollout, while parameters and labels agree to 1e-5);
        # a row written to the wrong place would differ by O(1).
        physics = lambda a, b: np.testing.assert_allclose(a, b, rtol=0.05, atol=0.05)
        physics(state.pool.data.obs[i], alone.pool.data.obs)
        physics(state.pool.data.reward[i], alone.pool.data.reward)
        physics(state.labels.data.obs_1[i], alone.labels.data.obs_1)
        close(metrics["labels_used"][i], np.stack([h["labels_used"] for h in history]))
        # Means over rollouts: physics again (measured: 6e-5 relative in round 2's reward).
        for name in ("true_reward", "proxy_reward", "fit_train_loss", "reward_pearson",
                     "value_loss"):
            np.testing.assert_allclose(metrics[name][i], np.stack([h[name] for h in history]),
                                       rtol=1e-3, atol=1e-4, err_msg=name)
    # The learning rate travels as an array: a positive one for the first run fits its
    # members, 0 for the second leaves them where init put them; one compile for both.
    mixed = inputs._replace(reward_learning_rate=jnp.asarray([REWARD.learning_rate, 0.0]))
    state0, _ = train(keys, mixed)
    assert train._cache_size() == 1
    members = state0.policy.ppo.reward_params.params
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(lambda x: x[1], members),
                 jax.tree.map(lambda x: x[1], state.policy.ppo.reward_params.params))
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a[0] - b[0]).max()), members,
                         state.policy.ppo.reward_params.params)
    assert max(jax.tree.leaves(moved)) > 1e-3


def _pool() -> core_lib.PoolItem:
    # Returns: segment 0 scores 4, segment 1 scores 2, segment 2 scores 1 + 1 (its last
    # step is masked: 1 + 1 + 0 and the 5 there does not count).
    reward = jnp.asarray([[1.0, 1, 1, 1], [0.5, 0.5, 0.5, 0.5], [1.0, 1, 0, 5]])
    mask = jnp.asarray([[1.0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]])
    obs = jnp.arange(3 * K * 2, dtype=jnp.float32).reshape(3, K, 2)
    return core_lib.PoolItem(obs=obs, action=-obs[..., :1], reward=reward, next_obs=obs,
                             mask=mask, qpos=jnp.zeros((3, 2, 9)), qvel=jnp.zeros((3, 2, 9)),
                             tag=jnp.zeros(3, jnp.int32))


def test_device_labels_equal_the_cpu_oracle_known_answer():
    pool = _pool()
    first, second = jnp.asarray([0, 1, 1, 2]), jnp.asarray([1, 0, 2, 0])
    segs = Segments(obs=np.asarray(pool.obs), action=np.asarray(pool.action),
                    reward=np.asarray(pool.reward), next_obs=np.asarray(pool.obs),
                    mask=np.asarray(pool.mask), x_velocity=np.zeros((3, K)),
                    qpos=np.zeros((3, K, 9)), qvel=np.zeros((3, K, 9)),
                    source=np.zeros((3, 2), np.int64))
    key = jax.random.key(3)
    on_device = jax.jit(lambda beta, k: oracles.label_traced(
        oracles.OracleConfig(temperature=1.0), k, pool, first, second, temperature=beta))
    # Deterministic: 1[R¹ > R²], ½ on equal returns (segments 1 and 2 both score 2).
    exact = oracles.label_traced(oracles.OracleConfig(), key, pool, first, second)
    np.testing.assert_array_equal(exact.label, [1.0, 0.0, 0.5, 0.0])
    np.testing.assert_allclose(exact.score_1, [4.0, 2.0, 2.0, 2.0])
    # Sampled with β = 2 from an array: the CPU oracle with temperature 2 and the same key.
    cpu = oracles.label_queries(oracles.OracleConfig(temperature=2.0), key, segs,
                                np.asarray(first), np.asarray(second))
    got = on_device(jnp.float32(2.0), key)
    np.testing.assert_array_equal(got.label, cpu.label)
    # Over many keys the label's mean is P(σ¹ ≻ σ²) = sigmoid((4 − 2)/2) = 0.731 (first query),
    # sigmoid(−1) = 0.269 (second), ½ (equal returns), 0.269 (fourth).
    many = jax.vmap(lambda k: on_device(jnp.float32(2.0), k).label)(
        jax.random.split(jax.random.key(0), 4000))
    np.testing.assert_allclose(many.mean(0), [0.731, 0.269, 0.5, 0.269], atol=0.03)


def test_add_writes_exactly_n_rows_and_holds_out_by_position():
    pool = _pool()
    cfg = OnlineConfig(valid_fraction=0.25, label_budget=5, num_envs=2, rollout_steps=4,
                       segment_length=K, segment_stride=K, pool_capacity=4)
    core = core_lib.make_core(cfg, REWARD, policy_discount=0.99, oracle_discount=1.0,
                              counts=np.asarray([3, 2]))
    state = core.init(jax.random.key(0), None, 2, 1, 9, 9)
    # Two labels already there: every 4th label by position (3, 7 …) is held out.
    state = state.replace(labels=state.labels.replace(count=jnp.int32(2), head=jnp.int32(2)))
    lab = oracles.Labels(label=jnp.asarray([1.0, 0.0, 1.0]), keep=jnp.asarray([True, False, True]),
                         score_1=jnp.zeros(3), score_2=jnp.zeros(3))
    items = core_lib.label_items(pool, jnp.asarray([0, 1, 2]), jnp.asarray([1, 2, 0]), lab, 1)
    out = jax.jit(core.add)(state, items, jnp.int32(2)).labels
    assert int(out.count) == 4
    np.testing.assert_array_equal(out.data.label, [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(out.data.keep, [0, 0, 1, 0, 0])  # the second was skipped
    np.testing.assert_array_equal(out.data.split, [0, 0, 0, 1, 0])
    np.testing.assert_array_equal(out.data.round, [0, 0, 1, 1, 0])
    np.testing.assert_array_equal(out.data.obs_1[2:4], pool.obs[jnp.asarray([0, 1])])
    np.testing.assert_array_equal(out.data.final_obs_1[2:4], pool.obs[jnp.asarray([0, 1]), -1])
    np.testing.assert_array_equal(out.data.obs_1[4], 0)  # the third query is past n


def test_grid_segments_mask_steps_after_an_episode_end():
    # One column, T = 6, windows of 3 at t = 0, 3; the episode ends at t = 1.
    z = lambda *shape: np.zeros((6, 1, *shape), np.float32)
    reward = np.arange(6, dtype=np.float32).reshape(6, 1)
    truncated = np.zeros((6, 1), bool)
    truncated[1] = True
    traj = Trajectory(obs=z(17), action=z(6), reward=reward, next_obs=z(17),
                      terminated=np.zeros((6, 1), bool), truncated=truncated, x_velocity=z(),
                      qpos=z(9), qvel=z(9))
    segs = grid_segments(traj, 3, 3)
    np.testing.assert_array_equal(segs.reward, [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(segs.mask, [[1, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(segs.source, [[0, 0], [0, 3]])


def test_shared_helpers_match_their_host_versions():
    x, y = np.asarray([1.0, 2.0, 4.0, 3.0]), np.asarray([0.5, 1.0, 1.5, 3.0])
    np.testing.assert_allclose(evaluation.pearson_array(jnp.asarray(x), jnp.asarray(y)),
                               evaluation.pearson(x, y), rtol=1e-6)
    assert np.isnan(evaluation.pearson_array(jnp.ones(3), jnp.arange(3.0)))
    # Only the first 3 candidates compete: the best two of [0.1, 0.9, 0.5] are 1 then 2.
    values = jnp.asarray([0.1, 0.9, 0.5, 5.0])
    chosen = jax.jit(queries.oversample_select, static_argnums=3)(
        jax.random.key(0), values, jnp.int32(3), 2)
    np.testing.assert_array_equal(chosen, [1, 2])


@pytest.mark.parametrize("change, message", [
    (dict(pool_capacity=4), "pool_capacity 4 is smaller than one rollout's 8 segments"),
    (dict(num_envs=1, rollout_steps=4), "a rollout gives 1 segment"),
    (dict(reference="bc.npz"), "--reference"),
    (dict(offline_dataset="d.npz"), "--offline-dataset"),
    (dict(expert="e.npz"), "regret oracle"),
])
def test_bad_settings_raise_clear_errors(change, message):
    import dataclasses

    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        online_mjx.make_trainer(dataclasses.replace(CONFIG, **change), TINY, REWARD, ORACLE)
    with pytest.raises(ValueError, match="regret oracle"):
        online_mjx.make_trainer(CONFIG, TINY, REWARD, oracles.OracleConfig(model="regret"))


CLI_ARGS = ["train", "online", "--backend", "mjx", "--total-steps", str(B * T * ROUNDS * REFIT),
            "--num-envs", str(B), "--rollout-steps", str(T), "--segment-length", str(K),
            "--segment-stride", str(K), "--pool-capacity", "32", "--refit-every", str(REFIT),
            "--label-budget", "12", "--schedule", "constant", "--initial-fraction", "0.5",
            "--initial-fit-steps", "10", "--heldout-queries", "8", "--selection",
            "disagreement", "--oversample", "2", "--eval-every", "0", "--eval-episodes", "2",
            "--ppo-num-epochs", "2", "--ppo-num-minibatches", "2", "--ppo-policy-hidden", "16",
            "16", "--ppo-value-hidden", "16", "16", "--reward-hidden", "16", "16",
            "--reward-ensemble-size", "2", "--reward-batch-size", "8", "--reward-num-steps", "5",
            "--reward-eval-every", "5", "--reward-chunk-pairs", "8", "--oracle-temperature", "1"]


@pytest.mark.slow  # ~30 s of MJX compiles on XLA:CPU; the resume test below runs the same loop
def test_cli_train_online_mjx_writes_rounds_and_checkpoints(jitted, host_runs, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main([*CLI_ARGS, "--out-dir", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["backend"] == "mjx" and summary["labels"] == 12
    assert np.isfinite(summary["mean_return"])
    rounds = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["labels_used"] for r in rounds] == [6, 12]
    state, header = checkpoints.load_ppo(out / "final.npz")
    # Seed 0 through the CLI is the host run of seed 0: the same parameters.
    jax.tree.map(np.testing.assert_array_equal, state.policy_params,
                 host_runs[0][0].policy.ppo.policy_params)
    assert header["train_config"]["backend"] == "mjx"
    (_, reward), _ = checkpoints.load_reward_model(out / "reward_model.npz")
    np.testing.assert_allclose(reward.reward_std, host_runs[0][0].policy.ppo.reward_params
                               .reward_std, rtol=1e-6)
    assert json.loads((out / "result.json").read_text())["labels_used"] == 12
    assert jitted[2]._cache_size() == 1  # the command reused the compiled round


def test_killed_run_resumes_bit_for_bit(jitted, host_runs, tmp_path):
    """Stopped after round 0, run again: the uninterrupted run's numbers (host_runs[0])."""
    out = tmp_path / "run"
    config = dataclasses.replace(CONFIG, out_dir=str(out), checkpoint_every=1, eval_every=2)
    first = online_mjx_run.run(config, TINY, REWARD, ORACLE, stop_after_rounds=1)
    assert first["env_steps"] == B * T * REFIT and first["final"] == {}
    assert not (out / "result.json").exists()
    logs = []
    second = online_mjx_run.run(config, TINY, REWARD, ORACLE, log=logs.append)
    assert any("resuming" in line and "after round 1" in line for line in logs)
    want_state, want_metrics = host_runs[0]
    rounds = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1] and rounds == second["rounds"]
    np.testing.assert_array_equal([r["labels_used"] for r in rounds], [6, 12])
    np.testing.assert_array_equal([r["reward_pearson"] for r in rounds],
                                  want_metrics["reward_pearson"].astype(np.float64))
    jax.tree.map(np.testing.assert_array_equal, second["state"].policy.ppo.policy_params,
                 want_state.policy.ppo.policy_params)
    jax.tree.map(np.testing.assert_array_equal, second["state"].labels.data,
                 want_state.labels.data)
    evals = [json.loads(x) for x in (out / "evals.jsonl").read_text().splitlines()]
    assert [e["update"] for e in evals] == [2, 4]  # after each round: eval_every = REFIT
    assert json.loads((out / "result.json").read_text())["labels_used"] == 12
    assert jitted[2]._cache_size() == 1  # the restored state compiles to the same round
    with pytest.raises(FileExistsError, match="finished run"):
        online_mjx_run.run(config, TINY, REWARD, ORACLE)
    (out / "result.json").unlink()
    with pytest.raises(ValueError, match=r"config\.seed"):
        online_mjx_run.run(dataclasses.replace(config, seed=3), TINY, REWARD, ORACLE)


def test_cli_refuses_what_mjx_does_not_support(monkeypatch, capsys):
    assert cli.main([*CLI_ARGS, "--oracle-model", "regret"]) == 2
    assert "regret oracle" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "mujoco.mjx", None)  # as if mujoco-mjx were missing
    assert cli.main(CLI_ARGS) == 2
    assert 'pip install -e ".[mjx]"' in capsys.readouterr().err


@pytest.mark.slow
def test_online_mjx_learns_a_correlated_reward_and_improves_the_return():
    """A short budget (B = 64, 32 updates): r̂ tracks r and the C-engine return rises."""
    config = OnlineConfig(task="run", total_steps=131_072, num_envs=64, rollout_steps=64,
                          refit_every=4, label_budget=400, pool_capacity=512, eval_every=0,
                          eval_episodes=4, heldout_queries=64, progress=False)
    ppo_config = ppo.PPOConfig(num_minibatches=8)
    reward_config = default_reward_config()
    trainer, init, _ = online_mjx.jitted_trainer(config, ppo_config, reward_config,
                                                 oracles.OracleConfig(), GPU)
    start = init(jax.random.key(0), online_mjx.default_inputs(
        ppo_config, reward_config, oracles.OracleConfig()))
    tc = online_mjx.ppo_train_config(config, trainer.num_rounds * config.refit_every)
    from prefrl.loops import ppo_mjx

    before = ppo_mjx.evaluate(trainer.ppo, start.policy.ppo, tc, ppo_config.discount)
    result = online_mjx_run.run(config, ppo_config, reward_config, oracles.OracleConfig())
    last = result["rounds"][-1]
    assert last["reward_pearson"] > 0.3, result["rounds"]
    assert result["labels_used"] == 400
    assert result["final"]["mean_return"] > before["mean_return"] + 300, (before, result["final"])


@pytest.mark.slow  # ~60 s: another compile of the round
def test_regret_sf_learner_runs_inside_the_compiled_round():
    """The snapshot library (reward_learner='regret_sf') lives in the traced round too."""
    config = dataclasses.replace(CONFIG, reward_learner="regret_sf")
    trainer, init, round_fn = online_mjx.jitted_trainer(config, TINY, REWARD, ORACLE, GPU)
    state = init(jax.random.key(0), _inputs())
    for r in range(trainer.num_rounds):
        state, metrics = round_fn(state, jnp.int32(r))
        assert np.isfinite(float(metrics["successor_loss"]))
        assert np.isfinite(float(metrics["fit_train_loss"]))
    assert int(state.library.count) == trainer.num_rounds
    assert state.library.data.obs.shape == (4, trainer.segments_per_rollout, K, 17)
