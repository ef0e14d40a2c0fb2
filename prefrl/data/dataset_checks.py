"""A preference dataset's arrays checked for meaning (numpy only: a sweep's pre-check uses it).

:func:`check_arrays` checks the arrays' shapes, dtypes and values among
themselves; :func:`check_meaning` checks them against the header and its task
(sizes, the action box, plausible observations). Both raise
:class:`prefrl.io.FileFormatError` naming the file, the array and the problem.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from prefrl.io import FileFormatError

SEGMENT_FIELDS = ("obs", "action", "reward", "next_obs", "mask", "x_velocity", "qpos", "qvel",
                  "source")
# Fields whose leading axes are [N, k]; `source` is [N, 2].
_TIME_FIELDS = tuple(f for f in SEGMENT_FIELDS if f != "source")
# Real-valued fields: int, bool and complex arrays are refused (complex would lose its
# imaginary part, ints and bools are not states or actions of a continuous task).
_REAL_FIELDS = ("obs", "action", "reward", "next_obs", "x_velocity", "qpos", "qvel")
LABEL_VALUES = (0.0, 0.5, 1.0)
# No half-cheetah observation comes near this; beyond it squares overflow float32 sums.
OBS_BOUND = 1e6
ACTION_TOLERANCE = 1e-5


def check_arrays(where: str, arrays: Mapping[str, np.ndarray], label_names: list[str]) -> None:
    """Raise FileFormatError for any inconsistency, naming it."""
    seg = {f: arrays[f"segments.{f}"] for f in SEGMENT_FIELDS}
    obs = seg["obs"]
    if obs.ndim != 3:
        raise FileFormatError(f"{where}: segments.obs must be [N, k, obs_dim], got {obs.shape}")
    n, k = obs.shape[:2]
    for name in _TIME_FIELDS:
        value = seg[name]
        if value.shape[:2] != (n, k):
            raise FileFormatError(
                f"{where}: segments.{name} has leading shape {value.shape[:2]}, "
                f"expected (N, k) = {(n, k)} like segments.obs"
            )
    if seg["next_obs"].shape != obs.shape:
        raise FileFormatError(
            f"{where}: segments.next_obs shape {seg['next_obs'].shape} != "
            f"segments.obs shape {obs.shape}"
        )
    if seg["source"].shape != (n, 2):
        raise FileFormatError(
            f"{where}: segments.source must be [{n}, 2], got {seg['source'].shape}"
        )
    for name in _REAL_FIELDS:
        dtype = seg[name].dtype
        if not np.issubdtype(dtype, np.floating):
            raise FileFormatError(f"{where}: segments.{name} must hold real floating-point "
                                  f"numbers, got dtype {dtype}")
    mask = seg["mask"]
    if not (mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.floating)):
        raise FileFormatError(f"{where}: segments.mask must be bool or float, got {mask.dtype}")
    if mask.dtype != np.bool_ and not np.all((mask == 0) | (mask == 1)):
        bad = mask[(mask != 0) & (mask != 1)].flat[0]
        raise FileFormatError(f"{where}: segments.mask holds {float(bad):g}; a mask is 1 for a "
                              "real step and 0 for padding, nothing else")
    if not np.issubdtype(seg["source"].dtype, np.integer):
        raise FileFormatError(f"{where}: segments.source must hold integers, got dtype "
                              f"{seg['source'].dtype}")
    first, second = arrays["first"], arrays["second"]
    if first.ndim != 1 or second.ndim != 1 or first.shape != second.shape:
        raise FileFormatError(
            f"{where}: first and second must be equal-length [Q] index arrays, "
            f"got shapes {first.shape} and {second.shape}"
        )
    for side, idx in (("first", first), ("second", second)):
        if not np.issubdtype(idx.dtype, np.integer):
            raise FileFormatError(f"{where}: {side} must hold integers, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            bad = int(idx[(idx < 0) | (idx >= n)][0])
            raise FileFormatError(
                f"{where}: {side} holds segment index {bad} out of range [0, {n}) "
                f"(the pool has {n} segments)"
            )
    q = first.shape[0]
    if not label_names:
        raise FileFormatError(f"{where}: no labels in the dataset")
    for name in label_names:
        for prefix in ("label", "label_mask"):
            key = f"{prefix}.{name}"
            if key not in arrays:
                raise FileFormatError(f"{where}: missing array {key!r}")
            if arrays[key].shape != (q,):
                raise FileFormatError(
                    f"{where}: {key} has shape {arrays[key].shape}, "
                    f"expected [{q}] like first/second"
                )
        label = arrays[f"label.{name}"]
        if not np.issubdtype(label.dtype, np.floating):
            raise FileFormatError(f"{where}: label.{name} must be floating point (0, 0.5, 1), "
                                  f"got dtype {label.dtype}")
        if not np.all(np.isfinite(label)):
            raise FileFormatError(f"{where}: label.{name} contains NaN or inf")
        bad = ~np.isin(label, LABEL_VALUES)
        if bad.any():
            raise FileFormatError(
                f"{where}: label.{name} holds {float(label[bad][0]):g}; labels must be "
                "0 (second preferred), 0.5 (tie) or 1 (first preferred)"
            )
        if arrays[f"label_mask.{name}"].dtype != np.bool_:
            raise FileFormatError(f"{where}: label_mask.{name} must be bool")
    for key, value in arrays.items():
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise FileFormatError(f"{where}: {key} contains NaN or inf")


def check_meaning(where: str, arrays: Mapping[str, np.ndarray], header: Mapping[str, Any]
                   ) -> None:
    """Raise FileFormatError where the arrays are well-formed but cannot mean what they say.

    The header's sizes must be the arrays'; a half-cheetah task fixes the
    observation and action sizes; a query never compares a segment with
    itself; a segment a query uses has at least one real (unmasked) step.
    An unused all-padding segment is harmless: a warning, not an error.
    """
    from prefrl.envs.tasks import ACTION_HIGH, ACTION_LOW, TASKS, TaskSpec

    obs, action = arrays["segments.obs"], arrays["segments.action"]
    first, second = arrays["first"], arrays["second"]
    actual = {"segment_length": obs.shape[1], "num_segments": obs.shape[0],
              "num_queries": first.shape[0]}
    for key, value in actual.items():
        if key in header and header[key] != value:
            raise FileFormatError(
                f"{where}: header says {key} = {header[key]!r}, but the arrays have {value}")
    names = header.get("labels") or []
    extra = sorted(k.partition(".")[2] for k in arrays
                   if k.startswith("label.") and k.partition(".")[2] not in names)
    if extra:
        raise FileFormatError(f"{where}: arrays hold labels {extra} that the header's "
                              f"labels {list(names)} do not list")
    task = header.get("task")
    if task in TASKS:
        spec = TaskSpec(name=task, params=())
        for name, size in (("observation", spec.obs_dim), ("action", spec.act_dim)):
            found = (obs if name == "observation" else action).shape[-1]
            if found != size:
                raise FileFormatError(
                    f"{where}: {name} size {found} disagrees with the header's task {task!r} "
                    f"({name}s of size {size}); was the file labelled for another task?")
        check_task_values(where, "segments.", obs, action, arrays["segments.next_obs"],
                          (ACTION_LOW, ACTION_HIGH))
    same = np.flatnonzero(first == second)
    if same.size:
        q = int(same[0])
        raise FileFormatError(
            f"{where}: {same.size} queries compare a segment with itself (query {q}: segment "
            f"{int(first[q])} vs itself); a preference needs two different segments")
    empty = np.flatnonzero(~np.any(arrays["segments.mask"] != 0, axis=1))
    if empty.size:
        used = np.isin(first, empty) | np.isin(second, empty)
        if used.any():
            q = int(np.flatnonzero(used)[0])
            raise FileFormatError(
                f"{where}: {int(used.sum())} queries compare a segment whose mask is all zero "
                f"(query {q}: segments {int(first[q])} and {int(second[q])}); such a segment "
                "has no real step to prefer")
        warnings.warn(f"{where}: {empty.size} segment(s) have an all-zero mask; no query uses "
                      "them", stacklevel=3)




def check_task_values(where: str, prefix: str, obs: np.ndarray, action: np.ndarray,
                      next_obs: np.ndarray | None, box: tuple[float, float]) -> None:
    """Refuse actions outside the task's action box and implausibly large observations.

    The environment clips actions to ``box`` (half-cheetah: [−1, 1]), so an action
    outside it was never taken: a file holding one was made by something else
    (or scaled by mistake), and learners would fit actions no policy can emit.
    """
    low, high = box
    if action.size:
        worst = float(np.max(np.abs(action)))
        if float(action.min()) < low - ACTION_TOLERANCE or float(action.max()) > (
                high + ACTION_TOLERANCE):
            raise FileFormatError(
                f"{where}: {prefix}action holds {worst:g}, outside the task's action box "
                f"[{low:g}, {high:g}]; these actions were not taken in this task")
    for name, value in (("obs", obs), ("next_obs", next_obs)):
        if value is not None and value.size and float(np.max(np.abs(value))) > OBS_BOUND:
            raise FileFormatError(
                f"{where}: {prefix}{name} holds {float(np.max(np.abs(value))):g}; half-cheetah "
                f"observations stay far below {OBS_BOUND:g} (did the physics diverge?)")
