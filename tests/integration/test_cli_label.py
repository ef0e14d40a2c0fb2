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
