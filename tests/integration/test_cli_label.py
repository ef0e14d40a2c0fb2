"""``prefrl label``: trajectory file → segments → queries → labels → dataset file."""

import json

import numpy as np
from labelling_data import assert_same, fake_value_fn, write_tiny_trajectory

from prefrl.data import dataset as ds


def test_label_command_end_to_end(tmp_path, monkeypatch, capsys):
    from prefrl import checkpoints, cli

    # A stand-in critic: V(s) = obs[0], recorded with γ = 0.9.
    monkeypatch.setattr(checkpoints, "load_value_fn", lambda path, obs_dim=None: fake_value_fn)
    monkeypatch.setattr(checkpoints, "load_ppo", lambda path: (None, {"discount": 0.9}))
    write_tiny_trajectory(tmp_path / "traj.npz")
    out = tmp_path / "prefs.npz"
    rc = cli.main([
        "label", "--trajectory", str(tmp_path / "traj.npz"), "--output", str(out),
        "--segment-length", "5", "--stride", "5", "--budget", "40", "--seed", "3",
        "--oracles", "partial_return", "regret", "--expert", "expert.ckpt",
        "--regret-discount", "0.9",
    ])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["queries"] == 40
    data, header = ds.load(out)
    assert header["task"] == "run" and header["segment_length"] == 5
    assert header["oracles"]["regret"]["discount"] == 0.9
    seg = data.segments
    reward = np.asarray(seg.reward, np.float64)
    first, second = np.asarray(data.first), np.asarray(data.second)
    assert np.all(first != second)
    # Partial return (γ_p = 1, β = 0): label = 1 if Σ r¹ > Σ r², 0 if smaller.
    pr = reward.sum(1)
    np.testing.assert_array_equal(
        np.asarray(data.labels["partial_return"]), (pr[first] > pr[second]).astype(np.float32)
    )
    # Regret endpoint form: Σ 0.9^t r_t + 0.9^5 V(s_5) − V(s_0), V = obs[0].
    disc = 0.9 ** np.arange(5)
    v0 = np.asarray(seg.obs[:, 0, 0], np.float64)
    vk = np.asarray(seg.final_obs[:, 0], np.float64)
    rg = reward @ disc + 0.9**5 * vk - v0
    np.testing.assert_array_equal(
        np.asarray(data.labels["regret"]), (rg[first] > rg[second]).astype(np.float32)
    )
    # No segment crosses column 1's reset after step 14.
    assert all(
        not (b == 1 and t < 15 < t + 5) for b, t in np.asarray(seg.source).tolist()
    )


def test_label_command_is_deterministic(tmp_path):
    from prefrl.commands.label import LabelCommandConfig, run_config

    write_tiny_trajectory(tmp_path / "traj.npz")
    kwargs = dict(trajectory=str(tmp_path / "traj.npz"), segment_length=4, stride=2, budget=30,
                  temperature=1.0, mistake_prob=0.1, seed=5)
    run_config(LabelCommandConfig(output=str(tmp_path / "a.npz"), **kwargs))
    run_config(LabelCommandConfig(output=str(tmp_path / "b.npz"), **kwargs))
    a, _ = ds.load(tmp_path / "a.npz")
    b, _ = ds.load(tmp_path / "b.npz")
    assert_same(a, b)


def test_label_command_regret_without_expert_is_a_clear_error(tmp_path, capsys):
    from prefrl import cli

    write_tiny_trajectory(tmp_path / "traj.npz")
    rc = cli.main([
        "label", "--trajectory", str(tmp_path / "traj.npz"), "--output",
        str(tmp_path / "o.npz"), "--oracles", "regret", "--segment-length", "5",
    ])
    assert rc == 2
    assert "regret oracle needs an expert critic: pass --expert PATH" in capsys.readouterr().err
    assert not (tmp_path / "o.npz").exists()


def test_regret_oracle_refuses_a_critic_of_another_task_or_parameters(tmp_path, capsys):
    """The critic's task, v*, γ and observation size must be the trajectory's."""
    from pathlib import Path

    from prefrl.envs import make_task

    from prefrl import cli
    from prefrl.data.trajectories import load_trajectory, save_trajectory

    experts = Path(__file__).resolve().parents[2] / "experiments" / "experts"
    traj = write_tiny_trajectory(tmp_path / "run.npz")
    save_trajectory(tmp_path / "v3.npz", traj, task=make_task("target-speed", target_speed=3.0))
    assert load_trajectory(tmp_path / "v3.npz")[1]["task_params"]["target_speed"] == 3.0
    out = tmp_path / "out"
    out.mkdir()
    base = ["label", "--output", str(out / "d.npz"), "--segment-length", "5", "--stride", "5",
            "--budget", "5", "--oracles", "regret"]
    cases = [
        ("run.npz", "run-backward", [], "it is the critic of task 'run-backward'"),
        ("v3.npz", "target-speed", [],
         "'target_speed': 2.0}, but the trajectory is of task 'target-speed' "
         "{'ctrl_cost_weight': 0.1, 'target_speed': 3.0}"),
        ("run.npz", "run", ["--regret-discount", "0.9"], "its discount 0.99 differs from "
                                                         "--regret-discount 0.9"),
    ]
    for trajectory, expert, extra, message in cases:
        code = cli.main([*base, "--trajectory", str(tmp_path / trajectory),
                         "--expert", str(experts / expert / "final.npz"), *extra])
        err = capsys.readouterr().err
        assert code == 1 and message in err and "cannot label these segments" in err, err
    assert list(out.iterdir()) == []


def test_check_critic_observation_size_and_proxy_reward():
    import pytest

    from prefrl.data.labelling import check_critic
    from prefrl.io import FileFormatError

    run = {"task": "run", "task_params": {}}
    with pytest.raises(FileFormatError, match="observation size 17 differs from the "
                                              "trajectory's 11"):
        check_critic({**run, "obs_dim": 17, "discount": 0.99}, run, discount=0.99, obs_dim=11,
                     where="e.npz")
    with pytest.raises(FileFormatError, match="trained on reward 'reward_model'"):
        check_critic({**run, "reward": "reward_model"}, run, discount=0.99, obs_dim=None,
                     where="e.npz")
    check_critic({**run, "obs_dim": 17, "discount": 0.99}, run, discount=0.99, obs_dim=17,
                 where="e.npz")
