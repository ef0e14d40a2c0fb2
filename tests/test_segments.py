"""Segmenting trajectories and trajectory files."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefrl.data.segments import segment, segment_starts
from prefrl.data.trajectories import load_trajectory, save_trajectory
from prefrl.io import FileFormatError, save_npz
from prefrl.types import Trajectory


def fake_trajectory(T: int, B: int, done_at: dict[int, list[int]] | None = None) -> Trajectory:
    """Trajectory whose entries encode (t, b): obs[t, b, :] = 1000 t + b, next_obs = obs + 0.5."""
    code = 1000.0 * np.arange(T)[:, None] + np.arange(B)[None, :]  # [T, B]
    truncated = np.zeros((T, B), bool)
    for b, ts in (done_at or {}).items():
        truncated[ts, b] = True
    return Trajectory(
        obs=np.repeat(code[..., None], 17, axis=-1),
        action=np.repeat(code[..., None], 6, axis=-1) / 1e6,
        reward=code.copy(),
        next_obs=np.repeat(code[..., None], 17, axis=-1) + 0.5,
        terminated=np.zeros((T, B), bool),
        truncated=truncated,
        x_velocity=code.copy(),
        qpos=np.repeat(code[..., None], 9, axis=-1),
        qvel=np.repeat(code[..., None], 9, axis=-1),
    )


def test_known_layout_without_resets():
    traj = fake_trajectory(T=10, B=2)
    seg = segment(traj, length=4, stride=3)
    # starts 0, 3, 6 per column (6 + 4 = 10 fits; 9 + 4 does not), column-major order.
    np.testing.assert_array_equal(seg.source, [[0, 0], [0, 3], [0, 6], [1, 0], [1, 3], [1, 6]])
    assert seg.obs.shape == (6, 4, 17) and seg.action.shape == (6, 4, 6)
    assert seg.reward.shape == (6, 4) and seg.qpos.shape == (6, 4, 9)
    # segment (b=1, t=3): rows 3..6 -> reward codes 3001, 4001, 5001, 6001
    np.testing.assert_array_equal(seg.reward[4], [3001, 4001, 5001, 6001])
    # final next-state s_k of that segment is next_obs[6, 1] = 6001.5
    np.testing.assert_array_equal(seg.final_obs[4], np.full(17, 6001.5))
    np.testing.assert_array_equal(seg.mask, np.ones((6, 4)))


def test_segments_end_at_but_never_cross_a_reset():
    # column 0: episode ends at t=4 (truncated), new episode starts at t=5.
    traj = fake_trajectory(T=12, B=1, done_at={0: [4]})
    seg = segment(traj, length=3, stride=1)
    starts = seg.source[:, 1].tolist()
    # windows [t, t+2] may contain the done step only as their last step:
    # t=0,1,2 ok (t=2 ends at 4); t=3,4 cross; t=5..9 ok.
    assert starts == [0, 1, 2, 5, 6, 7, 8, 9]
    ending = seg.source[:, 1] == 2
    # the segment ending on the done step keeps the true final state next_obs[4]
    np.testing.assert_array_equal(seg.final_obs[ending][0], np.full(17, 4000.5))


def test_stride_grid_restarts_each_episode():
    # episode boundary after t=6; stride 4 restarts at t=7 instead of continuing 0, 4, 8.
    traj = fake_trajectory(T=16, B=1, done_at={0: [6]})
    seg = segment(traj, length=3, stride=4)
    # episode 1: starts 0, 4 (4+2=6 ends on the done step); episode 2: 7, 11 (11+3=14 <= 16)
    assert seg.source[:, 1].tolist() == [0, 4, 7, 11]


def test_jax_leaves_accepted():
    traj = jax.tree.map(np.asarray, fake_trajectory(T=6, B=2))
    seg = segment(traj, 3, 3)
    assert seg.num_segments == 4 and seg.length == 3


@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(1, 30),
    B=st.integers(1, 4),
    length=st.integers(1, 8),
    stride=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_invariants(T, B, length, stride, seed):
    if length > T:
        return
    rng = np.random.default_rng(seed)
    traj = fake_trajectory(T, B)
    traj = traj.replace(truncated=rng.random((T, B)) < 0.1)
    seg = segment(traj, length, stride)
    done = np.asarray(traj.done)
    for i, (b, t) in enumerate(seg.source):
        assert t + length <= T
        assert not done[t : t + length - 1, b].any()  # at most the last step is done
        np.testing.assert_array_equal(seg.obs[i], traj.obs[t : t + length, b])
        np.testing.assert_array_equal(seg.final_obs[i], traj.next_obs[t + length - 1, b])
        # on the stride grid of its episode
        prev_done = np.nonzero(done[:t, b])[0]
        episode_start = prev_done[-1] + 1 if prev_done.size else 0
        assert (t - episode_start) % stride == 0
    # complete: every valid grid window is present
    expected = set()
    for b in range(B):
        episode_start = 0
        for t in range(T):
            if t > 0 and done[t - 1, b]:
                episode_start = t
            if (
                (t - episode_start) % stride == 0
                and t + length <= T
                and not done[t : t + length - 1, b].any()
            ):
                expected.add((b, t))
    assert set(map(tuple, seg.source.tolist())) == expected


def test_bad_lengths():
    traj = fake_trajectory(T=5, B=1)
    with pytest.raises(ValueError, match="segment length 6 is longer than the trajectory"):
        segment(traj, 6, 1)
    with pytest.raises(ValueError, match="segment length must be a positive int"):
        segment(traj, 0, 1)
    with pytest.raises(ValueError, match="segment stride must be a positive int"):
        segment(traj, 2, 0)
    with pytest.raises(ValueError, match=r"done must be \[T, B\]"):
        segment_starts(np.zeros(5, bool), 2, 1)


def test_trajectory_file_round_trip(tmp_path):
    traj = fake_trajectory(T=7, B=3, done_at={1: [2]})
    path = tmp_path / "traj.npz"
    save_trajectory(path, traj, {"seed": 4}, task="target-speed")
    loaded, header = load_trajectory(path)
    jax.tree.map(np.testing.assert_array_equal, loaded, traj)
    assert header["task"] == "target-speed"
    assert header["task_params"] == {"target_speed": 2.0, "ctrl_cost_weight": 0.1}
    assert header["seed"] == 4 and header["num_steps"] == 7 and header["num_envs"] == 3
    # task can also come from the header
    save_trajectory(path, traj, {"task": "run", "task_params": {"forward_reward_weight": 2.0}})
    assert load_trajectory(path)[1]["task_params"]["forward_reward_weight"] == 2.0


def test_trajectory_file_errors(tmp_path):
    traj = fake_trajectory(T=4, B=2)
    with pytest.raises(ValueError, match="needs the task"):
        save_trajectory(tmp_path / "a.npz", traj)
    with pytest.raises(ValueError, match="unknown task"):
        save_trajectory(tmp_path / "a.npz", traj, task="fly")
    bad = traj.replace(reward=np.where(np.eye(4, 2, dtype=bool), np.nan, traj.reward))
    with pytest.raises(ValueError, match="reward contains non-finite"):
        save_trajectory(tmp_path / "a.npz", bad, task="run")
    with pytest.raises(ValueError, match="qvel has nv = 8, task 'run' needs 9"):
        save_trajectory(tmp_path / "a.npz", traj.replace(qvel=traj.qvel[..., :8]), task="run")
    assert not (tmp_path / "a.npz").exists()
    with pytest.raises(ValueError, match=r"qvel has shape \(4, 2\), expected \[T=4, B=2, nv\]"):
        save_trajectory(tmp_path / "a.npz", traj.replace(qvel=traj.qvel[..., 0]), task="run")
    # A file whose arrays disagree is rejected on load.
    arrays = {f: np.asarray(getattr(traj, f)) for f in Trajectory.__dataclass_fields__}
    arrays["next_obs"] = arrays["next_obs"][:3]
    header = {"kind": "trajectory", "schema_version": 1, "task": "run", "task_params": {}}
    save_npz(tmp_path / "b.npz", arrays, header)
    with pytest.raises(FileFormatError, match="next_obs has shape"):
        load_trajectory(tmp_path / "b.npz")
    save_npz(tmp_path / "c.npz", arrays, {"kind": "dataset", "schema_version": 1})
    with pytest.raises(FileFormatError, match="expected a 'trajectory' file"):
        load_trajectory(tmp_path / "c.npz")
    with pytest.raises(FileNotFoundError):
        load_trajectory(tmp_path / "missing.npz")


def test_collect_command_writes_a_loadable_trajectory(tmp_path, capsys):
    from prefrl.cli import main

    out = tmp_path / "run.npz"
    argv = ["collect", "--task", "target-speed", "--target-speed", "3.0", "--num-envs", "2"]
    assert main([*argv, "--steps", "6", "--seed", "4", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["env_steps"] == 12 and summary["policy"] == "uniform_random"
    traj, header = load_trajectory(out)
    assert traj.obs.shape == (6, 2, 17) and traj.obs.dtype == np.float32
    assert header["task"] == "target-speed" and header["task_params"]["target_speed"] == 3.0
    assert header["seed"] == 4
    assert np.all(np.abs(traj.action) <= 1.0)
    # bad input: one clear error line, exit status 2
    assert main(["collect", "--task", "fly", "--out", str(out)]) == 2
    assert "unknown task 'fly'" in capsys.readouterr().err
