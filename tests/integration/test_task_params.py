"""Task parameters from the command line: collect → label → train ppo → eval at v* = 3.

Every file records ``target_speed = 3.0``; a file made at another v* is
refused where files meet, naming both values; a bad ``--task-param`` is a
clear error that writes nothing.
"""

from __future__ import annotations

import json

import pytest
from test_sweep import TINY, _random_policy_dataset

from prefrl import io
from prefrl.cli import main
from prefrl.io import read_task
from prefrl.sweeps import data_check
from prefrl.sweeps import spec as sweep_spec

V3 = ["--task", "target-speed", "--task-param", "target_speed=3.0"]
PPO = ["--total-steps", "16", "--num-envs", "2", "--rollout-steps", "8", "--eval-episodes",
       "1", "--policy-hidden", "8", "--value-hidden", "8", "--num-minibatches", "1",
       "--num-epochs", "1", "--progress", "false", "--snapshots", "1.0"]


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def run_at_v3(tmp_path_factory):
    root = tmp_path_factory.mktemp("v3")
    traj, data, ppo_dir = root / "traj.npz", root / "data.npz", root / "ppo"
    assert main(["collect", *V3, "--num-envs", "2", "--steps", "40", "--out", str(traj)]) == 0
    assert main(["label", "--trajectory", str(traj), "--output", str(data),
                 "--segment-length", "5", "--stride", "5", "--budget", "20",
                 "--oracles", "partial_return"]) == 0
    assert main(["train", "ppo", *V3, *PPO, "--out-dir", str(ppo_dir)]) == 0
    return {"root": root, "traj": traj, "data": data, "final": ppo_dir / "final.npz"}


def test_every_header_records_the_task_parameter(run_at_v3, capsys):
    for name in ("traj", "data", "final"):
        recorded = read_task(run_at_v3[name])
        assert recorded["task"] == "target-speed", name
        assert recorded["task_params"]["target_speed"] == 3.0, name
    capsys.readouterr()
    # eval takes the checkpoint's task parameters by default, and the same ones explicitly.
    assert main(["eval", "--checkpoint", str(run_at_v3["final"]), "--episodes", "1"]) == 0
    assert _last_json(capsys)["task_params"]["target_speed"] == 3.0
    assert main(["eval", "--checkpoint", str(run_at_v3["final"]), "--episodes", "1", *V3]) == 0
    assert _last_json(capsys)["task_params"]["target_speed"] == 3.0


def test_files_made_at_another_target_speed_are_refused(run_at_v3, tmp_path, capsys):
    final = str(run_at_v3["final"])
    code = main(["eval", "--checkpoint", final, "--episodes", "1", "--task", "target-speed",
                 "--task-param", "target_speed=2"])
    err = capsys.readouterr().err
    assert code == 2 and "target_speed=3 there, target_speed=2 here" in err, err
    out = tmp_path / "rlhf"
    for option in ("--reference", "--init-checkpoint"):
        code = main(["train", "ppo", "--task", "target-speed", *PPO, option, final,
                     "--out-dir", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and f"{option} {final}" in err and "target_speed=3 there" in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(("param", "message"), [
    ("speed=3", "has no parameter(s) ['speed']; valid: ['ctrl_cost_weight', 'target_speed']"),
    ("target_speed=fast", "'fast' is not a number"),
    ("target_speed", "expected NAME=VALUE"),
    ("target_speed=nan", "must be a finite number"),
])
def test_bad_task_params_are_clear_errors_that_write_nothing(tmp_path, capsys, param, message):
    out = tmp_path / "out"
    commands = [
        ["collect", "--task", "target-speed", "--task-param", param, "--num-envs", "1",
         "--steps", "2", "--out", str(out / "t.npz")],
        ["train", "ppo", "--task", "target-speed", "--task-param", param, *PPO,
         "--out-dir", str(out)],
        ["train", "online", "--task", "target-speed", "--task-param", param,
         "--out-dir", str(out)],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not out.exists()


def test_sweep_task_params_are_validated_and_checked_against_the_dataset(tmp_path):
    made = _random_policy_dataset(tmp_path / "made.npz", num_envs=2, steps=100, k=10)
    arrays, header = io.load_npz(made, kind="preference_dataset")
    header["meta"]["task_params"] = {"forward_reward_weight": 1.0, "ctrl_cost_weight": 0.1}
    data = io.save_npz(tmp_path / "run.npz", arrays, header)  # as `prefrl label` records them
    base = [f"tasks.run.dataset={json.dumps(str(data))}"]
    with pytest.raises(sweep_spec.SweepError, match=r"task_params.*valid: \["):
        sweep_spec.load_sweep(TINY, [*base, "tasks.run.task_params={speed = 2.0}"])
    spec = sweep_spec.load_sweep(TINY, [*base, "tasks.run.task_params={ctrl_cost_weight = 0.1}"])
    data_check.check_sweep_data(spec)  # the dataset's own value: accepted
    assert spec.cells()[0].to_dict()["task_params"] == {"ctrl_cost_weight": 0.1}
    spec = sweep_spec.load_sweep(TINY, [*base, "tasks.run.task_params={ctrl_cost_weight = 0.5}"])
    with pytest.raises(sweep_spec.SweepError,
                       match="ctrl_cost_weight=0.1 there, ctrl_cost_weight=0.5 here"):
        data_check.check_sweep_data(spec)
