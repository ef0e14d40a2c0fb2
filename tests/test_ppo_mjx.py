"""PPO on MJX in one jit (``prefrl.loops.ppo_mjx``) and its solver options against MuJoCo C.

MJX compiles slowly on CPU (tens of seconds per step function), so one jitted
step (B = 4, T = 8, 2×16 networks, 3 updates) is shared by the tests through
module-scoped fixtures, and the command-line run reuses it (same settings).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("mujoco.mjx")

from prefrl.envs import mjx as mjx_env  # noqa: E402
from prefrl.envs.mjx_options import GPU  # noqa: E402

from prefrl import checkpoints, cli  # noqa: E402
from prefrl import config as config_lib  # noqa: E402
from prefrl.learners import ppo  # noqa: E402
from prefrl.loops import ppo as training  # noqa: E402
from prefrl.loops import ppo_mjx  # noqa: E402
from prefrl.policies import policy_fn  # noqa: E402
from prefrl.rollout import BatchedEnv  # noqa: E402

B, T, UPDATES = 4, 8, 3
SEEDS = (0, 1)
TINY = ppo.PPOConfig(num_epochs=2, num_minibatches=2, policy_hidden=(16, 16),
                     value_hidden=(16, 16))
TC = training.TrainConfig(task="run", total_steps=B * T * UPDATES, num_envs=B, rollout_steps=T,
                          eval_every=0, eval_episodes=2, checkpoint_every=0, progress=False)
EXPERT = Path(__file__).resolve().parent.parent / "experiments" / "experts" / "run" / "final.npz"


@pytest.fixture(scope="module")
def jitted():
    return ppo_mjx.jitted_trainer(TC, TINY, GPU)


@pytest.fixture(scope="module")
def host_runs(jitted):
    """Each seed alone: jit(init), then UPDATES calls of jit(step); final state and metrics."""
    _, init, step = jitted
    runs = {}
    for seed in SEEDS:
        ts = init(jax.random.key(seed), ppo_mjx.default_inputs(TINY))
        history = []
        for _ in range(UPDATES):
            ts, metrics = step(ts)
            history.append(jax.device_get(metrics))
        runs[seed] = (ts, {k: np.stack([m[k] for m in history]) for k in history[0]})
    return runs


def test_step_shapes_and_finite_loss(jitted, host_runs):
    trainer, init, _ = jitted
    ts, metrics = host_runs[0]
    start = init(jax.random.key(0), ppo_mjx.default_inputs(TINY))
    assert ts.env.data.qpos.shape == (B, 9) and ts.env.steps.shape == (B,)
    np.testing.assert_array_equal(ts.env.steps, np.full(B, T * UPDATES))  # no episode ended
    assert ts.episode_return.shape == (B,) and int(ts.ppo.step) == UPDATES
    for name in ("policy_loss", "value_loss", "entropy", "kl", "true_reward", "grad_norm"):
        assert metrics[name].shape == (UPDATES,), name
        assert np.all(np.isfinite(metrics[name])), name
    assert not metrics["nonfinite"].any()
    np.testing.assert_array_equal(metrics["train_episodes"], 0)
    # The same shapes as the learner's own state, and the update moved the policy.
    shapes = jax.tree.map(lambda x: x.shape, (ts.ppo, start.ppo))
    assert jax.tree.leaves(shapes[0]) == jax.tree.leaves(shapes[1])
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), ts.ppo.policy_params,
                         start.ppo.policy_params)
    assert max(jax.tree.leaves(moved)) > 0
    assert trainer.num_updates == UPDATES


def test_no_recompilation_across_updates(jitted, host_runs):
    _, init, step = jitted
    assert step._cache_size() == 1 and init._cache_size() == 1


@pytest.mark.slow  # ~30 s on XLA:CPU; tests/test_ppo.py checks vmapped seeds of the same update
def test_vmapped_train_equals_seeds_one_at_a_time(jitted, host_runs):
    trainer = jitted[0]
    keys = jax.vmap(jax.random.key)(jnp.asarray(SEEDS))
    inputs = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(SEEDS),)),
                          ppo_mjx.default_inputs(TINY))
    train = jax.jit(jax.vmap(trainer.train))
    ts, metrics = train(keys, inputs)
    for i, seed in enumerate(SEEDS):
        want_ts, want_metrics = host_runs[seed]
        got = jax.tree.map(lambda x, i=i: x[i], (ts.ppo.policy_params, ts.ppo.value_params))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                     got, (want_ts.ppo.policy_params, want_ts.ppo.value_params))
        for name in ("true_reward", "policy_loss", "value_loss"):
            # true_reward is MJX float32 contact physics, batched vs unbatched: it rounds
            # differently (seen: 1.5e-5 relative with mujoco 4.0.1), the learner's numbers not.
            rtol = 1e-4 if name == "true_reward" else 1e-5
            np.testing.assert_allclose(metrics[name][i], want_metrics[name], rtol=rtol,
                                       atol=1e-6, err_msg=name)
    # The learning rate travels as an array: a second seed at lr = 0 keeps its initial
    # policy, and the first is unchanged; same compiled function.
    frozen = inputs._replace(learning_rate=jnp.asarray([TINY.learning_rate, 0.0]))
    ts0, _ = train(keys, frozen)
    assert train._cache_size() == 1
    start = jitted[1](jax.random.key(SEEDS[1]), ppo_mjx.default_inputs(TINY))
    jax.tree.map(np.testing.assert_array_equal,
                 jax.tree.map(lambda x: x[1], ts0.ppo.policy_params), start.ppo.policy_params)
    jax.tree.map(np.testing.assert_array_equal,
                 jax.tree.map(lambda x: x[0], ts0.ppo.policy_params),
                 jax.tree.map(lambda x: x[0], ts.ppo.policy_params))


def test_episode_returns_known_answer():
    # Env 0 ends an episode at t = 1 (1 + 2 = 3) and runs on (4 → running 4);
    # env 1 never ends (running 10 + 1 + 1 + 1 = 13). Mean of completed: 3.
    reward = jnp.asarray([[1.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    done = jnp.asarray([[False, False], [True, False], [False, False]])
    running, out = ppo_mjx.episode_returns(jnp.asarray([0.0, 10.0]), reward, done)
    np.testing.assert_allclose(running, [4.0, 13.0])
    assert float(out["train_episode_return"]) == 3.0 and int(out["train_episodes"]) == 1
    _, none = ppo_mjx.episode_returns(jnp.zeros(2), reward, jnp.zeros_like(done))
    assert np.isnan(none["train_episode_return"])


@pytest.mark.parametrize("anneal_lr", [True, False])
def test_optimizer_with_learning_rate_in_state_matches_ppo_optimizer(anneal_lr):
    """Same updates as ``ppo.make_optimizer``; its state regroups into that one's structure."""
    import optax

    config = ppo.PPOConfig(anneal_lr=anneal_lr, num_epochs=1, num_minibatches=2)
    params = {"policy": jnp.asarray([1.0, -2.0, 3.0]), "value": jnp.asarray([0.5])}
    ours, theirs = ppo_mjx.make_optimizer(config, 3), ppo.make_optimizer(config, 3)
    p_ours, p_theirs = params, params
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    for t in range(6):  # the annealing reaches 0 at 3 updates × 2 minibatches
        grads = {"policy": jnp.asarray([0.3, -0.1, 0.2]) * (t + 1), "value": jnp.ones(1)}
        u, s_ours = ours.update(grads, s_ours, p_ours)
        p_ours = optax.apply_updates(p_ours, u)
        u, s_theirs = theirs.update(grads, s_theirs, p_theirs)
        p_theirs = optax.apply_updates(p_theirs, u)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), p_ours, p_theirs)
    learner = ppo.make(config, 17, 6, optimizer=ours)
    state = learner.init(jax.random.key(0)).replace(opt_state=s_ours)
    state = state.replace(policy_params=params["policy"], value_params=params["value"])
    regrouped = ppo_mjx.checkpoint_state(state, config, 3).opt_state
    assert jax.tree.structure(regrouped) == jax.tree.structure(s_theirs)
    jax.tree.map(np.testing.assert_array_equal, regrouped, s_theirs)


