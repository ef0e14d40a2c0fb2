"""Tiny trajectories and a stand-in critic for the labelling tests (no MuJoCo run)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from prefrl.data import dataset as ds
from prefrl.types import PreferenceDataset


def assert_same(a: PreferenceDataset, b: PreferenceDataset):
    for field in ds.SEGMENT_FIELDS:
        x, y = np.asarray(getattr(a.segments, field)), np.asarray(getattr(b.segments, field))
        assert x.dtype == y.dtype, field
        np.testing.assert_array_equal(x, y, err_msg=field)
    np.testing.assert_array_equal(np.asarray(a.first), np.asarray(b.first))
    np.testing.assert_array_equal(np.asarray(a.second), np.asarray(b.second))
    assert a.labels.keys() == b.labels.keys()
    for name in a.labels:
        np.testing.assert_array_equal(np.asarray(a.labels[name]), np.asarray(b.labels[name]))
        np.testing.assert_array_equal(
            np.asarray(a.label_mask[name]), np.asarray(b.label_mask[name])
        )


def write_tiny_trajectory(path, num_steps=30, num_envs=2, seed=0):
    from prefrl.data.trajectories import save_trajectory
    from prefrl.types import Trajectory

    rng = np.random.default_rng(seed)
    t, b = num_steps, num_envs
    obs = rng.normal(size=(t + 1, b, 17)).astype(np.float32)
    truncated = np.zeros((t, b), bool)
    truncated[14, 1] = True  # column 1 resets after step 14
    traj = Trajectory(
        obs=obs[:-1],
        action=rng.uniform(-1, 1, size=(t, b, 6)).astype(np.float32),
        reward=rng.normal(size=(t, b)).astype(np.float32),
        next_obs=obs[1:],
        terminated=np.zeros((t, b), bool),
        truncated=truncated,
        x_velocity=rng.normal(size=(t, b)).astype(np.float32),
        qpos=rng.normal(size=(t, b, 9)).astype(np.float32),
        qvel=rng.normal(size=(t, b, 9)).astype(np.float32),
    )
    save_trajectory(path, traj, task="run")
    return traj


def fake_value_fn(obs):
    # V_E(s) = first observation coordinate: enough to check the endpoint arithmetic.
    return jnp.asarray(obs)[..., 0]


