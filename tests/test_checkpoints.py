"""PPO checkpoints and the training loop: round trip, clear errors, NaN guard, resume."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppo_toy import ACT_DIM, OBS_DIM, PointMassBatchedEnv

from prefrl import checkpoints, schema
from prefrl.io import FileFormatError
from prefrl.learners import ppo
from prefrl.loops import ppo as training

TINY = ppo.PPOConfig(
    num_epochs=2, num_minibatches=2, learning_rate=3e-3, policy_hidden=(16,), value_hidden=(16,)
)


# The toy environment's task: a name files may record besides prefrl's own tasks.
schema.register_task_name("point")


def _train_config(out_dir, **kw):
    base = dict(
        task="point-mass",
        total_steps=8 * 10 * 6,  # 6 updates of 8 envs × 10 steps
        num_envs=8,
        rollout_steps=10,
        eval_every=3,
        eval_episodes=4,
        checkpoint_every=1,
        out_dir=None if out_dir is None else str(out_dir),
        progress=False,
    )
    base.update(kw)
    return training.TrainConfig(**base)


def _env_factory(nan_reward=False):
    return lambda num_envs, seed: PointMassBatchedEnv(num_envs, seed, nan_reward=nan_reward)


def _train(tc, **kw):
    return training.train(tc, TINY, env_factory=_env_factory(), task_header={"task": "point"}, **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = _train(_train_config(out))
    return out, result


def test_training_writes_checkpoints_metrics_and_snapshots(trained):
    out, result = trained
    assert (out / "final.npz").exists() and (out / "last.npz").exists()
    # Snapshots at 2/5/10/25/50/100 % of 6 updates round to updates 1, 1, 1, 2, 3, 6.
    snaps = sorted(p.name for p in (out / "snapshots").iterdir())
    assert snaps == [f"step_{u * 80:09d}.npz" for u in (1, 2, 3, 6)]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert [e["update"] for e in result.evaluations] == [3, 6]
    # No temporary files left behind by the atomic writes.
    assert not [p for p in out.rglob("*.tmp")]


def test_round_trip_restores_state_and_functions(trained):
    out, result = trained
    state, header = checkpoints.load_ppo(out / "final.npz", obs_dim=OBS_DIM)
    chex.assert_trees_all_equal(state.policy_params, jax.device_get(result.state.policy_params))
    chex.assert_trees_all_equal(state.obs_stats, jax.device_get(result.state.obs_stats))
    chex.assert_trees_all_equal(state.return_stats, jax.device_get(result.state.return_stats))
    assert header["obs_dim"] == OBS_DIM and header["act_dim"] == ACT_DIM
    assert header["task"] == "point" and header["reward"] == "true"
    assert header["ppo_config"]["policy_hidden"] == [16]
    assert header["progress"]["update"] == 6

    acting = ppo.make_acting(TINY, ACT_DIM)
    obs = jnp.array([[0.5, 0.5], [-1.0, 1.0]], jnp.float32)
    policy_fn, info = checkpoints.load_policy(out / "final.npz")
    # Two compiled programs of the same arithmetic: float32 rounding may differ by an ulp
    # or two (seen on some x86 CPUs: 7e-7 absolute), so not rtol 1e-6.
    np.testing.assert_allclose(
        np.asarray(policy_fn(obs, jax.random.key(0))),
        np.asarray(acting.mode(result.state, obs)),
        rtol=1e-5, atol=2e-6,
    )
    mean, _ = info["apply"](info["params"], obs)
    np.testing.assert_allclose(
        np.tanh(np.asarray(mean)), np.asarray(acting.mode(result.state, obs)), rtol=1e-5
    )
    value_fn = checkpoints.load_value_fn(out / "final.npz")
    np.testing.assert_allclose(
        np.asarray(value_fn(obs)), np.asarray(acting.value(result.state, obs)), rtol=1e-5,
        atol=2e-6)


def test_observation_size_mismatch_is_a_clear_error(trained):
    out, _ = trained
    with pytest.raises(ValueError, match="observation size mismatch.*obs_dim 2.*obs_dim 17"):
        checkpoints.load_policy(out / "final.npz", obs_dim=17)


def test_corrupt_and_wrong_files_are_clear_errors(trained, tmp_path):
    out, _ = trained
    data = (out / "final.npz").read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="truncated or corrupt"):
        checkpoints.load_ppo(truncated)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(FileFormatError, match="truncated or corrupt"):
        checkpoints.load_ppo(garbage)
    with pytest.raises(FileNotFoundError):
        checkpoints.load_ppo(tmp_path / "missing.npz")
    # A valid npz of another kind.
    from prefrl.io import save_npz

    other = tmp_path / "other.npz"
    save_npz(other, {"x": np.zeros(3)}, {"kind": "dataset", "schema_version": 1})
    with pytest.raises(FileFormatError, match="expected a 'ppo_checkpoint' file"):
        checkpoints.load_ppo(other)


def test_value_fn_refuses_proxy_reward_checkpoints(trained, tmp_path):
    out, result = trained
    path = tmp_path / "proxy.npz"
    checkpoints.save_ppo(path, result.state, config=TINY, obs_dim=OBS_DIM, act_dim=ACT_DIM,
                         num_updates=6, reward="learned: rm.npz")
    # A checkpoint of a KL-regularised run (π_ref not stored) still loads.
    kl_path = tmp_path / "kl.npz"
    kl_config = ppo.PPOConfig(**{**TINY.__dict__, "kl_ref_coef": 0.5})
    checkpoints.save_ppo(kl_path, result.state, config=kl_config, obs_dim=OBS_DIM, act_dim=ACT_DIM,
                         num_updates=6, reward="true-kl0.5:ref.npz")
    checkpoints.load_policy(kl_path)
    with pytest.raises(ValueError, match="not the true reward"):
        checkpoints.load_value_fn(path)
    assert checkpoints.load_value_fn(path, allow_proxy=True)(jnp.zeros((1, OBS_DIM))).shape == (1,)


def test_nan_reward_is_a_clear_error():
    tc = _train_config(None)
    with pytest.raises(ValueError, match="non-finite reward in the rollout of update 1"):
        training.train(tc, TINY, env_factory=_env_factory(nan_reward=True))


def test_nan_from_reward_fn_is_a_clear_error():
    def broken(obs, action, next_obs, extras):
        return extras["reward"] * jnp.nan

    tc = _train_config(None)
    with pytest.raises(ValueError, match="non-finite values"):
        training.train(tc, TINY, env_factory=_env_factory(), reward_fn=broken)


def test_interrupted_training_resumes_from_last_checkpoint(tmp_path):
    out = tmp_path / "resume"
    tc = _train_config(out)
    first = _train(tc, stop_after_updates=4)
    assert first.history[-1]["update"] == 4
    assert not (out / "final.npz").exists()
    saved, header = checkpoints.load_ppo(out / "last.npz")
    assert header["progress"]["update"] == 4

    resumed_from = []
    second = _train(tc, log=resumed_from.append)
    assert any("resuming" in line and "update 4/6" in line for line in resumed_from)
    assert [r["update"] for r in second.history] == [5, 6]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in lines] == [1, 2, 3, 4, 5, 6]
    final, header = checkpoints.load_ppo(out / "final.npz")
    assert header["progress"]["update"] == 6
    # Training continued from the saved state: the optimiser's step count went on from it.
    assert int(final.step) == int(saved.step) + 2 == 6

    with pytest.raises(ValueError, match="cannot resume.*learning_rate"):
        training.train(
            tc, ppo.PPOConfig(**{**TINY.__dict__, "learning_rate": 1e-4}),
            env_factory=_env_factory(),
        )


def test_eval_command_rejects_a_checkpoint_of_another_observation_size(trained, capsys):
    from prefrl import cli

    out, _ = trained
    code = cli.main(["eval", "--checkpoint", str(out / "final.npz"), "--task", "run",
                     "--episodes", "1"])
    assert code == 2
    assert "observation size mismatch" in capsys.readouterr().err


def test_init_checkpoint_and_reference_policy_for_rlhf(trained, tmp_path):
    out, result = trained
    # A run started from a checkpoint begins with its policy, critic and normalisers.
    start = _train(_train_config(tmp_path / "init"), stop_after_updates=0,
                   init_checkpoint=out / "final.npz")
    want = jax.device_get(result.state.policy_params)
    chex.assert_trees_all_equal(start.state.policy_params, want)
    chex.assert_trees_all_equal(start.state.obs_stats, jax.device_get(result.state.obs_stats))
    # The same checkpoint as a frozen π_ref: (params, apply) on raw observations.
    params, apply = training.load_reference(out / "final.npz")
    obs = jnp.array([[0.3, 0.3]], jnp.float32)
    mean, _ = apply(params, obs)
    mode = ppo.make_acting(TINY, ACT_DIM).mode(result.state, obs)
    np.testing.assert_allclose(np.tanh(np.asarray(mean)), np.asarray(mode), rtol=1e-5)
    with pytest.raises(ValueError, match="needs --reference"):
        training.rlhf_kwargs(None, None, ppo.PPOConfig(kl_ref_coef=0.1))
    # β_KL = 0 with a reference: the KL is measured, not penalised, the reward stays "true".
    kwargs = training.rlhf_kwargs(None, str(out / "final.npz"), ppo.PPOConfig())
    assert "reference" in kwargs and "reward_name" not in kwargs
    kwargs = training.rlhf_kwargs(None, str(out / "final.npz"), ppo.PPOConfig(kl_ref_coef=0.1))
    assert kwargs["reward_name"].startswith("true-kl0.1:")


def test_load_policy_reads_offline_policy_files(tmp_path):
    # `prefrl train bc|cpl|dpo` write kind "policy" files; load_policy takes them too,
    # so eval/collect/π_ref accept either kind, and the observation size is checked.
    import jax
    import numpy as np

    from prefrl import checkpoints, networks

    network = networks.make_network(6, (8,), True)
    params = network.init(jax.random.key(0), np.zeros((1, 17), np.float32))
    path = checkpoints.save_offline_policy(tmp_path / "bc.npz", network, params, algo="bc")
    policy_fn, info = checkpoints.load_policy(path, obs_dim=17)
    assert policy_fn(np.zeros((3, 17), np.float32), jax.random.key(1)).shape == (3, 6)
    assert info["act_dim"] == 6 and info["obs_dim"] == 17
    with pytest.raises(ValueError, match="observations of size 17.*size 5"):
        checkpoints.load_policy(path, obs_dim=5)


def test_shipped_files_load_through_the_kind_registry():
    # Files in experiments/ predate prefrl.checkpoints' naming scheme: they must still load.
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "experiments"
    state, header = checkpoints.load(root / "experts" / "run" / "final.npz")
    assert header["kind"] == "ppo_checkpoint" and state.step > 0
    policy, info = checkpoints.read_policy(root / "experts" / "run" / "final.npz", obs_dim=17)
    assert info["act_dim"] == 6
    (model, state), header = checkpoints.load(root / "rlhf" / "target-speed" / "rm.npz")
    assert header["kind"] == "reward_model" and state.reward_std > 0
    assert model.config.hidden == tuple(header["config"]["hidden"])


def test_one_naming_scheme_round_trips(tmp_path):
    tree = {"params": {"Dense_0": {"kernel": np.ones((2, 3), np.float32)}},
            "stats": [np.zeros(2, np.float32), np.arange(3, dtype=np.int32)]}
    arrays = checkpoints.flatten(tree, "p")
    assert sorted(arrays) == ["p/params/Dense_0/kernel", "p/stats/0", "p/stats/1"]
    back = checkpoints.unflatten(tree, arrays, "p", "test")
    chex.assert_trees_all_equal(back, jax.tree.map(jnp.asarray, tree))
    assert checkpoints.unflatten_dict(arrays, "p")["params"]["Dense_0"]["kernel"].shape == (2, 3)
    with pytest.raises(FileFormatError, match="missing array 'q/params/Dense_0/kernel'"):
        checkpoints.unflatten(tree, arrays, "q", "test")


def test_regret_sf_reward_files_round_trip_both_kinds_of_phi(tmp_path):
    from prefrl.learners import reward_model as rm
    from prefrl.learners import sf_networks as nets
    from prefrl.types import PairBatch

    obs, act = jnp.linspace(-1, 1, 2 * 3 * 5).reshape(2, 3, 5), jnp.full((2, 3, 2), 0.3)
    module = nets.default_phi_network(4, (8,))
    learned = (nets.SFValue(nets.LearnedPhi(module)),
               {"phi": module.init(jax.random.key(0), jnp.zeros((7,))),
                "w": jnp.arange(4.0), "mean": jnp.float32(0.5), "std": jnp.float32(2.0)})
    cfg = rm.RewardModelConfig(hidden=(6,), ensemble_size=2)
    seg = (jnp.zeros((1, 3, 5)), jnp.zeros((1, 3, 2)), jnp.ones((1, 3)))
    rm_state = rm.make(cfg).init(jax.random.key(1), PairBatch(*seg, *seg, jnp.ones((1,))))
    frozen = (nets.SFValue(nets.FrozenPhi(rm.model(cfg))),
              {"phi": rm_state.replace(opt_state=None), "w": jnp.ones(12),
               "mean": jnp.float32(0.0), "std": jnp.float32(1.0)})
    for name, (value, params) in {"learned": learned, "frozen": frozen}.items():
        path = checkpoints.save_regret_sf_reward(tmp_path / f"{name}.npz", value, params,
                                                 obs_dim=5, act_dim=2)
        (loaded, loaded_params), header = checkpoints.load(path)
        assert header["phi"]["kind"] == name and loaded == value
        np.testing.assert_allclose(loaded(loaded_params, obs, act, obs),
                                   value(params, obs, act, obs), rtol=1e-6)
    with pytest.raises(ValueError, match="unsupported φ"):
        checkpoints.save_regret_sf_reward(tmp_path / "x.npz", nets.SFValue(lambda p: p),
                                          learned[1], obs_dim=5, act_dim=2)
    with pytest.raises(checkpoints.NonFiniteError, match="not finite"):
        checkpoints.save_regret_sf_reward(tmp_path / "nan.npz", learned[0],
                                          {**learned[1], "w": jnp.full(4, jnp.nan)},
                                          obs_dim=5, act_dim=2)
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "nan.npz").exists()