def _expert_returns(num_steps: int, num_envs: int = 8, solver=GPU
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The run expert's deterministic returns ``[num_envs]`` over ``num_steps`` from the same
    start states: MuJoCo C (float64) and MJX with ``solver`` (float32)."""
    policy, _ = checkpoints.read_policy(EXPERT)
    act = policy_fn(policy, deterministic=True)
    with BatchedEnv("run", num_envs=num_envs, seed=0, num_threads=1) as env:
        env.reset()
        cpu = env.rollout(act, num_steps, jax.random.key(0))
    model = mjx_env.make_model(solver)
    state = jax.vmap(lambda q, v, k: mjx_env.from_state(model, q, v, k, forward=False))(
        np.asarray(cpu.qpos[0], np.float32), np.asarray(cpu.qvel[0], np.float32),
        jax.random.split(jax.random.key(1), num_envs))
    run = jax.jit(lambda s: mjx_env.rollout("run", act, s, num_steps, jax.random.key(0), model))
    _, traj = run(state)
    return np.asarray(cpu.reward).sum(0), np.asarray(traj.reward, np.float64).sum(0)


# MJX and MuJoCo C part ways after ~25 steps of the expert's gait (|Δqpos| > 1e-2; in float64
# and with MuJoCo's own solver options too: MJX's collision and solver arithmetic differ in
# detail, and contacts amplify it), so single episodes differ by chance early on (measured,
# 8 episodes: up to 37 % at 50 steps, 23 % at 100, 4.5 % at 200) while the gait is the same:
# the mean over the 8 episodes differs by 3.7 %, 1.7 % and 0.65 %.
@pytest.mark.slow  # ~20 s of MJX on XLA:CPU (`pytest -m slow` runs it, as the full-episode one)
def test_expert_mean_return_under_gpu_solver_options_short_horizon():
    c_engine, mjx = _expert_returns(200)
    assert np.all(c_engine > 500)  # the expert is running, not standing
    assert abs(mjx.mean() - c_engine.mean()) < 0.05 * abs(c_engine.mean())


@pytest.mark.slow
def test_expert_return_under_gpu_solver_options_full_episode():
    # Measured: the mean of 8 episodes differs by 0.25 %, single episodes by up to 4.8 %.
    c_engine, mjx = _expert_returns(1000)
    assert np.all(c_engine > 5000)
    assert abs(mjx.mean() - c_engine.mean()) < 0.02 * abs(c_engine.mean())
    np.testing.assert_array_less(np.abs(mjx - c_engine), 0.1 * np.abs(c_engine))


@pytest.mark.slow
def test_gpu_solver_cap_does_not_bind_on_the_experts_gait():
    """4 Newton iterations give MJX's own result with MuJoCo C's 100 (measured: equal returns)."""
    from prefrl.envs.mjx_options import C_ENGINE

    _, capped = _expert_returns(300, 4, GPU)
    _, full = _expert_returns(300, 4, C_ENGINE)
    np.testing.assert_allclose(capped, full, rtol=1e-4)


def test_cli_train_ppo_mjx_writes_a_readable_checkpoint(jitted, host_runs, tmp_path, capsys):
    out = tmp_path / "run"
    status = cli.main([
        "train", "ppo", "--backend", "mjx", "--total-steps", str(B * T * UPDATES),
        "--num-envs", str(B), "--rollout-steps", str(T), "--num-epochs", "2",
        "--num-minibatches", "2", "--policy-hidden", "16", "16", "--value-hidden", "16", "16",
        "--eval-episodes", "2", "--eval-every", "0", "--out-dir", str(out)])
    assert status == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["backend"] == "mjx" and summary["env_steps"] == B * T * UPDATES
    assert np.isfinite(summary["mean_return"])
    state, header = checkpoints.load_ppo(out / "final.npz")
    # Seed 0 through the CLI is the host run of seed 0: the same parameters.
    jax.tree.map(np.testing.assert_array_equal, state.policy_params,
                 host_runs[0][0].ppo.policy_params)
    assert header["train_config"]["backend"] == "mjx"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == UPDATES
    assert jitted[2]._cache_size() == 1  # the command reused the compiled step


def test_killed_run_resumes_bit_for_bit(jitted, host_runs, tmp_path):
    """Stopped after update 1, run again: the uninterrupted run's numbers, leaf for leaf."""
    from prefrl.io import load_npz
    from prefrl.loops import resume

    tc = dataclasses.replace(TC, out_dir=str(tmp_path / "run"), checkpoint_every=1,
                             eval_every=2)
    first = ppo_mjx.run(tc, TINY, stop_after_updates=1)
    assert first.env_steps == B * T and not (tmp_path / "run" / "final.npz").exists()
    logs = []
    second = ppo_mjx.run(tc, TINY, log=logs.append)
    assert any("resuming" in line and "update 1/3" in line for line in logs)
    want_ts, want_metrics = host_runs[0]
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text()
               .splitlines()]
    assert [r["update"] for r in records] == [1, 2, 3]  # no line lost or repeated
    np.testing.assert_array_equal([r["true_reward"] for r in records],
                                  want_metrics["true_reward"].astype(np.float64))
    arrays, header = load_npz(tmp_path / "run" / "last.npz", kind=checkpoints.PPO_KIND)
    assert header["progress"]["update"] == UPDATES
    want = resume.device_state_arrays(ppo_mjx.resumable(want_ts))
    assert want.keys() <= arrays.keys()
    for name, value in want.items():  # physics, optimiser, episode returns, key
        np.testing.assert_array_equal(arrays[name], value, err_msg=name)
    evals = [json.loads(x) for x in (tmp_path / "run" / "evals.jsonl").read_text().splitlines()]
    assert [e["update"] for e in evals] == [2, 3]
    assert second.evaluations[-1]["mean_return"] == evals[-1]["mean_return"]
    assert sorted(p.name for p in (tmp_path / "run" / "snapshots").iterdir())
    assert jitted[2]._cache_size() == 1  # the restored state compiles to the same step
    # A finished run trains nothing and returns its saved records.
    again = ppo_mjx.run(tc, TINY)
    assert again.wall_s == 0.0 and [r["update"] for r in again.history] == [1, 2, 3]
    # Other settings are refused by name before anything is overwritten.
    (tmp_path / "run" / "final.npz").unlink()
    with pytest.raises(ValueError, match=r"train\.seed"):
        ppo_mjx.run(dataclasses.replace(tc, seed=5), TINY)


