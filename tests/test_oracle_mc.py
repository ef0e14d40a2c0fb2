"""prefrl.oracles_mc: the MC regret oracle (issue #24); `prefrl label --oracle-value mc`."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from prefrl import oracles_mc
from prefrl.config import ConfigError
from prefrl.oracles import OracleConfig

EXPERT = "experiments/experts/run/final.npz"
GAMMA = 0.99


class _Deterministic:
    """A stand-in expert policy that ignores its noise: a = 0.5 tanh(obs[:, :6])."""

    @staticmethod
    def act_with_noise(obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        del noise
        return 0.5 * np.tanh(np.asarray(obs, np.float64)[:, :6])


def _fake_expert(tail: float = 10.0) -> oracles_mc.MCExpert:
    from prefrl.envs import make_task

    return oracles_mc.MCExpert(_Deterministic(), lambda obs: np.full(len(obs), tail), GAMMA,
                               make_task("run"))


@functools.cache
def _random_segments(num_envs: int = 2, steps: int = 30, length: int = 10):
    from prefrl.data.segments import segment
    from prefrl.rollout import BatchedEnv
    from prefrl.types import Trajectory

    rng = np.random.default_rng(3)  # uniform random actions, stepped without JAX
    with BatchedEnv("run", num_envs=num_envs, seed=3) as env:
        env.reset()
        rows = [env.step(rng.uniform(-1, 1, (num_envs, 6))) for _ in range(steps)]
    traj = Trajectory(**{name: np.stack([row[name] for row in rows]) for name in rows[0]})
    return segment(traj, length, length)


def _hand_return(qpos: np.ndarray, qvel: np.ndarray, horizon: int, tail: float) -> float:
    """One deterministic rollout stepped by hand: Σ_{t<H} γ^t r_t + γ^H · tail."""
    env = oracles_mc.make_env("run", 1, horizon)
    env.set_state(oracles_mc.root_x_zero(qpos[None]), qvel[None])
    total = 0.0
    for t in range(horizon):
        action = _Deterministic.act_with_noise(env.obs.astype(np.float32), None)  # as the oracle
        total += GAMMA**t * float(env.step(action)["reward"][0])
    env.close()
    return total + GAMMA**horizon * tail


def test_config_refuses_missing_expert_and_bad_m_h():
    with pytest.raises(ConfigError, match="needs the expert checkpoint"):
        oracles_mc.MCConfig()
    with pytest.raises(ConfigError, match="--mc-rollouts must be an integer >= 1, got 0"):
        oracles_mc.MCConfig(expert=EXPERT, rollouts=0)
    with pytest.raises(ConfigError, match="--mc-horizon must be an integer >= 1, got 0"):
        oracles_mc.MCConfig(expert=EXPERT, horizon=0)
    with pytest.raises(ConfigError, match="--mc-rollouts"):
        oracles_mc.MCConfig(expert=EXPERT, rollouts=True)
    assert oracles_mc.MCConfig(expert=EXPERT, rollouts=3, horizon=7).steps_per_state == 21


def test_discounted_returns_known_answer():
    # γ = 0.5: column 0: 1 + 0.5·3 + 0.25·10 = 5; column 1: 2 + 0.5·4 + 0.25·20 = 9.
    out = oracles_mc.discounted_returns(np.array([[1.0, 2.0], [3.0, 4.0]]),
                                        np.array([10.0, 20.0]), 0.5)
    np.testing.assert_allclose(out, [5.0, 9.0])


def test_mc_values_equal_the_hand_rollout_for_a_deterministic_expert():
    # With a policy that ignores its noise, all M rollouts are the same rollout, so V̂ is
    # its return plus γ^H·tail, stepped by hand; the standard error is 0.
    pool = _random_segments()
    qpos, qvel = np.asarray(pool.qpos[:3, 0]), np.asarray(pool.qvel[:3, 0])
    env = oracles_mc.make_env("run", 4, 6)
    values = oracles_mc.mc_values(_fake_expert(), jax.random.key(0), qpos, qvel, rollouts=3,
                                  horizon=6, env=env)
    env.close()
    expected = [_hand_return(qpos[i], qvel[i], 6, 10.0) for i in range(3)]
    np.testing.assert_allclose(values.value, expected, rtol=1e-12)
    np.testing.assert_allclose(values.stderr, 0.0, atol=1e-12)
    assert values.returns.shape == (3, 3) and values.env_steps == 3 * 3 * 6


def test_final_state_reconstruction_reproduces_next_obs():
    pool = _random_segments()
    env = oracles_mc.make_env("run", 4, 2)
    qpos_k, qvel_k = oracles_mc.final_states(pool.qpos[:, -1], pool.qvel[:, -1],
                                             pool.action[:, -1], env=env)
    env.close()
    obs_k = np.concatenate([qpos_k[:, 1:], qvel_k], 1)
    np.testing.assert_allclose(obs_k, np.asarray(pool.next_obs[:, -1]), atol=1e-9)
    assert np.all(qpos_k[:, 0] == 0.0)


def test_shared_endpoints_are_computed_once():
    pool = _random_segments(num_envs=2, steps=30, length=10)  # 3 consecutive per env
    ends = oracles_mc.endpoints_of(pool)
    env = oracles_mc.make_env("run", 4, 2)
    used = np.arange(pool.obs.shape[0])
    qpos, _, at_0, at_k, stepped = oracles_mc.endpoint_states(ends, used, env=env)
    env.close()
    # 6 starts + the last segment of each env's s_k: 8 states, 2 of them stepped.
    assert qpos.shape[0] == 8 and stepped == 2
    np.testing.assert_array_equal(at_k[[0, 1, 3, 4]], at_0[[1, 2, 4, 5]])


def test_labels_use_the_mc_values_and_pool_arrays_work():
    pool = _random_segments()
    oracle = OracleConfig(model="regret", discount=GAMMA)
    mc = oracles_mc.MCConfig(expert=EXPERT, rollouts=2, horizon=5, num_envs=8)
    first, second = np.array([0, 2, 4]), np.array([1, 5, 3])
    labels, info = oracles_mc.label_queries_mc(
        oracle, mc, _fake_expert(), jax.random.key(1), pool, first, second,
        env=oracles_mc.make_env("run", 8, 5))
    reward = np.asarray(pool.reward, np.float64)
    k = reward.shape[1]

    def score(i: int) -> float:
        qk, vk = oracles_mc.final_states(pool.qpos[i : i + 1, -1], pool.qvel[i : i + 1, -1],
                                         pool.action[i : i + 1, -1],
                                         env=oracles_mc.make_env("run", 1, 2))
        v_0 = _hand_return(np.asarray(pool.qpos[i, 0]), np.asarray(pool.qvel[i, 0]), 5, 10.0)
        v_k = _hand_return(qk[0], vk[0], 5, 10.0)
        return float(reward[i] @ GAMMA ** np.arange(k) + GAMMA**k * v_k - v_0)

    np.testing.assert_allclose(labels.score_1, [score(i) for i in first], rtol=1e-5)
    np.testing.assert_array_equal(labels.label, np.asarray(labels.score_1 > labels.score_2,
                                                           np.float32))
    assert info["segments"] == 6 and info["queries"] == 3
    # The same queries from pool arrays that keep qpos/qvel of the first and last step only.
    arrays = {"reward": pool.reward, "action": pool.action, "obs": pool.obs,
              "next_obs": pool.next_obs, "qpos": np.asarray(pool.qpos)[:, [0, -1]],
              "qvel": np.asarray(pool.qvel)[:, [0, -1]]}
    again, _ = oracles_mc.label_queries_mc(
        oracle, mc, _fake_expert(), jax.random.key(1), arrays, first, second,
        env=oracles_mc.make_env("run", 8, 5))
    np.testing.assert_array_equal(again.score_1, labels.score_1)


def test_mc_values_deterministic_given_key_and_chunking():
    mc = oracles_mc.MCConfig(expert=EXPERT, rollouts=2, horizon=5)
    expert = oracles_mc.load_expert(mc, "run", discount=GAMMA)
    pool = _random_segments()
    qpos, qvel = np.asarray(pool.qpos[:3, 0]), np.asarray(pool.qvel[:3, 0])

    def values(key: int, num_envs: int) -> np.ndarray:
        env = oracles_mc.make_env("run", num_envs, 5)
        out = oracles_mc.mc_values(expert, jax.random.key(key), qpos, qvel, rollouts=2,
                                   horizon=5, env=env)
        env.close()
        return out.returns

    a, b = values(0, 4), values(0, 4)
    np.testing.assert_array_equal(a, b)
    cache = oracles_mc.EnvCache("run", 64, 5)
    np.testing.assert_allclose(oracles_mc.mc_values(expert, jax.random.key(0), qpos, qvel,
                                                    rollouts=2, horizon=5, env=cache).returns,
                               a, rtol=1e-5)
    assert [cache(n).num_envs for n in (6, 17, 1000)] == [16, 32, 64]
    cache.close()
    np.testing.assert_allclose(values(0, 6), a, rtol=1e-5)  # chunks do not change the draws
    assert not np.allclose(values(1, 4), a)
    assert np.all(a[:, 0] != a[:, 1])  # the M rollouts are different draws


def test_oracle_and_expert_refusals():
    from prefrl.io import FileFormatError

    expert = _fake_expert()
    with pytest.raises(ConfigError, match="serve the regret oracle"):
        oracles_mc.check_oracle(OracleConfig(model="partial_return"), expert)
    with pytest.raises(ConfigError, match="myopic"):
        oracles_mc.check_oracle(OracleConfig(model="regret", discount=GAMMA,
                                             myopic_discount=0.9), expert)
    with pytest.raises(ConfigError, match="differs from the expert's"):
        oracles_mc.check_oracle(OracleConfig(model="regret", discount=0.9), expert)
    with pytest.raises(FileNotFoundError):
        oracles_mc.load_expert(oracles_mc.MCConfig(expert="no/such/expert.npz"), "run")
    with pytest.raises(FileFormatError, match="task 'target-speed'"):
        oracles_mc.load_expert(
            oracles_mc.MCConfig(expert="experiments/experts/target-speed/final.npz"), "run")
    with pytest.raises(ValueError, match="needs \\['qpos'"):
        oracles_mc.endpoints_of({"reward": np.zeros((2, 3)), "action": np.zeros((2, 3, 6)),
                                 "qvel": np.zeros((2, 2, 9))})


def _write_trajectory(path) -> None:
    from prefrl.data.trajectories import save_trajectory
    from prefrl.rollout import BatchedEnv
    from prefrl.types import Trajectory

    rng = np.random.default_rng(5)
    with BatchedEnv("run", num_envs=2, seed=5, dtype=np.float32) as env:
        env.reset()
        rows = [env.step(rng.uniform(-1, 1, (2, 6))) for _ in range(20)]
    traj = Trajectory(**{name: np.stack([row[name] for row in rows]) for name in rows[0]})
    save_trajectory(path, jax.tree.map(
        lambda x: x.astype(np.float32) if x.dtype == np.float64 else x, traj), task="run")


def test_label_command_with_mc_values(tmp_path, capsys):
    import json

    from prefrl import cli
    from prefrl.data import dataset as ds

    _write_trajectory(tmp_path / "traj.npz")
    out = tmp_path / "prefs.npz"
    rc = cli.main(["label", "--trajectory", str(tmp_path / "traj.npz"), "--output", str(out),
                   "--segment-length", "5", "--stride", "5", "--budget", "6",
                   "--oracles", "partial_return", "regret", "--expert", EXPERT,
                   "--oracle-value", "mc", "--mc-rollouts", "2", "--mc-horizon", "4"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["mc"]["rollouts"] == 2 and summary["mc"]["env_steps"] > 0
    data, header = ds.load(out)
    assert header["meta"]["oracle_value"] == "mc" and header["meta"]["mc"]["horizon"] == 4
    assert set(np.unique(np.asarray(data.labels["regret"]))) <= {0.0, 0.5, 1.0}


@pytest.mark.parametrize("options, message", [
    (["--oracle-value", "mc"], "needs the expert checkpoint"),
    (["--oracle-value", "mc", "--expert", EXPERT, "--mc-rollouts", "0"],
     "--mc-rollouts must be an integer >= 1"),
    (["--oracle-value", "mc", "--expert", EXPERT, "--mc-horizon", "0"],
     "--mc-horizon must be an integer >= 1"),
    (["--oracle-value", "mc", "--expert", EXPERT, "--oracles", "partial_return"],
     "add regret to --oracles"),
])
def test_label_command_refuses_bad_mc_options(tmp_path, capsys, options, message):
    from prefrl import cli

    _write_trajectory(tmp_path / "traj.npz")
    out = tmp_path / "prefs.npz"
    base = ["label", "--trajectory", str(tmp_path / "traj.npz"), "--output", str(out),
            "--segment-length", "5", "--stride", "5", "--budget", "6"]
    if "--oracles" not in options:
        base += ["--oracles", "regret"]
    assert cli.main(base + options) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_label_command_refuses_an_expert_of_another_task(tmp_path, capsys):
    from prefrl import cli

    _write_trajectory(tmp_path / "traj.npz")
    out = tmp_path / "prefs.npz"
    rc = cli.main(["label", "--trajectory", str(tmp_path / "traj.npz"), "--output", str(out),
                   "--segment-length", "5", "--stride", "5", "--budget", "6",
                   "--oracles", "regret", "--oracle-value", "mc",
                   "--expert", "experiments/experts/target-speed/final.npz"])
    assert rc == 1 and "task 'target-speed'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow  # ~30 s: the bench's whole path at toy sizes
def test_bench_oracle_fidelity_smoke(tmp_path, capsys):
    import json

    from prefrl.bench import oracle_fidelity

    out = tmp_path / "fidelity.json"
    assert oracle_fidelity.main([
        "--tasks", "run", "--snapshot-fractions", "0.1", "--segments", "16", "--length", "5",
        "--warmup", "2", "--rollouts", "2", "--horizon", "3", "--ms", "1", "--pairs", "20",
        "--num-envs", "16", "--out", str(out)]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(last["summary"]["run"]) == {"random", "snapshot_0.1", "expert"}
    result = json.loads(out.read_text())
    source = result["tasks"]["run"]["sources"]["random"]
    assert source["segments"] == 16 and set(source["by_m"]) == {"1"}
    assert result["tasks"]["run"]["warm_start"]["final_state_max_abs_error"] < 1e-9
    assert "| `run` | random |" in out.with_suffix(".md").read_text()
