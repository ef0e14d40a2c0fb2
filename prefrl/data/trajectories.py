"""Validated trajectory files (``kind = "trajectory"``), written atomically.

A file holds one :class:`prefrl.types.Trajectory` ``[T, B, …]`` (one array per
field) and a JSON header with the task name and reward parameters (so a
reader can recompute or relabel rewards) plus any caller-supplied entries
(policy checkpoint, seed, …).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from prefrl.envs.tasks import NQ, NV, TaskSpec, as_task, task_from_header
from prefrl.io import FileFormatError, load_npz, save_npz
from prefrl.types import Trajectory

KIND = "trajectory"
SCHEMA_VERSION = 1
FIELDS = (
    "obs",
    "action",
    "reward",
    "next_obs",
    "terminated",
    "truncated",
    "x_velocity",
    "qpos",
    "qvel",
)
_BOOL_FIELDS = ("terminated", "truncated")
# Named trailing dims of each field after [T, B]; equal names must have equal sizes.
_TRAILING: dict[str, tuple[str, ...]] = {
    "obs": ("obs",),
    "action": ("act",),
    "reward": (),
    "next_obs": ("obs",),
    "terminated": (),
    "truncated": (),
    "x_velocity": (),
    "qpos": ("nq",),
    "qvel": ("nv",),
}


def validate_trajectory(
    arrays: Mapping[str, Any], where: str = "trajectory", task: TaskSpec | None = None
) -> None:
    """Check shapes ``[T, B, …]`` agree across fields, floats are finite, flags are bool.

    With ``task``, the obs/action/qpos/qvel sizes must also be the task's.
    Raises ``ValueError`` naming the field and the problem.
    """
    missing = [f for f in FIELDS if f not in arrays]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    obs = np.asarray(arrays["obs"])
    if obs.ndim != 3:
        raise ValueError(f"{where}: obs must be [T, B, obs_dim], got shape {obs.shape}")
    T, B = obs.shape[:2]
    dims: dict[str, int] = {}
    if task is not None:
        dims = {"obs": task.obs_dim, "act": task.act_dim, "nq": NQ, "nv": NV}
    for name in FIELDS:
        x = np.asarray(arrays[name])
        trailing = _TRAILING[name]
        if x.ndim != 2 + len(trailing) or x.shape[:2] != (T, B):
            raise ValueError(
                f"{where}: {name} has shape {x.shape}, expected [T={T}, B={B}"
                + "".join(f", {d}" for d in trailing)
                + "]"
            )
        for dim_name, size in zip(trailing, x.shape[2:], strict=True):
            if dims.setdefault(dim_name, size) != size:
                source = f"task {task.name!r} needs" if task is not None else "other fields have"
                raise ValueError(
                    f"{where}: {name} has {dim_name} = {size}, {source} {dims[dim_name]}"
                )
        if name in _BOOL_FIELDS:
            if x.dtype != bool:
                raise ValueError(f"{where}: {name} must be bool, got {x.dtype}")
        else:
            if not np.issubdtype(x.dtype, np.floating):
                raise ValueError(f"{where}: {name} must be floating point, got {x.dtype}")
            if not np.isfinite(x).all():
                raise ValueError(f"{where}: {name} contains non-finite values")
    if task is not None:
        from prefrl.data.dataset_checks import check_task_values
        from prefrl.envs.tasks import ACTION_HIGH, ACTION_LOW

        check_task_values(where, "", np.asarray(arrays["obs"]), np.asarray(arrays["action"]),
                          np.asarray(arrays["next_obs"]), (ACTION_LOW, ACTION_HIGH))


def save_trajectory(
    path: str | os.PathLike,
    traj: Trajectory,
    header_extra: Mapping[str, Any] | None = None,
    *,
    task: str | TaskSpec | None = None,
) -> None:
    """Write ``traj`` to ``path`` (``.npz``), atomically, after validating it.

    The task comes from ``task`` or from ``header_extra["task"]`` (+
    ``"task_params"``); one of them is required. ``header_extra`` entries
    must be JSON-serialisable and may not override ``kind``/``schema_version``.
    """
    extra = dict(header_extra or {})
    for reserved in ("kind", "schema_version"):
        if reserved in extra:
            raise ValueError(f"header_extra may not set {reserved!r}")
    if task is None:
        if "task" not in extra:
            raise ValueError("save_trajectory needs the task (task=... or header_extra['task'])")
        spec = task_from_header(extra)
    else:
        spec = as_task(task)
    arrays = {name: np.asarray(getattr(traj, name)) for name in FIELDS}
    validate_trajectory(arrays, where=f"{path}", task=spec)
    header = {
        **extra,
        **spec.to_header(),
        "kind": KIND,
        "schema_version": SCHEMA_VERSION,
        "num_steps": int(arrays["obs"].shape[0]),
        "num_envs": int(arrays["obs"].shape[1]),
    }
    save_npz(path, arrays, header)


def load_trajectory(path: str | os.PathLike) -> tuple[Trajectory, dict[str, Any]]:
    """Read a file written by :func:`save_trajectory`: ``(Trajectory, header)``.

    Raises ``FileNotFoundError`` or :class:`prefrl.io.FileFormatError` (a
    ``ValueError``) naming the file and the problem.
    """
    arrays, header = load_npz(
        path, kind=KIND, supported_versions=(SCHEMA_VERSION,), required=FIELDS
    )
    try:
        spec = task_from_header(header)
        validate_trajectory(arrays, where=str(path), task=spec)
    except ValueError as err:
        raise FileFormatError(f"{path}: {err}" if str(path) not in str(err) else str(err)) from err
    for key in ("num_steps", "num_envs"):
        axis = 0 if key == "num_steps" else 1
        if key in header and header[key] != arrays["obs"].shape[axis]:
            raise FileFormatError(
                f"{path}: header says {key}={header[key]}, arrays have {arrays['obs'].shape[axis]}"
            )
    return Trajectory(**{name: arrays[name] for name in FIELDS}), header


def concatenate_trajectories(trajs: list[Trajectory] | tuple[Trajectory, ...]) -> Trajectory:
    """Join rollouts ``[T, B_i, …]`` of several policies along the batch axis: ``[T, Σ B_i, …]``.

    Every trajectory must have the same number of steps ``T`` and the same
    trailing sizes (they come from one task); a segment never spans a batch
    column, so segments of the result are exactly the segments of the parts.
    Raises ``ValueError`` naming the first mismatch.
    """
    trajs = list(trajs)
    if not trajs:
        raise ValueError("concatenate_trajectories needs at least one trajectory")
    ref = {name: np.shape(getattr(trajs[0], name)) for name in FIELDS}
    for i, traj in enumerate(trajs[1:], start=1):
        for name in FIELDS:
            shape = np.shape(getattr(traj, name))
            if shape[:1] != ref[name][:1] or shape[2:] != ref[name][2:]:
                raise ValueError(
                    f"trajectory {i}: {name} has shape {shape}, trajectory 0 has {ref[name]} "
                    "(need the same T and trailing sizes; only B may differ)"
                )
    return Trajectory(**{
        name: np.concatenate([np.asarray(getattr(t, name)) for t in trajs], axis=1)
        for name in FIELDS
    })
