"""Cut fixed-length segments out of time-major rollouts (docs/design.md §1).

A segment of length k starting at step t of batch column b is
``(s_t, a_t, …, s_{t+k-1}, a_{t+k-1}, s_{t+k})`` with ``s_{t+k} =
next_obs[t+k-1, b]`` — the true final state even when the episode ends at
step ``t+k-1`` (the regret model needs V(s_k) there). Segments never contain a
step after an episode end: a segment may *end* on a done step but not cross it.

Starts are laid out every ``stride`` steps *from each episode's first step*
(or from the trajectory's first row for an episode already under way), so
the grid restarts after every reset instead of losing the windows that would
straddle it.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from prefrl.types import Segments, Trajectory


def segment_starts(done: np.ndarray, length: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """``done [T, B] -> (batch [N], start [N])`` of every valid segment, sorted by (b, t).

    Valid: ``t`` is a multiple of ``stride`` steps after its episode's first
    step, ``t + length <= T``, and no step in ``[t, t + length − 2]`` is done.
    """
    done = np.asarray(done, dtype=bool)
    if done.ndim != 2:
        raise ValueError(f"done must be [T, B], got shape {done.shape}")
    T, B = done.shape
    _check_length_stride(length, stride, T)
    t_idx = np.arange(T)[:, None]
    # First step of the episode each (t, b) belongs to: 0, or one after the latest done.
    is_first = np.zeros((T, B), bool)
    is_first[0] = True
    is_first[1:] = done[:-1]
    episode_start = np.maximum.accumulate(np.where(is_first, t_idx, 0), axis=0)
    on_grid = (t_idx - episode_start) % stride == 0
    # dones in [t, t + length - 2] = cs[t + length - 1] - cs[t], cs exclusive prefix sum.
    cs = np.concatenate([np.zeros((1, B), np.int64), np.cumsum(done, axis=0)], axis=0)
    n_windows = T - length + 1
    crosses = cs[length - 1 : length - 1 + n_windows] - cs[:n_windows] > 0
    valid = on_grid[:n_windows] & ~crosses
    batch, start = np.nonzero(valid.T)
    return batch, start


def _check_length_stride(length: int, stride: int, num_steps: int) -> None:
    if isinstance(length, bool) or not isinstance(length, int | np.integer) or length <= 0:
        raise ValueError(f"segment length must be a positive int, got {length!r}")
    if length > num_steps:
        raise ValueError(
            f"segment length {length} is longer than the trajectory ({num_steps} steps)"
        )
    if isinstance(stride, bool) or not isinstance(stride, int | np.integer) or stride <= 0:
        raise ValueError(f"segment stride must be a positive int, got {stride!r}")


def segment(traj: Trajectory, length: int, stride: int) -> Segments:
    """``Trajectory [T, B, …] -> Segments [N, length, …]`` (numpy arrays).

    ``source[i] = (b, t)``: segment i is rows ``t … t + length − 1`` of column
    b. Raises ``ValueError`` if ``length`` ≤ 0 or longer than the trajectory,
    or ``stride`` ≤ 0. Every mask entry is 1 (a segment never crosses an
    episode end). Returns zero segments if no window fits between resets.
    """
    done = np.asarray(traj.terminated, bool) | np.asarray(traj.truncated, bool)
    batch, start = segment_starts(done, length, stride)
    rows = start[:, None] + np.arange(length)[None, :]  # [N, k]
    cols = batch[:, None]  # [N, 1], broadcast against rows

    def take(x: np.ndarray) -> np.ndarray:
        return np.asarray(x)[rows, cols]

    n = start.shape[0]
    return Segments(
        obs=take(traj.obs),
        action=take(traj.action),
        reward=take(traj.reward),
        next_obs=take(traj.next_obs),
        mask=np.ones((n, length), np.float32),
        x_velocity=take(traj.x_velocity),
        qpos=take(traj.qpos),
        qvel=take(traj.qvel),
        source=np.stack([batch, start], axis=1).astype(np.int64).reshape(n, 2),
    )


def grid_segments(traj: Trajectory, length: int, stride: int) -> Segments:
    """``Trajectory [T, B, …] -> Segments [B·S, length, …]`` with static shapes (jnp; traceable).

    The device-side cut of :mod:`prefrl.loops.online.mjx`: starts at ``t = 0,
    stride, …`` (``S = (T − length) // stride + 1`` per column, the grid of
    the rollout rather than of each episode), ordered by (b, t) like
    :func:`segment`. A window that crosses an episode end is kept with
    ``mask[i, t] = 0`` on the steps after the end (they belong to the next
    episode), so every shape is fixed; :func:`segment` drops such windows
    instead. For half-cheetah (1000-step episodes) they are rare.
    """
    num_steps, batch = traj.reward.shape
    _check_length_stride(length, stride, num_steps)
    starts = np.arange(0, num_steps - length + 1, stride)
    rows = starts[:, None] + np.arange(length)[None, :]  # [S, k]

    def take(x: jnp.ndarray) -> jnp.ndarray:
        # [T, B, …] -> [S, k, B, …] -> [B, S, k, …] -> [B·S, k, …]
        y = jnp.moveaxis(jnp.asarray(x)[rows], 2, 0)
        return y.reshape(batch * starts.size, length, *y.shape[3:])

    done = take(jnp.asarray(traj.terminated) | jnp.asarray(traj.truncated)).astype(jnp.float32)
    # Steps after an episode end inside the window: an end strictly before t.
    ended_before = jnp.cumsum(done, axis=1) - done
    source = np.stack(np.broadcast_arrays(np.arange(batch)[:, None], starts[None, :]), -1)
    return Segments(
        obs=take(traj.obs), action=take(traj.action), reward=take(traj.reward),
        next_obs=take(traj.next_obs), mask=(ended_before == 0).astype(jnp.float32),
        x_velocity=take(traj.x_velocity), qpos=take(traj.qpos), qvel=take(traj.qvel),
        source=jnp.asarray(source.reshape(-1, 2), jnp.int32),
    )
