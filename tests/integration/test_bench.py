"""The benchmarks on tiny budgets (each one's whole path)."""

import json

import jax
import pytest


@pytest.mark.slow
def test_bench_cpl_smoke(tmp_path, capsys):
    """`prefrl bench cpl` on two untrained PPO checkpoints with tiny budgets, then --merge."""

    from prefrl.envs.tasks import make_task

    from prefrl import checkpoints
    from prefrl.bench import cpl as bench
    from prefrl.learners import ppo

    config = ppo.PPOConfig(policy_hidden=(8,), value_hidden=(8,))
    learner = ppo.make(config, 17, 6, num_updates=1)
    for i, steps in enumerate((1000, 2000, 2000)):  # the last two: same progress, one is kept
        checkpoints.save_ppo(tmp_path / "experts" / "run" / f"c{i}.npz",
                             learner.init(jax.random.key(i)), config=config, obs_dim=17, act_dim=6,
                             num_updates=1, task=make_task("run").to_header(),
                             progress={"env_steps": steps})
    assert len(bench.find_checkpoints(str(tmp_path / "experts"), "run")) == 3
    out = tmp_path / "cpl.json"
    args = ["--experts-dir", str(tmp_path / "experts"), "--tasks", "run", "--data-dir",
            str(tmp_path / "data"), "--out", str(out), "--seeds", "0", "1",
            "--envs-per-policy", "2", "--steps-per-policy", "100", "--segment-length", "16",
            "--stride", "16", "--budget", "40", "--num-steps", "20", "--bc-steps", "20",
            "--log-every", "10", "--hidden", "8", "--eval-envs", "1", "--eval-steps", "20",
            "--best-of", "3", "--max-progress", "1.0"]
    assert bench.main(args) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(last["mean_return"]["run"]) == {"bc", "filtered_bc", "cpl", "cpl_bc", "dpo",
                                              "cpl_partial_return", "best_of_1", "best_of_3"}
    result = json.loads(out.read_text())
    assert len(result["tasks"]["run"]["collection"]["checkpoints"]) == 2  # duplicates dropped
    assert result["tasks"]["run"]["segments"] > 0
    # Re-running the same task with --merge reuses the dataset and keeps one entry per task.
    data = tmp_path / "data" / "cpl_run.npz"
    assert bench.main([*args, "--datasets", f"run={data}", "--merge", "true"]) == 0
    assert json.loads(out.read_text())["merged_runs"] == 2


@pytest.mark.slow  # ~20 s; the 3-seed loop itself: tests/test_ppo_seeds.py
def test_bench_ppo_trains_seeds_in_one_batch_and_compares_with_one(tmp_path, capsys):
    from prefrl.bench import ppo as bench

    out = tmp_path / "ppo.json"
    assert bench.main(["--total-steps", "128", "--seeds", "0", "1", "--num-envs", "4",
                       "--rollout-steps", "16", "--num-minibatches", "2",
                       "--eval-episodes", "1", "--out", str(out)]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["mode"] == "seeds_in_one_batch" and last["seeds"] == [0, 1]
    assert [r["seed"] for r in last["runs"]] == [0, 1]
    assert last["one_seed_wall_s"] > 0 and last["seeds_vs_one_wall_ratio"] > 0
    low, high = last["iqm_eval_return_ci95"]
    assert low <= last["iqm_eval_return"] <= high
    assert json.loads(out.read_text()) == last


@pytest.mark.slow
def test_gpu_check_script_runs_every_stage_at_smoke_sizes(tmp_path):
    """experiments/bench/gpu_check.sh smoke: the GPU session's one command, checked on CPU."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "out"
    env = {**os.environ, "NO_WHEELS": "1", "PYTHON": sys.executable, "OUT": str(out)}
    done = subprocess.run(["bash", str(root / "experiments" / "bench" / "gpu_check.sh"), "smoke"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    log = (out / "log.txt").read_text()
    for stage in ("rollout_mjx", "ppo_mjx", "online_mjx"):
        assert f"== {stage}: exit 0" in log, log[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "log.txt", "online_result.json", "online_rounds.jsonl", "ppo_mjx.json",
        "rollout_mjx.json"]
    assert json.loads((out / "ppo_mjx.json").read_text())["machine"]["device"]
