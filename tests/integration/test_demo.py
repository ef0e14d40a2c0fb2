"""``prefrl demo`` end to end on tiny budgets and tiny untrained checkpoints made here.

The pipeline runs once (module fixture, through the CLI as a user would with
``--quick``); the tests check what it printed and wrote. Helpers get their own
small known-answer and bad-input tests.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest
from prefrl.envs.tasks import make_task

from prefrl import checkpoints, cli
from prefrl.commands import demo as demo_cmd
from prefrl.learners import ppo
from prefrl.studies import demo as pipeline
from prefrl.studies import experts as experts_lib

EXPECTED_ROWS = [
    ("expert (PPO, true reward)", "-"),
    ("BC", "-"),
    ("PPO on learned r̂", "partial_return"),
    ("PPO on learned Â", "regret"),
    ("online PPO, refitted r̂", "partial_return (20 online)"),
    ("CPL-BC", "regret"),
    ("random", "-"),
]


def _save_checkpoints(folder: Path, task: str = "target-speed", steps=(0, 1000)) -> list[Path]:
    """Untrained PPO checkpoints (different init keys) at the given 'progress'."""
    config = ppo.PPOConfig(policy_hidden=(8,), value_hidden=(8,))
    learner = ppo.make(config, 17, 6, num_updates=1)
    paths = []
    for i, env_steps in enumerate(steps):
        name = "final.npz" if i == len(steps) - 1 else f"snapshots/step_{env_steps:09d}.npz"
        paths.append(checkpoints.save_ppo(
            folder / name, learner.init(jax.random.key(i)), config=config, obs_dim=17,
            act_dim=6, num_updates=1, task=make_task(task).to_header(),
            progress={"update": i, "env_steps": env_steps}))
    return paths


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """``prefrl demo --quick`` once: (exit code, stdout, output folder)."""
    root = tmp_path_factory.mktemp("demo")
    experts = root / "experts"
    _save_checkpoints(experts)
    out_dir = root / "out"
    argv = ["demo", "--quick", "--experts", str(experts), "--out-dir", str(out_dir),
            "--cpl-labels", "regret"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        rc = cli.main(argv)
    return rc, stdout.getvalue(), out_dir


# The end-to-end run costs about a minute of CPU (compiling every stage), so
# its tests are marked slow: `pytest -m slow tests/test_demo.py`.
@pytest.mark.slow
def test_demo_exits_cleanly_and_ends_with_one_json_line(demo_run):
    rc, stdout, out_dir = demo_run
    assert rc == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["task"] == "target-speed"
    assert summary["out_dir"] == str(out_dir)
    for method, labels in EXPECTED_ROWS:
        key = method if labels == "-" else f"{method} [{labels}]"
        assert math.isfinite(summary[key]["return"]), key


@pytest.mark.slow
def test_demo_prints_the_table_with_every_row(demo_run):
    _, stdout, _ = demo_run
    lines = stdout.splitlines()
    assert lines[0].split()[:2] == ["method", "labels"]
    body = lines[2:2 + len(EXPECTED_ROWS)]
    for line, (method, labels) in zip(body, EXPECTED_ROWS, strict=True):
        assert line.startswith(method)
        assert line[len(method):].strip().startswith(labels)


@pytest.mark.slow
def test_demo_writes_plot_and_results(demo_run):
    _, _, out_dir = demo_run
    png = (out_dir / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out_dir / "results.json").read_text())
    assert [(r["method"], r["labels"]) for r in results["rows"]] == EXPECTED_ROWS
    for row in results["rows"]:
        assert math.isfinite(row["mean_return"]) and row["std_return"] >= 0
        # 2 evaluation episodes of 1000 steps; the return is their mean.
        assert len(row["returns"]) == 2
        assert row["mean_return"] == pytest.approx(np.mean(row["returns"]))
        # target-speed: per-step reward is −|v − 2| − 0.1‖a‖² ≤ −|v − 2|, so the
        # mean speed error is at most −(mean return)/1000.
        assert 0 <= row["mean_speed_error"] <= -row["mean_return"] / 1000 + 1e-6
    for row in results["rows"][2:5]:  # the learned-reward PPO runs and CPL
        for label in ("partial_return", "regret"):
            acc = row["heldout_accuracy"][label]
            assert acc is not None and 0.0 <= acc <= 1.0
    # quick preset: 60 queries -> 12 test, round(0.1 * 48) = 5 valid, 43 train.
    assert results["data"]["split"] == {"test": 12, "valid": 5, "train": 43}
    assert results["data"]["queries"] == 60
    assert 0.0 <= results["data"]["label_agreement"] <= 1.0
    assert (out_dir / "ppo_partial_return" / "final.npz").exists()
    assert (out_dir / "ppo_regret" / "final.npz").exists()
    for name in ("partial_return", "regret"):
        curve = results["ppo_curves"][name]
        assert len(curve["env_steps"]) == len(curve["true_reward"]) >= 1
        assert all(math.isfinite(x) for x in curve["true_reward"] + curve["proxy_reward"])


# --------------------------------------------------------------------------- helpers


def test_find_experts_orders_by_progress_and_prefers_final(tmp_path):
    _save_checkpoints(tmp_path, steps=(500, 0, 2000))
    # last.npz at the final progress is a duplicate of final.npz and is dropped.
    (tmp_path / "last.npz").write_bytes((tmp_path / "final.npz").read_bytes())
    (tmp_path / "notes.npz").write_bytes(b"not a checkpoint")
    experts = experts_lib.find_experts(tmp_path, "target-speed")
    assert experts.progress == (0.0, 500.0, 2000.0)
    assert experts.final.name == "final.npz"


def test_find_experts_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--experts"):
        experts_lib.find_experts(tmp_path / "missing", "target-speed")
    with pytest.raises(FileNotFoundError, match="no PPO checkpoints"):
        experts_lib.find_experts(tmp_path, "target-speed")
    _save_checkpoints(tmp_path, task="run", steps=(0,))
    with pytest.raises(ValueError, match="trained on task 'run'"):
        experts_lib.find_experts(tmp_path, "target-speed")


def test_default_experts_dir_is_in_the_repository():
    path = experts_lib.default_experts_dir("target-speed")
    assert path.parts[-3:] == ("experiments", "experts", "target-speed")
    assert (path.parents[2] / "prefrl" / "studies" / "demo.py").exists()


def test_behaviour_checkpoints_spread_and_keep_final():
    experts = experts_lib.Experts(Path("."), tuple(Path(f"{i}.npz") for i in range(7)),
                               tuple(float(i) for i in range(7)), ({},) * 7)
    # linspace(6, 0, 3) = [6, 3, 0]
    assert experts_lib.behaviour_checkpoints(experts, 3) == [0, 3, 6]
    assert experts_lib.behaviour_checkpoints(experts, 1) == [6]
    assert experts_lib.behaviour_checkpoints(experts, 10) == list(range(7))


def test_split_queries_partition_and_determinism():
    a = pipeline.split_queries(100, 0.2, 0.1, seed=3)
    b = pipeline.split_queries(100, 0.2, 0.1, seed=3)
    # 20 test, round(0.1 * 80) = 8 valid, 72 train.
    assert [len(a[k]) for k in ("test", "valid", "train")] == [20, 8, 72]
    assert np.array_equal(np.sort(np.concatenate(list(a.values()))), np.arange(100))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="fewer than 2"):
        pipeline.split_queries(3, 0.5, 0.5, seed=0)


def test_demo_config_rejects_bad_values():
    with pytest.raises(ValueError, match="ppo_steps"):
        pipeline.DemoConfig(ppo_steps=0)
    with pytest.raises(ValueError, match="cpl_labels"):
        pipeline.DemoConfig(cpl_labels=("oops",))
    with pytest.raises(ValueError, match="unknown task"):
        pipeline.DemoConfig(task="walk")
    with pytest.raises(ValueError, match="segment_length"):
        pipeline.DemoConfig(segment_length=100, steps_per_checkpoint=50)


def test_quick_flag_shrinks_budgets_but_explicit_options_win():
    parser = argparse.ArgumentParser()
    demo_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["demo", "--quick", "--ppo-steps", "1024"])
    config = demo_cmd.config_from_args(args)
    assert config.ppo_steps == 1024
    assert config.rm_steps == pipeline.QUICK["rm_steps"]
    default = demo_cmd.config_from_args(parser.parse_args(["demo"]))
    assert default == pipeline.DemoConfig()


def test_experts_root_lookup(monkeypatch, tmp_path):
    # $PREFRL_EXPERTS first; a checkout (editable install) finds experiments/experts.
    monkeypatch.setenv("PREFRL_EXPERTS", str(tmp_path))
    assert experts_lib.default_experts_dir("run") == tmp_path / "run"
    monkeypatch.delenv("PREFRL_EXPERTS")
    assert (experts_lib.experts_root() / "run" / "final.npz").is_file()
