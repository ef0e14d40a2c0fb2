"""``prefrl fit``: dataset file → reward model file and JSON summary; its errors."""

import json

import jax
import jax.numpy as jnp
import pytest
from test_reward_model import CLI_MODEL, write_dataset

from prefrl import checkpoints
from prefrl.learners import reward_model as rm


def test_fit_command_writes_model_and_json(tmp_path, capsys):

    from prefrl.cli import main

    data = write_dataset(tmp_path / "d.npz")
    out, metrics = tmp_path / "m.npz", tmp_path / "m.json"
    # The old name of the Â learner still works, with a deprecation warning.
    with pytest.warns(DeprecationWarning, match="'advantage'"):
        code = main(["fit", "--dataset", str(data), "--label", "regret", "--assumption",
                     "regret", "--discount", "0.9", "--out", str(out), "--metrics", str(metrics),
                     *CLI_MODEL])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["assumption"] == "regret" and summary["num_train"] == 180
    assert summary["num_valid"] == 20 and len(summary["valid_accuracy"]) == 2
    assert json.loads(metrics.read_text()) == summary
    (model, _), header = checkpoints.load_reward_model(out)
    assert model.config.assumption == "regret" and header["obs_dim"] == 6


def test_fit_command_errors(tmp_path, capsys):
    from prefrl.cli import main

    # A model for obs 6, length 10 (as `prefrl fit` on such data would write; no fit needed).
    example = rm.PairBatch(jnp.zeros((1, 10, 6)), jnp.zeros((1, 10, 2)), jnp.ones((1, 10)),
                           jnp.zeros((1, 10, 6)), jnp.zeros((1, 10, 2)), jnp.ones((1, 10)),
                           jnp.ones((1,)))
    cfg = rm.RewardModelConfig(hidden=(8,), ensemble_size=2)
    model = checkpoints.save_reward_model(tmp_path / "m.npz", rm.model(cfg),
                                          rm.make(cfg).init(jax.random.key(0), example),
                                          obs_dim=6, act_dim=2, segment_length=10)
    # Warm-starting from a model built for another observation size / segment length.
    for name, kw, message in (("obs", dict(obs_dim=4), "observation size mismatch"),
                              ("len", dict(length=7), "segment length mismatch")):
        other = write_dataset(tmp_path / f"{name}.npz", **kw)
        code = main(["fit", "--dataset", str(other), "--init", str(model),
                     "--out", str(tmp_path / "x.npz"), *CLI_MODEL])
        assert code == 2 and message in capsys.readouterr().err
    single = write_dataset(tmp_path / "single.npz", single_class=True)
    assert main(["fit", "--dataset", str(single), "--out", str(tmp_path / "s.npz"),
                 *CLI_MODEL]) == 2
    assert "single-class label set" in capsys.readouterr().err
    # A diverging run names step and metric and leaves no model file behind
    # (observations of size 1e30 overflow float32 in the first layer).
    huge = write_dataset(tmp_path / "huge.npz", obs_scale=1e30)
    diverge = tmp_path / "nan.npz"
    assert main(["fit", "--dataset", str(huge), "--out", str(diverge), *CLI_MODEL]) == 1
    err = capsys.readouterr().err
    assert "became non-finite at step" in err and not diverge.exists()
