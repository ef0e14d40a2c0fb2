"""Inputs that used to end in a traceback now end in a message naming the problem."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prefrl import cli

EXPERTS = Path(__file__).resolve().parents[2] / "experiments" / "experts"


def test_ppo_hidden_width_zero_is_a_usage_error(tmp_path, capsys):
    code = cli.main(["train", "ppo", "--policy-hidden", "0", "--out-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "need layers of width >= 1, got (0,)" in err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


def test_ppo_divergence_names_what_diverged():
    from prefrl.loops.ppo import _diverged

    finite = {"learning_reward": 1.0, "kl": 0.01, "policy_loss": 0.1, "value_loss": 1.0,
              "nonfinite": True}
    reward = _diverged({**finite, "learning_reward": np.nan, "kl": np.nan})
    assert "learning reward is non-finite" in reward and "reward model" in reward
    update = _diverged({**finite, "kl": np.inf, "policy_loss": np.nan})
    assert "non-finite kl, policy_loss" in update and "lower --learning-rate" in update
    assert "reward model" not in update


def test_eval_of_a_training_folder_uses_its_final_checkpoint(capsys):
    folder = EXPERTS / "target-speed"
    code = cli.main(["eval", "--checkpoint", str(folder), "--episodes", "1"])
    captured = capsys.readouterr()
    assert code == 0
    assert f"--checkpoint {folder} is a folder; using {folder / 'final.npz'}" in captured.err
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["checkpoint"] == str(folder / "final.npz") and result["task"] == "target-speed"


def test_eval_of_an_offline_policy_without_a_task(tmp_path, capsys):
    from test_bc import synthetic_dataset

    from prefrl.data import dataset as dataset_io

    dataset_io.save(tmp_path / "d.npz", synthetic_dataset(), task="synthetic")
    assert cli.main(["train", "bc", "--dataset", str(tmp_path / "d.npz"), "--out",
                     str(tmp_path / "bc.npz"), "--num-steps", "2", "--log-every", "2",
                     "--hidden", "4", "--eval-task", "none"]) == 0
    capsys.readouterr()
    code = cli.main(["eval", "--checkpoint", str(tmp_path / "bc.npz"), "--episodes", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "a 'bc' policy file that records no half-cheetah task" in err
    assert "pass --task" in err and "expected a 'ppo_checkpoint'" not in err


@pytest.mark.parametrize("command", ["label", "fit", "cpl"])
def test_output_paths_that_are_folders_or_under_dev_null(tmp_path, capsys, command):
    argv = {"label": ["label", "--trajectory", str(tmp_path / "t.npz"), "--output"],
            "fit": ["fit", "--dataset", str(tmp_path / "d.npz"), "--out"],
            "cpl": ["train", "cpl", "--dataset", str(tmp_path / "d.npz"), "--out"]}[command]
    for target, message in ((tmp_path, "is a folder; give a file path"),
                            ("/dev/null/x.npz", "/dev/null is not a folder")):
        code = cli.main([*argv, str(target)])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []
