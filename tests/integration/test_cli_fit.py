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
    assert -1.0 <= summary["reward_pearson"] <= 1.0  # r̂ against the dataset's true reward
    (model, _), header = checkpoints.load_reward_model(out)
    assert model.config.assumption == "regret" and header["obs_dim"] == 6
    # r̂ with a learned potential Φ (the regret model's V): fitted, saved, loaded with Φ.
    code = main(["fit", "--dataset", str(data), "--label", "regret", "--discount", "0.9",
                 "--potential", "true", "--out", str(out), *CLI_MODEL])
    assert code == 0
    (model, state), _ = checkpoints.load_reward_model(out)
    assert model.config.potential and "phi" in state.params["params"]


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


# --------------------------------------------------------------------------- #
# --learner regret_sf: r̂ = w·φ under the regret model, on a dataset + a library
# --------------------------------------------------------------------------- #

_SF_TINY = ["--hidden", "16", "--ensemble-size", "2", "--num-steps", "20", "--eval-every", "10",
            "--library-steps", "10", "--library-reset-envs", "2", "--library-pool-envs", "2",
            "--heldout-envs", "2", "--heldout-steps", "10", "--psi-hidden", "16",
            "--psi-rounds", "1", "--psi-steps-per-round", "5", "--psi-batch-size", "32",
            "--sf-steps", "20", "--sf-batch-size", "16"]
_POOL = "experiments/data/target-speed.npz"  # the shipped labelled pool (stored states)


def _experts(folder, obs_dim=17, steps=(0, 1000)):
    from prefrl.envs import make_task

    from prefrl.learners import ppo

    config = ppo.PPOConfig(policy_hidden=(8,), value_hidden=(8,))
    learner = ppo.make(config, obs_dim, 6, num_updates=1)
    for i, env_steps in enumerate(steps):
        name = "final.npz" if i == len(steps) - 1 else f"snapshots/step_{env_steps:09d}.npz"
        checkpoints.save_ppo(folder / name, learner.init(jax.random.key(i)), config=config,
                             obs_dim=obs_dim, act_dim=6, num_updates=1,
                             task=make_task("target-speed").to_header(),
                             progress={"update": i, "env_steps": env_steps})
    return folder


def test_fit_regret_sf_writes_a_reward_ppo_can_optimise(tmp_path, capsys):
    from prefrl.cli import main
    from prefrl.learners import ppo
    from prefrl.loops import ppo as ppo_loop

    library = _experts(tmp_path / "experts")
    out = tmp_path / "rsf.npz"
    assert main(["fit", "--learner", "regret_sf", "--dataset", _POOL, "--label", "regret",
                 "--library", str(library), "--out", str(out), *_SF_TINY]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["learner"] == "regret_sf" and summary["discount"] == 0.99
    assert summary["library"] == ["snapshots/step_000000000.npz", "experts/final.npz"]
    for name in ("train_accuracy", "valid_accuracy", "psi_rel_error", "value_rel_error"):
        assert 0.0 <= summary[name] < 10.0, name
    (value, params), header = checkpoints.load_regret_sf_reward(out)
    assert header["task"]["task"] == "target-speed" and header["phi"]["kind"] == "frozen"
    # PPO takes the file as its reward; the reward is standardised on the training steps.
    kwargs = ppo_loop.rlhf_kwargs(str(out), None, ppo.PPOConfig())
    obs = jnp.ones((3, 2, 17))
    act = jnp.zeros((3, 2, 6))
    reward = kwargs["reward_fn"](obs, act, obs, {"reward_params": kwargs["reward_params"]})
    assert reward.shape == (3, 2) and bool(jnp.all(jnp.isfinite(reward)))
    assert jnp.allclose(reward, value(params, obs, act, obs))


def test_fit_regret_sf_refuses_bad_input_before_fitting(tmp_path, capsys):
    from prefrl.cli import main

    base = ["fit", "--learner", "regret_sf", "--dataset", _POOL, "--label", "regret",
            "--out", str(tmp_path / "out" / "rsf.npz"), *_SF_TINY]
    small = _experts(tmp_path / "small", obs_dim=5, steps=(0,))
    cases = [  # exit 1: a data file is missing; 2: the options or the data do not fit
        (["--library", str(tmp_path / "missing")], 1, "library path"),
        (["--library", str(small / "final.npz")], 2, "observation size mismatch"),
        (["--library", str(_experts(tmp_path / "ok")), "--phi-width", "0"], 2, "phi_width"),
        (["--library", str(tmp_path / "ok"), "--discount", "0.9"], 2, "differs from the regret"),
        ([], 2, "needs --library"),
        (["--library", str(tmp_path / "ok"), "--valid-fraction", "0"], 2, "validation split"),
    ]
    for extra, code, message in cases:
        assert main([*base, *extra]) == code, message
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert main(["fit", "--dataset", _POOL, "--library", str(small), "--out",
                 str(tmp_path / "out" / "m.npz")]) == 2
    assert "--library is for --learner regret_sf" in capsys.readouterr().err
    # The online snapshot library's reward model cannot be fitted offline: refused, nothing written.
    assert main(["fit", "--dataset", _POOL, "--library-size", "3", "--discount", "0.9", "--out",
                 str(tmp_path / "out" / "m.npz")]) == 2
    assert "needs the online loop's snapshot library" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
