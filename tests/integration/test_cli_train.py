"""``prefrl train`` and ``prefrl eval`` end to end: BC then DPO from a dataset; PPO."""

import json
import math

import jax
import numpy as np
import pytest
from test_bc import synthetic_dataset

from prefrl import checkpoints, networks


def test_cli_bc_then_dpo_roundtrip(tmp_path, capsys):
    from prefrl.cli import main
    from prefrl.data import dataset as dataset_io

    data = tmp_path / "data.npz"
    dataset_io.save(data, synthetic_dataset(), task="synthetic")
    common = ["--dataset", str(data), "--num-steps", "20", "--log-every", "20",
              "--hidden", "16", "--eval-task", "none", "--batch-size", "8"]
    assert main(["train", "bc", *common, "--out", str(tmp_path / "bc.npz")]) == 0
    bc_summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert bc_summary["algo"] == "bc" and bc_summary["out"] == [str(tmp_path / "bc.npz")]
    network, params, header = checkpoints.load_offline_policy(tmp_path / "bc.npz")
    assert network.hidden == (16,) and header["algo"] == "bc"
    # Observations are standardised by the pool's statistics, stored with the policy.
    assert isinstance(network, networks.NormalizedGaussianPolicy)
    obs_pool = np.asarray(synthetic_dataset().segments.obs)
    assert network.obs_mean[0] == pytest.approx(obs_pool.mean(), abs=1e-5)
    assert network.obs_std[0] == pytest.approx(obs_pool.std(), abs=1e-5)
    act, info = checkpoints.load_policy(tmp_path / "bc.npz")
    obs = np.zeros((3, 1), np.float32)
    np.testing.assert_allclose(act(obs, jax.random.key(0)),
                               np.tanh(info["apply"](info["params"], obs)[0]), rtol=1e-6)
    assert main(["train", "dpo", *common, "--reference", str(tmp_path / "bc.npz"),
                 "--out", str(tmp_path / "dpo.npz"), "--seeds", "0", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["out"] == [str(tmp_path / "dpo_seed0.npz"), str(tmp_path / "dpo_seed1.npz")]
    assert len(summary["pref/val_accuracy"]) == 2
    _, dpo_params, dpo_header = checkpoints.load_offline_policy(tmp_path / "dpo_seed1.npz")
    assert dpo_header["meta"]["learner"]["beta"] == pytest.approx(0.1)
    assert jax.tree.structure(dpo_params) == jax.tree.structure(params)
    # A reference whose action dimension differs from the dataset's: a clear error.
    data2 = tmp_path / "data2.npz"
    dataset_io.save(data2, synthetic_dataset(act_dim=2), task="synthetic")
    code = main(["train", "dpo", *common[2:], "--dataset", str(data2),
                 "--reference", str(tmp_path / "bc.npz"), "--out", str(tmp_path / "x.npz")])
    assert code == 2 and "action dimension 2 differs" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
    assert math.isfinite(bc_summary["bc/val_nll"][0])


def test_train_and_eval_commands_end_to_end_on_half_cheetah(tmp_path, capsys):
    """One tiny PPO update on the real task, then `prefrl eval` of its checkpoint."""
    from prefrl import cli

    out = tmp_path / "hc"
    code = cli.main([
        "train", "ppo", "--task", "target-speed", "--total-steps", "128", "--num-envs", "2",
        "--rollout-steps", "64", "--eval-episodes", "1", "--num-epochs", "1",
        "--num-minibatches", "2", "--policy-hidden", "8", "--value-hidden", "8",
        "--progress", "false", "--num-threads", "1", "--out-dir", str(out),
    ])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["env_steps"] == 128 and summary["task"] == "target-speed"
    assert np.isfinite(summary["mean_return"]) and "mean_speed_error" in summary
    code = cli.main(["eval", "--checkpoint", str(out / "final.npz"), "--episodes", "1"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # Same policy, same deterministic evaluation protocol: mean |v_x − 2| is finite and ≥ 0.
    assert result["task"] == "target-speed" and result["episodes"] == 1
    assert result["mean_speed_error"] >= 0 and np.isfinite(result["mean_return"])