def test_resume_refuses_another_backend_and_solver(tmp_path):
    from prefrl.loops.ppo_files import _check_same_run

    header = {"ppo_config": config_lib.to_dict(TINY),
              "train_config": {**config_lib.to_dict(TC), "backend": "mjx",
                               "solver": config_lib.to_dict(GPU)}}
    _check_same_run(header, TINY, TC, tmp_path / "last.npz", "mjx",
                    {"solver": config_lib.to_dict(GPU)})
    with pytest.raises(ValueError, match="written by --backend mjx"):
        _check_same_run(header, TINY, TC, tmp_path / "last.npz", "cpu")
    other = dataclasses.replace(GPU, iterations=8)
    with pytest.raises(ValueError, match=r"train\.solver"):
        _check_same_run(header, TINY, TC, tmp_path / "last.npz", "mjx",
                        {"solver": config_lib.to_dict(other)})


def test_cli_backend_is_checked(monkeypatch, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(["train", "ppo", "--backend", "tpu"])
    assert err.value.code == 2 and "invalid choice: 'tpu'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "mujoco.mjx", None)  # as if mujoco-mjx were missing
    for argv in (["train", "ppo", "--backend", "mjx", "--total-steps", "64"],
                 ["bench", "rollout", "--backend", "mjx", "--num-envs", "2"],
                 ["bench", "ppo", "--backend", "mjx", "--total-steps", "64"]):
        assert cli.main(argv) == 2, argv
        assert 'pip install -e ".[mjx]"' in capsys.readouterr().err, argv


@pytest.mark.slow
def test_mjx_ppo_improves_return_on_run(tmp_path):
    """A short budget (131 k steps, B = 64) on MJX: the C-engine return rises clearly."""
    tc = training.TrainConfig(task="run", total_steps=131_072, num_envs=64, rollout_steps=64,
                              eval_every=0, eval_episodes=4, checkpoint_every=0, progress=False)
    config = ppo.PPOConfig(num_minibatches=8)
    trainer, init, _ = ppo_mjx.jitted_trainer(tc, config, GPU)
    start = init(jax.random.key(0), ppo_mjx.default_inputs(config))
    before = ppo_mjx.evaluate(trainer, start.ppo, tc, config.discount)["mean_return"]
    result = ppo_mjx.run(tc, config, solver=GPU)
    after = result.evaluations[-1]["mean_return"]
    assert after > before + 500, (before, after)


@pytest.mark.slow
def test_bench_backend_mjx_smoke(tmp_path, capsys):
    """`prefrl bench rollout|ppo --backend mjx` at tiny sizes: the device and the ratio recorded."""
    from prefrl.bench import ppo as bench_ppo
    from prefrl.bench import rollout as bench_rollout

    out = tmp_path / "rollout_mjx.json"
    assert bench_rollout.main(["--backend", "mjx", "--num-envs", "2", "--steps", "5",
                               "--repeats", "1", "--cpu-steps", "5", "--out", str(out)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line == json.loads(out.read_text())
    assert line["machine"]["device"] == str(jax.devices()[0])
    assert line["mjx_env_steps_per_s@2"] > 0 and line["results"][0]["mjx_vs_c_engine"] > 0
    out = tmp_path / "ppo_mjx.json"
    assert bench_ppo.main(["--backend", "mjx", "--num-envs", "4", "--rollout-steps", "8",
                           "--num-minibatches", "2", "--num-epochs", "1", "--total-steps", "64",
                           "--seeds", "0", "1", "--eval-episodes", "1", "--cpu-steps", "4096",
                           "--out", str(out)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["seed"] for r in line["runs"]] == [0, 1] and line["num_updates"] == 2
    assert line["env_steps_per_s"] > 0 and line["mjx_vs_c_engine"] > 0
