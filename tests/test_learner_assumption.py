"""The label-model × learner study (prefrl.studies.learner_assumption*) and its pieces:
restarting the C engine from stored states, library rollouts, the ψ-fit quality
metric, bad input, the cell runner and the resumable driver."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from prefrl.envs import make_task

from prefrl import checkpoints
from prefrl.data.segments import segment
from prefrl.learners import ppo
from prefrl.learners import reward_model as rm
from prefrl.learners import successor_features as sf
from prefrl.report import learner_assumption as report
from prefrl.rollout import BatchedEnv
from prefrl.studies import learner_assumption as la
from prefrl.studies import learner_assumption_cells as cells
from prefrl.studies import learner_assumption_config as settings
from prefrl.studies import learner_assumption_library as library

_W = np.random.default_rng(0).normal(size=(17, 6)).astype(np.float32) * 0.3


@jax.jit
def _linear(obs: jax.Array) -> jax.Array:
    return jnp.tanh(obs @ _W)


def _policy(obs, key):
    """A deterministic policy (ignores the key), so replays meet the same actions."""
    del key
    return _linear(jnp.asarray(obs, jnp.float32))


# --------------------------------------------------------------------------- #
# Restarting from stored physics states
# --------------------------------------------------------------------------- #


def test_set_state_restarts_the_c_engine_from_stored_states():
    with BatchedEnv("target-speed", 2, seed=3, num_threads=1) as env:
        traj = env.rollout(_policy, 40, jax.random.key(0))
    with BatchedEnv("target-speed", 2, seed=99, num_threads=1) as env:
        obs = env.set_state(traj.qpos[10], traj.qvel[10], steps=np.array([10, 10]))
        np.testing.assert_array_equal(obs, traj.obs[10])  # the same state, bit for bit
        again = env.rollout(_policy, 30, jax.random.key(0))
        # Only the solver warm-start restarts cold: drift ~1e-12 (measured).
        np.testing.assert_allclose(again.obs, traj.obs[10:], atol=1e-6)
        np.testing.assert_allclose(again.next_obs, traj.next_obs[10:], atol=1e-6)
        assert np.array_equal(env.episode_steps, [40, 40])
        with pytest.raises(ValueError, match=r"qpos/qvel must be \[B, nq\]"):
            env.set_state(traj.qpos[0, :1], traj.qvel[0, :1])
        with pytest.raises(ValueError, match="steps must be"):
            env.set_state(traj.qpos[0], traj.qvel[0], steps=np.array([0, 1000]))
        with pytest.raises(ValueError, match="non-finite"):
            env.set_state(traj.qpos[0] * np.nan, traj.qvel[0])


def test_library_rollouts_from_pool_start_states_reproduce_the_segments():
    with BatchedEnv("run", 2, seed=5, num_threads=1) as env:
        traj = env.rollout(_policy, 60, jax.random.key(1))
    pool = segment(traj, 10, 10)  # 12 segments, starts at t = 0, 10, …, 50
    idx = np.array([3, 8, 11])
    starts = library.segment_start_states(pool, idx, episode_length=1000)
    assert np.array_equal(starts.steps, np.asarray(pool.source)[idx, 1])
    lib = library.library_rollouts("run", [_policy, _policy], steps=10, reset_envs=1, starts=starts,
                              seed=7, num_threads=1)
    assert lib.obs.shape == (2, 10, 4, 17) and lib.action.shape == (2, 10, 4, 6)
    assert lib.truncated.shape == lib.terminated.shape == (2, 10, 4)
    assert lib.obs.dtype == np.float32 and not lib.truncated.any()
    with BatchedEnv("run", 4, seed=7, num_threads=1) as env:
        np.testing.assert_array_equal(lib.obs[0, 0, 0], env.reset()[0].astype(np.float32))
    for p in range(2):  # every policy starts from the same states
        np.testing.assert_array_equal(lib.obs[p, 0, 1:], np.asarray(pool.obs, np.float32)[idx, 0])
        # The same deterministic policy from s_0 retraces the stored segment.
        np.testing.assert_allclose(lib.obs[p, :, 1:], np.swapaxes(pool.obs[idx], 0, 1),
                                   atol=1e-5)
        np.testing.assert_allclose(lib.next_obs[p, :, 1:], np.swapaxes(pool.next_obs[idx], 0, 1),
                                   atol=1e-5)
    # The episode's step carries over: 3 steps before the time limit, it truncates there.
    late = library.StartStates(starts.qpos[:1], starts.qvel[:1], np.array([997]))
    lib = library.library_rollouts("run", [_policy], steps=5, reset_envs=0, starts=late, seed=0,
                              num_threads=1)
    assert lib.truncated[0, :, 0].tolist() == [False, False, True, False, False]


# --------------------------------------------------------------------------- #
# ψ-fit quality
# --------------------------------------------------------------------------- #


def _constant_features(c: float, shape=(2, 8, 3, 2)):
    """φ ≡ c forever: ψ^π(s) = c / (1 − γ) exactly (no termination, no truncation)."""
    phi = np.full(shape, c, np.float32)
    done = np.zeros(shape[:3], bool)
    return phi, done


def test_psi_fit_quality_known_answers():
    gamma = 0.9
    phi, done = _constant_features(0.5)
    exact = phi / (1 - gamma)
    # G_t = Σ_{j<T−t} γ^j c + γ^{T−t} ψ(s_T) = c / (1 − γ) when ψ is exact: error 0.
    w = jnp.array([1.0, -2.0])
    q = library.psi_fit_quality(exact, exact, phi, done, done, discount=gamma, w=w)
    assert float(q["psi_rel_error"]) == pytest.approx(0.0, abs=1e-6)
    # T = 8, ⌈T/2⌉ = 4 rows count; the largest bootstrap weight is γ^(8 − 4 + 1) = γ^5.
    assert float(q["tail_weight"]) == pytest.approx(gamma ** 5)
    # ψ ≡ 0: G_t = c (1 − γ^{T−t}) / (1 − γ), and ‖0 − G‖ / ‖G‖ = 1.
    zero = np.zeros_like(phi)
    q = library.psi_fit_quality(zero, zero, phi, done, done, discount=gamma, w=w)
    assert float(q["psi_rel_error"]) == pytest.approx(1.0, abs=1e-6)
    # ψ = 2 × exact: G_t = c/(1−γ) (1 + γ^{T−t}); t = 0..3 of T = 8.
    g = 0.5 / (1 - gamma) * (1 + gamma ** (8 - np.arange(4)))
    expected = np.linalg.norm(2 * 0.5 / (1 - gamma) - g) / np.linalg.norm(g)
    q = library.psi_fit_quality(2 * exact, 2 * exact, phi, done, done, discount=gamma, w=w)
    assert float(q["psi_rel_error"]) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match=r"\[Π, T, B, d\]"):
        library.psi_fit_quality(exact[..., :1], exact, phi, done, done, discount=gamma)


def test_fit_library_psi_recovers_constant_successor_features():
    """A toy library (2 policies, φ ≡ 1): the fit ψ ≈ 1/(1 − γ), and the metric says so."""
    gamma, shape = 0.8, (2, 30, 4)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(*shape, 3)).astype(np.float32)
    lib = sf.LibraryRollouts(obs, np.zeros((*shape, 1), np.float32), obs,
                                    np.zeros(shape, bool), np.zeros(shape, bool))
    phi = np.ones((*shape, 2), np.float32)
    cfg = settings.quick_config(discount=gamma, psi_hidden=(16,))
    net = library.psi_network_for(cfg, obs, 2)
    fit = sf.SFFitConfig(num_rounds=4, steps_per_round=150, learning_rate=3e-3)
    params, metrics = library.fit_library_psi(jax.random.key(0), fit, net, lib, phi, discount=gamma)
    assert np.asarray(metrics["loss"]).shape == (4, 2)
    psi = library.psi_own(net, params, jnp.asarray(obs))
    np.testing.assert_allclose(np.asarray(psi), 1 / (1 - gamma), rtol=0.1)
    assert float(jnp.mean(psi)) == pytest.approx(1 / (1 - gamma), rel=0.02)
    q = library.psi_fit_quality(psi, psi, phi, lib.terminated, lib.truncated, discount=gamma)
    assert float(q["psi_rel_error"]) < 0.05


# --------------------------------------------------------------------------- #
# Bad input: clear errors before any fitting
# --------------------------------------------------------------------------- #


def _fake_experts(folder: Path, obs_dim: int = 17, steps=(0, 1000)) -> list[Path]:
    config = ppo.PPOConfig(policy_hidden=(8,), value_hidden=(8,))
    learner = ppo.make(config, obs_dim, 6, num_updates=1)
    paths = []
    for i, env_steps in enumerate(steps):
        name = "final.npz" if i == len(steps) - 1 else f"snapshots/step_{env_steps:09d}.npz"
        paths.append(checkpoints.save_ppo(
            folder / name, learner.init(jax.random.key(i)), config=config, obs_dim=obs_dim,
            act_dim=6, num_updates=1, task=make_task("target-speed").to_header(),
            progress={"update": i, "env_steps": env_steps}))
    return paths


def test_library_of_snapshots_with_and_without_the_final_expert(tmp_path):
    _fake_experts(tmp_path / "target-speed", steps=(0, 500, 1000))
    spec = make_task("target-speed")
    lib = library.load_library(settings.quick_config(experts_dir=str(tmp_path)), spec)
    assert lib.names == ["snapshots/step_000000000.npz", "snapshots/step_000000500.npz",
                         "target-speed/final.npz"]
    config = settings.quick_config(experts_dir=str(tmp_path), library_final=False)
    lib = library.load_library(config, spec)
    assert [p.name for p in lib.paths] == ["step_000000000.npz", "step_000000500.npz"]


def test_bad_inputs_raise_clear_errors_before_any_fitting(tmp_path):
    spec = make_task("target-speed")
    with pytest.raises(FileNotFoundError, match="library path .*missing.npz does not exist"):
        library.load_library(settings.quick_config(library=(str(tmp_path / "missing.npz"),)), spec)
    small = _fake_experts(tmp_path / "small", obs_dim=5, steps=(0,))
    with pytest.raises(ValueError, match="library policy .*observation size mismatch.*obs_dim 5"):
        library.load_library(settings.quick_config(library=(str(small[0]),)), spec)
    # φ of width 5 against ψ heads of width 7: raises while checking shapes.
    shape = (2, 4, 3)
    obs = np.zeros((*shape, 17), np.float32)
    lib = sf.LibraryRollouts(obs, np.zeros((*shape, 6), np.float32), obs,
                                    np.zeros(shape, bool), np.zeros(shape, bool))
    net = library.psi_network_for(settings.quick_config(), obs, 7)
    fit = sf.SFFitConfig(num_rounds=1, steps_per_round=1)
    with pytest.raises(ValueError, match="feature width mismatch: φ has width 5"):
        library.fit_library_psi(jax.random.key(0), fit, net, lib, np.zeros((*shape, 5)),
                                discount=0.9)
    with pytest.raises(ValueError, match=r"phi_t must be \[Π, T, B, d\]"):
        library.fit_library_psi(jax.random.key(0), fit, net, lib, np.zeros((1, 4, 3, 7)),
                           discount=0.9)
    # The driver loads every task's inputs before the first cell: no cell file is written.
    _fake_experts(tmp_path / "experts" / "target-speed")
    config = settings.quick_config(experts_dir=str(tmp_path / "experts"),
                                   out_dir=str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="library path .*run does not exist"):
        la.run(config)
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="labelled pool .*nowhere/run.npz not found"):
        la.run(settings.quick_config(tasks=("run",), data_dir=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="learners must be a non-empty subset"):
        settings.quick_config(learners=("cpl",))
    with pytest.raises(ValueError, match="unknown task"):
        settings.quick_config(tasks=("walk",))


# --------------------------------------------------------------------------- #
# Names say what is learned
# --------------------------------------------------------------------------- #


def test_advantage_is_the_name_of_the_a_hat_learner_and_regret_is_deprecated():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = rm.RewardModelConfig(assumption="advantage", discount=0.9)
    with pytest.warns(DeprecationWarning, match="'advantage'"):
        old = rm.RewardModelConfig(assumption="regret", discount=0.9)
    assert new.score_fn is old.score_fn  # the same learner: Σ γ^t Â
    assert old.assumption == "regret"  # kept as given: saved files round-trip
    with pytest.raises(ValueError, match="'partial_return' or 'advantage'"):
        rm.RewardModelConfig(assumption="reward")


# --------------------------------------------------------------------------- #
# The cell runner and the resumable driver (quick budgets, shipped data)
# --------------------------------------------------------------------------- #

_TINY = dict(tasks=("target-speed",), seeds=1, ppo_steps=256, eval_episodes=1, eval_steps=20,
             library_steps=10)


@pytest.mark.slow  # ~35 s; each learner's path is in the default suite (cells, CLI)
def test_cell_runner_returns_every_metric_for_every_learner(tmp_path):
    config = settings.quick_config(out_dir=str(tmp_path), **_TINY)
    ctx = cells.TaskContext(config, "target-speed")
    records = {learner: cells.run_cell(config, ctx, "regret", learner, 0)
               for learner in settings.LEARNERS}
    for learner, record in records.items():
        assert {k: record[k] for k in ("task", "label", "learner", "seed")} == {
            "task": "target-speed", "label": "regret", "learner": learner, "seed": 0}
        assert record["fingerprint"] == config.fingerprint()
        m = record["metrics"]
        assert set(settings.METRICS) <= set(m)
        for name in ("acc_pr", "acc_regret"):
            assert 0.0 <= m[name] <= 1.0
        assert np.isfinite(m["return"]) and np.isfinite(m["speed_error"])
        if learner == "advantage_greedy":
            assert m["epic_r"] is None
        else:
            assert 0.0 <= m["epic_r"] <= 1.0 and m["ppo_env_steps"] == 256
    sf_metrics = records["regret_sf_ppo"]["metrics"]
    assert sf_metrics["library_size"] == 6  # 5 snapshots + final (the 100 % snapshot merged)
    for name in ("psi_rel_error", "value_rel_error", "negative_regret_fraction", "tail_weight"):
        assert np.isfinite(sf_metrics[name])
    # Both advantage learners share one fitted Â.
    a, b = records["advantage_ppo"]["metrics"], records["advantage_greedy"]["metrics"]
    assert (a["acc_pr"], a["acc_regret"]) == (b["acc_pr"], b["acc_regret"])
    json.dumps(la.jsonable(records))


def test_driver_writes_one_file_per_cell_and_resumes(tmp_path):
    config = settings.quick_config(out_dir=str(tmp_path), learners=("advantage_greedy",),
                             labels=("regret",), **_TINY)
    first = la.run(config)
    path = la.cell_path(tmp_path, "target-speed", "regret", "advantage_greedy", 0)
    assert path.is_file() and first["cells_run"] == 1
    assert (tmp_path / "cells" / "target-speed" / "reference.json").is_file()
    again = la.run(config)
    assert (again["cells_run"], again["cells_skipped"]) == (0, 1)
    assert again["tables"] == first["tables"]
    row = again["tables"]["target-speed"]["regret/advantage_greedy"]
    assert set(row["iqm"]) == {*settings.METRICS, "speed_error"} and row["iqm"]["epic_r"] is None
    text = report.format_markdown(again)
    assert "Â greedy (AWR)" in text and "β_KL = 0.0" in text and "256 environment steps" in text
    with pytest.raises(ValueError, match="other settings"):
        la.run(settings.quick_config(out_dir=str(tmp_path), learners=("advantage_greedy",),
                               labels=("regret",), **{**_TINY, "awr_beta": 2.0}))


@pytest.mark.slow
def test_learned_phi_with_psi_refits_and_kl_to_a_bc_reference(tmp_path):
    """φ learned in alternation with ψ; PPO with β_KL > 0 to the BC policy (~50 s)."""
    config = settings.quick_config(out_dir=str(tmp_path), phi="learned", kl_ref_coef=0.1, **_TINY)
    ctx = cells.TaskContext(config, "target-speed")
    m = cells.run_cell(config, ctx, "partial_return", "regret_sf_ppo", 0)["metrics"]
    assert all(np.isfinite(m[k]) for k in ("psi_rel_error", "value_rel_error", "acc_pr",
                                           "epic_r", "return", "psi_loss"))
    assert m["ppo_ref_kl"] != 0.0  # the KL to π_ref is measured (and penalised)


@pytest.mark.slow
def test_quick_mode_runs_the_whole_table_and_ends_with_one_json_line(tmp_path, capsys):
    import importlib.util

    script = Path(__file__).resolve().parent.parent / "experiments" / "learner_assumption.py"
    spec = importlib.util.spec_from_file_location("learner_assumption_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    assert summary["cells_run"] == 2 * 2 * 4 * settings.QUICK["seeds"]
    assert summary["ppo_steps"] == settings.QUICK["ppo_steps"] and summary["kl_ref_coef"] == 0.0
    assert set(summary["iqm_return"]) == {"target-speed", "run"}
    assert len(summary["iqm_return"]["run"]) == 8
    written = json.loads((tmp_path / "learner_assumption.json").read_text())
    assert written["tables"]["run"]["regret/regret_sf_ppo"]["iqm"]["psi_rel_error"] is not None
    assert "## target-speed" in (tmp_path / "learner_assumption.md").read_text()
