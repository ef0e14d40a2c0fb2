"""Task specs, reward functions and the registered Gymnasium environments."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import jax.numpy as jnp
import mujoco
import numpy as np
import prefrl.envs
import pytest
from prefrl.envs import TASKS, make_task
from prefrl.envs.half_cheetah import HalfCheetahTaskEnv


def test_tasks_and_defaults():
    assert set(TASKS) == {"run", "run-backward", "target-speed"}
    spec = make_task("target-speed")
    assert spec.params_dict == {"target_speed": 2.0, "ctrl_cost_weight": 0.1}
    assert (spec.obs_dim, spec.act_dim, spec.episode_length) == (17, 6, 1000)
    assert spec.dt == pytest.approx(0.05)
    assert make_task("target-speed", target_speed=3.0).params_dict["target_speed"] == 3.0
    # Frozen and hashable: usable as a jit static argument.
    assert hash(spec) == hash(make_task("target-speed"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "run"  # type: ignore[misc]


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match="unknown task 'walk'.*run-backward.*target-speed"):
        make_task("walk")
    with pytest.raises(ValueError, match="unknown task"):
        prefrl.envs.as_task("fly")


def test_bad_task_params():
    with pytest.raises(ValueError, match="no parameter.*target_speed"):
        make_task("run", target_speed=1.0)
    with pytest.raises(ValueError, match="finite"):
        make_task("target-speed", target_speed=float("nan"))


def test_model_matches_task_constants():
    model = mujoco.MjModel.from_xml_path(prefrl.envs.model_path())
    spec = make_task("run")
    assert model.opt.timestep * spec.frame_skip == pytest.approx(spec.dt)
    assert model.nu == spec.act_dim
    assert model.nq - 1 + model.nv == spec.obs_dim
    np.testing.assert_array_equal(model.actuator_ctrlrange, [[-1.0, 1.0]] * 6)


@pytest.mark.parametrize("xp", [np, jnp])
def test_rewards_known_answers(xp):
    v = xp.asarray([2.0, 3.0])
    a = xp.full((2, 6), 0.5)
    # ctrl cost: 0.1 * 6 * 0.5^2 = 0.15
    np.testing.assert_allclose(make_task("run").reward(v, a), [2.0 - 0.15, 3.0 - 0.15], rtol=1e-6)
    np.testing.assert_allclose(
        make_task("run", forward_reward_weight=2.0).reward(v, a), [3.85, 5.85], rtol=1e-6
    )
    np.testing.assert_allclose(make_task("run-backward").reward(v, a), [-2.15, -3.15], rtol=1e-6)
    # |2 - 2| = 0 and |3 - 2| = 1
    np.testing.assert_allclose(make_task("target-speed").reward(v, a), [-0.15, -1.15], rtol=1e-6)
    np.testing.assert_allclose(
        make_task("target-speed", target_speed=3.0).reward(v, a), [-1.15, -0.15], rtol=1e-6
    )


def test_target_speed_peaks_at_target():
    spec = make_task("target-speed", target_speed=2.5)
    v = np.linspace(0.0, 5.0, 501)
    r = spec.reward(v, np.zeros((501, 6)))
    assert v[np.argmax(r)] == pytest.approx(2.5)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_registered(name):
    env = gym.make(TASKS[name].gym_id)
    assert env.spec.max_episode_steps == 1000
    obs, _ = env.reset(seed=0)
    assert obs.shape == (17,)
    assert env.action_space.shape == (6,)
    assert env.unwrapped.task == make_task(name)
    env.close()


def test_gym_task_params_and_fixed_kwargs():
    env = gym.make("prefrl/HalfCheetahTargetSpeed-v0", target_speed=3.0)
    assert env.unwrapped.task.params_dict["target_speed"] == 3.0
    env.reset(seed=1)
    action = np.full(6, 0.2)
    _, reward, _, _, info = env.step(action)
    # -|v - 3| - 0.1 * 6 * 0.04
    assert reward == pytest.approx(-abs(info["x_velocity"] - 3.0) - 0.024, rel=1e-12)
    with pytest.raises(ValueError, match="frame_skip"):
        HalfCheetahTaskEnv("run", frame_skip=2)
    with pytest.raises(ValueError, match="unknown task"):
        HalfCheetahTaskEnv("walk")


def test_run_env_equals_gymnasium_halfcheetah_v5():
    """Same seed and actions -> bit-identical observations and rewards, through truncation."""
    ref = gym.make("HalfCheetah-v5")
    ours = gym.make("prefrl/HalfCheetahRun-v0")
    obs_ref, _ = ref.reset(seed=123)
    obs_ours, _ = ours.reset(seed=123)
    np.testing.assert_array_equal(obs_ours, obs_ref)
    actions = np.random.default_rng(0).uniform(-1.0, 1.0, (1005, 6))
    for t, action in enumerate(actions):
        o1, r1, te1, tr1, _ = ref.step(action)
        o2, r2, te2, tr2, _ = ours.step(action)
        np.testing.assert_array_equal(o2, o1)
        assert r2 == r1
        assert (te2, tr2) == (te1, tr1) == (False, t == 999)
        if tr1:
            np.testing.assert_array_equal(ours.reset()[0], ref.reset()[0])


def test_run_backward_mirrors_run_forward_term():
    ref = gym.make("HalfCheetah-v5")
    back = gym.make("prefrl/HalfCheetahRunBackward-v0")
    ref.reset(seed=5)
    back.reset(seed=5)
    for action in np.random.default_rng(1).uniform(-1, 1, (20, 6)):
        _, r_fwd, _, _, info = ref.step(action)
        _, r_back, _, _, _ = back.step(action)
        ctrl = 0.1 * np.sum(action**2)
        # run: v - c; backward: -v - c  =>  r_back = -(r_fwd + c) - c
        assert r_back == pytest.approx(-(r_fwd + ctrl) - ctrl, abs=1e-12)
        assert r_fwd + ctrl == pytest.approx(info["x_velocity"], abs=1e-12)


def test_envs_import_from_outside_the_repository_despite_a_local_envs_folder(tmp_path):
    # `envs/` installs as `prefrl.envs` (pyproject package-dir), so a user's own `envs/`
    # folder in the working directory neither shadows it nor is shadowed by it.
    import subprocess
    import sys

    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "__init__.py").write_text("MINE = True\n")
    code = (
        "import envs, prefrl.envs, gymnasium as gym\n"
        "assert envs.MINE\n"
        "assert 'prefrl/HalfCheetahTargetSpeed-v0' in gym.registry\n"
        "print(prefrl.envs.make_task('target-speed').params_dict['target_speed'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "2.0"


def test_model_compiles_without_the_settotalmass_warning_and_equals_gymnasiums():
    # MuJoCo prints its `settotalmass` deprecation warning from C, so run a fresh process.
    import subprocess
    import sys

    code = "from prefrl.envs.tasks import _compiled_model; _compiled_model()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "settotalmass" not in out.stdout + out.stderr
    ours = prefrl.envs.tasks._compiled_model()
    reference = mujoco.MjModel.from_xml_path(prefrl.envs.model_path())
    for name in dir(reference):
        value = getattr(reference, name, None)
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(getattr(ours, name), value, err_msg=name)
    for name in ("meanmass", "meaninertia", "meansize", "extent", "center"):
        np.testing.assert_array_equal(getattr(ours.stat, name), getattr(reference.stat, name))
