"""Sweeps: validation before any run, deterministic run ids, kill + resume, Ray = local."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from prefrl.cli import main as cli_main
from prefrl.studies import cell_data, cells
from prefrl.sweeps import execute as sweep_execute
from prefrl.sweeps import spec as sweep_spec
from prefrl.sweeps import store as sweep_store

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "experiments" / "sweeps" / "tiny.toml"
BENCHMARK = REPO / "experiments" / "sweeps" / "halfcheetah_benchmark.toml"


def _random_policy_dataset(path: Path, num_envs: int = 4, steps: int = 200, k: int = 10) -> Path:
    """A small real dataset: random-policy half-cheetah rollouts cut into length-k segments."""
    from prefrl.data import dataset
    from prefrl.rollout import BatchedEnv, random_policy
    from prefrl.types import PreferenceDataset, Segments

    with BatchedEnv("run", num_envs=num_envs, seed=0, dtype=np.float32) as env:
        traj = env.rollout(random_policy(6), steps, jax.random.key(0))
    per_env = steps // k

    def cut(x):  # [T, B, ...] -> [B * T/k, k, ...] (non-overlapping, never across a reset)
        x = np.swapaxes(np.asarray(x)[: per_env * k], 0, 1)
        return x.reshape(num_envs * per_env, k, *x.shape[2:])

    n = num_envs * per_env
    segments = Segments(
        obs=cut(traj.obs), action=cut(traj.action), reward=cut(traj.reward),
        next_obs=cut(traj.next_obs), mask=np.ones((n, k), np.float32),
        x_velocity=cut(traj.x_velocity), qpos=cut(traj.qpos), qvel=cut(traj.qvel),
        source=np.stack([np.repeat(np.arange(num_envs), per_env),
                         np.tile(np.arange(per_env) * k, num_envs)], 1),
    )
    first = np.arange(0, n - 1, 2)
    ret = segments.reward.sum(1)
    label = (ret[first] > ret[first + 1]).astype(np.float32)
    data = PreferenceDataset(segments=segments, first=first, second=first + 1,
                             labels={"partial_return": label},
                             label_mask={"partial_return": np.ones_like(label, bool)})
    dataset.save(path, data, task="run")
    return path


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    return _random_policy_dataset(tmp_path_factory.mktemp("data") / "run_random.npz")


def _tiny_spec(dataset: Path) -> sweep_spec.SweepSpec:
    return sweep_spec.load_sweep(TINY, [f"tasks.run.dataset={json.dumps(str(dataset))}"])


def test_tiny_sweep_expands_to_two_cells_two_seeds(tiny_dataset):
    spec = _tiny_spec(tiny_dataset)
    cells = spec.cells()
    assert len(cells) == 2 and spec.seeds == (0, 1)
    assert {c.epsilon for c in cells} == {0.0, 0.1}
    runs = spec.runs(0.5)
    ids = [rid for _, _, rid in runs]
    assert len(set(ids)) == 4
    # Deterministic: the same cell, seed and scale give the same id; any change gives another.
    assert ids == [rid for _, _, rid in _tiny_spec(tiny_dataset).runs(0.5)]
    cell = cells[0]
    assert sweep_store.run_id(cell, 0, 0.5) == ids[0]
    assert sweep_store.run_id(cell, 1, 0.5) != ids[0]
    assert sweep_store.run_id(cell, 0, 1.0) != ids[0]
    other = dataclasses.replace(cell, settings=dataclasses.replace(cell.settings, reward_steps=7))
    assert sweep_store.run_id(other, 0, 0.5) != ids[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cell.label_budget = 3  # type: ignore[misc]
    # Budget scale shrinks step budgets only (at least 1), not the science axes.
    scaled = cell.settings.scaled(0.01)
    assert scaled.reward_steps == 2 and scaled.cpl_steps == 200 and scaled.heldout_queries == 128


@pytest.mark.parametrize(
    "override, message",
    [
        ("colour=1", r"unknown key\(s\) \['colour'\]"),
        ("grid.lerner=['cpl']", r"unknown key\(s\) \['grid.lerner'\]"),
        ("settings.reward_stepz=5", r"unknown key\(s\) \['reward_stepz'\]"),
        ("tasks.run.expertt='x'", r"unknown key\(s\) \['expertt'\]"),
        ("grid.epsilon=[0.7]", r"grid.epsilon: mistake probability must be in \[0, 0.5\)"),
        ("grid.label_budget=[0]", r"grid.label_budget: must be >= 1"),
        ("grid.learner=['ppo_magic']", r"grid.learner: unknown 'ppo_magic'"),
        ("grid.beta=['hot']", r"grid.beta: expected float values, got 'hot'"),
        ("grid.task=['swim']", r"grid.task: unknown 'swim'"),
        ("settings.reward_steps=-3", r"reward_steps must be >= 1"),
        ("settings.cpl_bias=1.5", r"cpl_bias must be in \(0, 1\]"),
        ("settings.discount='high'", r"discount must be a finite number, got 'high'"),
        ("settings.reward_hidden=64", r"reward_hidden must be a list"),
        ("seeds=[0, 0]", r"duplicate seeds"),
    ],
)
def test_bad_sweep_file_fails_naming_the_key(tiny_dataset, override, message):
    with pytest.raises(sweep_spec.SweepError, match=message):
        sweep_spec.load_sweep(
            TINY, [f"tasks.run.dataset={json.dumps(str(tiny_dataset))}", override])


def test_missing_files_fail_before_any_run(tmp_path, tiny_dataset, capsys):
    out = tmp_path / "out"
    # The sweep file as shipped points at a dataset this checkout does not have.
    missing = (TINY.parent / "../data/run_random.npz").resolve()
    assert cli_main(["sweep", str(TINY), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "dataset file" in err and str(missing) in err
    # A regret-labelled cell needs the task's expert (V_E); naming a missing one fails too.
    args = ["sweep", str(TINY), "--out", str(out),
            "--set", f"tasks.run.dataset={json.dumps(str(tiny_dataset))}",
            "--set", "grid.label_model=['regret']"]
    assert cli_main(args) == 2
    assert "needs an 'expert' file" in capsys.readouterr().err
    assert cli_main(args + ["--set", "tasks.run.expert='no/such/expert.npz'"]) == 2
    err = capsys.readouterr().err
    assert "expert file" in err and "no/such/expert.npz does not exist" in err
    assert cli_main(["sweep", str(tmp_path / "nope.toml"), "--out", str(out)]) == 2
    assert "nope.toml does not exist" in capsys.readouterr().err
    # Nothing ran: no result directory was even created.
    assert not out.exists()


def _records(out: Path) -> dict[str, dict]:
    good, bad = sweep_store.ResultStore(out).records()
    assert not bad, bad
    return {r["run_id"]: r for r in good}


def _sweep_cmd(out: Path, dataset: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "prefrl.cli", "sweep", str(TINY), "--out", str(out),
            "--workers", "1", "--no-progress",
            "--set", f"tasks.run.dataset={json.dumps(str(dataset))}", *extra]


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, tiny_dataset):
    """Run the tiny sweep in a subprocess, SIGKILL it after the first record, then resume."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    runs_dir = out / "runs"
    proc = subprocess.Popen(
        _sweep_cmd(out, tiny_dataset), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if runs_dir.is_dir() and any(runs_dir.glob("*.json")):
            break
        time.sleep(0.02)
    finished_early = proc.poll() is not None
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, like a lost terminal
    output = proc.communicate()[0]
    assert not finished_early or proc.returncode == 0, output
    before = _records(out)
    assert before, f"no record was written before the kill:\n{output}"

    # Damage one finished record (as a crash of an older, non-atomic writer or
    # a bad disk would): the resume must detect it and run that seed again.
    damaged = sorted(before)[0]
    path = runs_dir / f"{damaged}.json"
    path.write_text(path.read_text()[:100])
    # A killed writer can also leave a temporary file behind (killed between
    # mkstemp and os.replace), named after its (now dead) process; the resumed sweep removes it.
    (runs_dir / f".{damaged}.json.k1ll3d.{proc.pid}.tmp").write_text('{"kind": "prefr')
    resumed = subprocess.run(_sweep_cmd(out, tiny_dataset, "--resume"), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    return {"out": out, "before": before, "damaged": damaged, "log": resumed.stderr}


def test_killed_sweep_resumes_without_loss_or_duplicates(killed_and_resumed, tiny_dataset):
    out, before = killed_and_resumed["out"], killed_and_resumed["before"]
    # The kill landed mid-sweep: the first cell's records existed, not all four.
    assert 1 <= len(before) < 4
    after = _records(out)
    expected = {rid for _, _, rid in _tiny_spec(tiny_dataset).runs(1.0)}
    files = sorted(p.name for p in (out / "runs").iterdir())
    # Every run exactly once, nothing else (no temporary files) in the store.
    assert files == sorted(f"{rid}.json" for rid in expected)
    assert set(after) == expected
    for rid, record in after.items():
        assert sweep_store.validate_record(record, rid) is None
        assert 0.0 <= record["metrics"]["heldout_accuracy"] <= 1.0
        assert record["group_size"] == 2
    # The damaged record was detected and rerun with the same numbers; the
    # intact one was not touched.
    damaged = killed_and_resumed["damaged"]
    log = killed_and_resumed["log"]
    assert "rerunning corrupt record" in log and damaged in log
    assert after[damaged]["metrics"] == before[damaged]["metrics"]
    for rid in set(before) - {damaged}:
        assert after[rid] == before[rid]
    # A finished sweep without --resume refuses to overwrite; with --resume it has nothing to do.
    spec = _tiny_spec(tiny_dataset)
    with pytest.raises(sweep_spec.SweepError, match="pass --resume"):
        sweep_execute.run_sweep(spec, out, cells.RUNNERS, workers=1)
    outcome = sweep_execute.run_sweep(spec, out, cells.RUNNERS, resume=True, workers=1)
    assert outcome.written == [] and outcome.skipped == 4
    # One writer per result directory: a second sweep on it is refused while one runs.
    with sweep_store.ResultStore(out).writer_lock():
        with pytest.raises(sweep_spec.SweepError, match="being written by another sweep"):
            sweep_execute.run_sweep(spec, out, cells.RUNNERS, resume=True, workers=1)
    assert not (out / "runs" / ".lock").exists()


@pytest.mark.slow  # ~20-35 s to start a local Ray instance; `pytest -m slow` runs it
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # Ray starts its daemons by fork+exec
def test_ray_gives_the_same_records(killed_and_resumed, tiny_dataset, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'prefrl[ray]')")
    local = _records(killed_and_resumed["out"])
    spec = _tiny_spec(tiny_dataset)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        outcome = sweep_execute.run_sweep(
            spec, tmp_path / "ray", cells.RUNNERS, ray_address="auto",
            compile_cache=str(killed_and_resumed["out"] / ".jax_cache"),
        )
    finally:
        ray.shutdown()
    assert not outcome.failed
    remote = _records(tmp_path / "ray")
    assert set(remote) == set(local)
    for rid in local:
        # Same cell and seed -> the same numbers, whichever machine ran it.
        assert remote[rid]["metrics"] == local[rid]["metrics"]
        assert remote[rid]["identity"] == local[rid]["identity"]


def test_records_are_written_atomically_and_checked(tmp_path, tiny_dataset):
    spec = _tiny_spec(tiny_dataset)
    cell = spec.cells()[0]
    record = sweep_store.make_record(cell, 0, 1.0, {"heldout_accuracy": np.float32(0.75)},
                               wall_time_s=1.0, group_size=1, sweep_name="t")
    store = sweep_store.ResultStore(tmp_path)
    store.write(record)
    read, problem = store.read(record["run_id"])
    assert problem is None and read["metrics"]["heldout_accuracy"] == 0.75
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [f"{record['run_id']}.json"]
    # A record stored under another run's name is not accepted as that run.
    other = tmp_path / "runs" / "someone_else.json"
    other.write_text(json.dumps(read))
    assert "does not match the file name" in store.read("someone_else")[1]
    with pytest.raises(ValueError, match="invalid record"):
        store.write({**record, "seed": 5})  # checksum no longer matches


@pytest.mark.parametrize("name, min_seeds", [("halfcheetah_benchmark", 3),
                                             ("halfcheetah_benchmark_cluster", 5)])
def test_benchmark_sweep_files_are_valid(name, min_seeds):
    spec = sweep_spec.load_sweep(BENCHMARK.parent / f"{name}.toml", check_files=False)
    assert spec.name == name
    assert set(spec.label_model) == {"partial_return", "regret"}
    assert {"rm_pr+ppo", "rm_regret+ppo", "cpl", "dpo"} <= set(spec.learner)
    assert set(spec.task) == {"run", "target-speed"}
    assert len(spec.label_budget) >= 3 and len(spec.seeds) >= min_seeds
    cells = spec.cells()
    assert len({(c.task, c.label_model, c.learner, c.beta, c.epsilon, c.label_budget,
                 c.segment_length) for c in cells}) == len(cells)
    # Both label models and both assumptions at every budget, on clean labels.
    for budget in spec.label_budget:
        fits = {(c.label_model, c.learner) for c in cells
                if c.label_budget == budget and c.beta == 0 and c.epsilon == 0}
        assert {(m, a) for m in ("partial_return", "regret")
                for a in ("rm_pr", "rm_regret")} <= fits


@pytest.mark.slow
@pytest.mark.parametrize("learner", ["cpl", "dpo", "rm_regret+ppo"])
def test_policy_runners_produce_complete_records(tiny_dataset, tmp_path, learner):
    # Every policy learner end to end at a tiny budget: trains, evaluates the
    # policy for full episodes and reports return, accuracy and KL to π_ref.
    spec = sweep_spec.load_sweep(TINY, [
        f"tasks.run.dataset={json.dumps(str(tiny_dataset))}", f"grid.learner=['{learner}']",
        "grid.epsilon=[0.0]", "seeds=[3]", "settings.ppo_env_steps=1024",
        "settings.ppo_num_envs=8", "settings.eval_episodes=2",
    ])
    outcome = sweep_execute.run_sweep(spec, tmp_path, cells.RUNNERS, budget_scale=0.01,
                                      workers=1, compile_cache=False)
    assert not outcome.failed, outcome.failed
    (record,) = _records(tmp_path).values()
    metrics = record["metrics"]
    for name in ("true_return", "mean_speed", "heldout_accuracy", "kl_to_ref"):
        assert np.isfinite(metrics[name]), name
    assert metrics["kl_to_ref"] >= 0.0 or learner.endswith("+ppo")  # PPO's is a sample estimate
    assert record["cell"]["learner"] == learner and record["seed"] == 3


def test_task_names_and_dims_match_the_environments():
    # The sweep validates task names without importing the environments; the
    # lists must agree.
    import prefrl.envs

    assert set(sweep_spec.KNOWN_TASKS) == set(prefrl.envs.TASKS)
    assert (cell_data.OBS_DIM, cell_data.ACT_DIM) == (prefrl.envs.OBS_DIM, prefrl.envs.ACT_DIM)
    assert set(cells.RUNNERS) == set(sweep_spec.LEARNER_ASSUMPTION)


def test_sub_grids_give_the_union_of_their_points(tiny_dataset, tmp_path):
    text = TINY.read_text(encoding="utf-8")
    start = text.index("[grid]")
    end = text.index("\n[", start + 1)
    grid = text[start:end]
    # Two sub-grids that share one point (rm_pr, ε = 0): it must appear once.
    first = grid.replace("[grid]", "[[grid]]")
    second = (first.replace('learner = ["rm_pr"]', 'learner = ["rm_pr", "rm_regret"]')
              .replace("epsilon = [0.0, 0.1]", "epsilon = [0.0]"))
    assert second != first, "the tiny sweep file changed: update this test"
    path = tmp_path / "sub.toml"
    path.write_text(text[:start] + first + "\n" + second + text[end:], encoding="utf-8")
    spec = sweep_spec.load_sweep(path, [f"tasks.run.dataset={json.dumps(str(tiny_dataset))}"])
    points = [(c.learner, c.epsilon) for c in spec.cells()]
    assert spec.name == "tiny"
    assert points == [("rm_pr", 0.0), ("rm_pr", 0.1), ("rm_regret", 0.0)]
    assert spec.learner == ("rm_pr", "rm_regret") and spec.epsilon == (0.0, 0.1)
    # An override of a grid axis applies to every sub-grid.
    spec = sweep_spec.load_sweep(path, [f"tasks.run.dataset={json.dumps(str(tiny_dataset))}",
                                   "grid.epsilon=[0.2]"])
    assert [(c.learner, c.epsilon) for c in spec.cells()] == [("rm_pr", 0.2), ("rm_regret", 0.2)]
    # Each sub-grid is validated and named in the error.
    path.write_text(text[:start] + first + "\n" + second.replace("label_budget", "label_budgt")
                    + text[end:], encoding="utf-8")
    with pytest.raises(sweep_spec.SweepError, match=r"grid\[1\]\.label_budgt"):
        sweep_spec.load_sweep(path, [f"tasks.run.dataset={json.dumps(str(tiny_dataset))}"])


@pytest.mark.parametrize("learner", [
    "advantage_greedy",
    pytest.param("regret_sf+ppo", marks=pytest.mark.slow),  # ~20 s (PPO); fit: test_cli_fit
])
def test_regret_learner_cells_produce_complete_records(tiny_dataset, tmp_path, learner):
    # The learners that really assume regret, as sweep cells: Â greedy (AWR) and the
    # regret-model r̂ via successor features of the expert's snapshots, then PPO.
    expert = REPO / "experiments" / "experts" / "run" / "final.npz"
    spec = sweep_spec.load_sweep(TINY, [
        f"tasks.run.dataset={json.dumps(str(tiny_dataset))}",
        f"tasks.run.expert={json.dumps(str(expert))}", f"grid.learner=['{learner}']",
        "grid.label_model=['regret']", "grid.epsilon=[0.0]", "seeds=[3]",
        "settings.ppo_env_steps=512", "settings.ppo_num_envs=8", "settings.eval_episodes=1",
        "settings.reward_steps=20", "settings.bc_steps=20", "settings.ppo_evals=1",
    ])
    outcome = sweep_execute.run_sweep(spec, tmp_path, cells.RUNNERS, budget_scale=0.01,
                                      workers=1, compile_cache=False)
    assert not outcome.failed, outcome.failed
    (record,) = _records(tmp_path).values()
    metrics = record["metrics"]
    for name in ("true_return", "mean_speed", "heldout_accuracy_regret",
                 "heldout_accuracy_partial_return"):
        assert np.isfinite(metrics[name]), name
    if learner == "regret_sf+ppo":
        assert metrics["sf_library_size"] == 4  # the run expert's 3 snapshots + final.npz
        assert np.isfinite(metrics["sf_psi_rel_error"]) and metrics["env_steps"] == 512
    else:
        assert np.isfinite(metrics["awr_loss"])
    assert record["cell"]["learner"] == learner
