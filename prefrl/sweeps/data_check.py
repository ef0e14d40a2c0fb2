"""A sweep's data, checked before any run starts (no JAX: headers and array shapes only).

Without these checks a bad dataset fails every cell that reads it, each
with a traceback, after the sweep has started writing its result directory.
:func:`check_sweep_data` reads each dataset once and refuses, naming the file
and the problem: an unreadable (truncated) file, a file of another kind (a
trajectory from ``prefrl collect`` instead of a dataset from ``prefrl label``),
a grid segment length longer than the dataset's segments, observation or
action sizes that differ from the task's, and task parameters (``[tasks.X]
task_params``) other than those the dataset was made with, and a label budget
whose gathered pairs would not fit in the machine's memory.
"""

from __future__ import annotations

import math

from prefrl import preflight
from prefrl.io import FileFormatError, load_npz
from prefrl.sweeps.spec import CellConfig, SweepError, SweepSpec

# prefrl.data.dataset.KIND (not imported: that module loads JAX).
DATASET_KIND = "preference_dataset"


def check_sweep_data(spec: SweepSpec) -> None:
    """Raise :class:`SweepError` naming the first dataset that some cell could not use."""
    by_dataset: dict[str, list[CellConfig]] = {}
    for cell in spec.cells():
        by_dataset.setdefault(cell.files.dataset, []).append(cell)
    for path, cells in by_dataset.items():
        _check_dataset(spec.source, path, cells, len(spec.seeds))


def _check_dataset(source: str, path: str, cells: list[CellConfig], num_seeds: int) -> None:
    from prefrl.envs.tasks import check_same_params, make_task

    where = f"{source}: [tasks.{cells[0].task}] dataset"
    try:
        arrays, header = load_npz(path, kind=DATASET_KIND, required=("segments.obs",
                                                                    "segments.action"))
    except FileNotFoundError as err:
        raise SweepError(f"{where} file {path} does not exist") from err
    except FileFormatError as err:
        hint = ""
        if "found kind 'trajectory'" in str(err):
            hint = " (a trajectory from `prefrl collect`: make a dataset of it with `prefrl label`)"
        raise SweepError(f"{where}: {err}{hint}") from err
    obs, action = arrays["segments.obs"], arrays["segments.action"]
    if obs.ndim != 3 or action.ndim != 3:
        raise SweepError(f"{where}: {path}: segments must be [N, k, size] arrays, got "
                         f"shapes {obs.shape} and {action.shape}")
    length = int(obs.shape[1])
    longest = max(cells, key=lambda c: c.segment_length)
    if longest.segment_length > length:
        raise SweepError(
            f"{where}: grid segment_length {longest.segment_length} (cell {longest.label()}) "
            f"is longer than the segments of {path} ({length} steps)")
    # The largest label budget's gathered pairs (two segments per query and seed), before
    # any cell allocates them: one cell asking for too much would abort the whole process.
    segment_bytes = sum(a.dtype.itemsize * math.prod(a.shape[1:]) for name, a in arrays.items()
                        if name.startswith("segments."))
    biggest = max(cells, key=lambda c: c.label_budget)
    try:
        preflight.check_memory("label_budget", biggest.label_budget, num_seeds
                               * biggest.label_budget * (2 * segment_bytes + 16))
    except ValueError as err:
        raise SweepError(f"{where} {path}, cell {biggest.label()}: {err}") from err
    recorded = {"task": header.get("task"),
                "task_params": (header.get("meta") or {}).get("task_params")}
    for name in sorted({c.task for c in cells}):
        task = make_task(name, **dict(cells[0].files.task_params))
        try:
            check_same_params(task, recorded, f"{path}")
        except ValueError as err:
            raise SweepError(f"{where}: {err}") from err
        if (obs.shape[-1], action.shape[-1]) != (task.obs_dim, task.act_dim):
            raise SweepError(
                f"{where}: {path} has observation/action sizes {obs.shape[-1]}/"
                f"{action.shape[-1]}, but task {name!r} has {task.obs_dim}/{task.act_dim}")
