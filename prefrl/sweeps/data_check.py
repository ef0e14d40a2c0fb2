"""Every input a sweep's cells will read, checked before any run starts (no JAX).

Without these checks a bad file fails every cell that reads it, each with a
traceback, after the sweep has started writing its result directory.
:func:`check_sweep_data` reads each file once and refuses, naming the file
and the problem:

- each dataset as ``prefrl label`` and ``prefrl fit`` check it: readable, of
  the right kind, its header by its schema (:mod:`prefrl.schema`), its arrays
  by :mod:`prefrl.data.dataset_checks` (dtypes, masks in {0, 1}, actions in
  the action box, sizes against the header and the task); a grid segment
  length longer than the dataset's segments; task parameters (``[tasks.X]
  task_params``) other than those the dataset was made with;
- each label budget: at least 2 labels, no more than the distinct pairs of the
  training segments, and gathered pairs that fit in the machine's memory;
- each expert as ``prefrl label`` checks a critic: a PPO checkpoint (its
  header by its schema) of the same task and parameters, trained on the true
  reward, with the oracle's discount.

An unusable file raises :class:`SweepInputError` (exit status 1), a grid
value that cannot work :class:`SweepError` (exit status 2).
"""

from __future__ import annotations

import math

from prefrl import preflight
from prefrl.io import FileFormatError, load_npz
from prefrl.sweeps.spec import CellConfig, SweepError, SweepInputError, SweepSpec

# prefrl.data.dataset.KIND (not imported: that module loads JAX).
DATASET_KIND = "preference_dataset"
PPO_KIND = "ppo_checkpoint"


def check_sweep_data(spec: SweepSpec) -> None:
    """Raise :class:`SweepError` naming the first input that some cell could not use."""
    by_dataset: dict[str, list[CellConfig]] = {}
    by_expert: dict[str, list[CellConfig]] = {}
    for cell in spec.cells():
        by_dataset.setdefault(cell.files.dataset, []).append(cell)
        if cell.files.expert:
            by_expert.setdefault(cell.files.expert, []).append(cell)
    headers = {path: _check_dataset(spec.source, path, cells, len(spec.seeds))
               for path, cells in by_dataset.items()}
    for path, cells in by_expert.items():
        _check_expert(spec.source, path, cells, headers[cells[0].files.dataset])


def _check_dataset(source: str, path: str, cells: list[CellConfig], num_seeds: int) -> dict:
    from prefrl.data import dataset_checks
    from prefrl.envs.tasks import check_same_params, make_task

    where = f"{source}: [tasks.{cells[0].task}] dataset"
    required = tuple(f"segments.{f}" for f in dataset_checks.SEGMENT_FIELDS) + ("first",
                                                                                 "second")
    try:
        arrays, header = load_npz(path, kind=DATASET_KIND, required=required)
        dataset_checks.check_arrays(path, arrays, header["labels"])
        dataset_checks.check_meaning(path, arrays, header)
    except FileNotFoundError as err:
        raise SweepInputError(f"{where} file {path} does not exist") from err
    except FileFormatError as err:
        hint = ""
        if "found kind 'trajectory'" in str(err):
            hint = " (a trajectory from `prefrl collect`: make a dataset of it with `prefrl label`)"
        raise SweepInputError(f"{where}: {err}{hint}") from err
    obs, action = arrays["segments.obs"], arrays["segments.action"]
    num_segments, length = int(obs.shape[0]), int(obs.shape[1])
    longest = max(cells, key=lambda c: c.segment_length)
    if longest.segment_length > length:
        raise SweepError(
            f"{where}: grid segment_length {longest.segment_length} (cell {longest.label()}) "
            f"is longer than the segments of {path} ({length} steps)")
    _check_budgets(where, path, cells, num_segments, num_seeds,
                   sum(a.dtype.itemsize * math.prod(a.shape[1:]) for name, a in arrays.items()
                       if name.startswith("segments.")))
    recorded = {"task": header.get("task"),
                "task_params": (header.get("meta") or {}).get("task_params")}
    for name in sorted({c.task for c in cells}):
        task = make_task(name, **dict(cells[0].files.task_params))
        try:
            check_same_params(task, recorded, f"{path}")
        except ValueError as err:
            raise SweepInputError(f"{where}: {err}") from err
        if (obs.shape[-1], action.shape[-1]) != (task.obs_dim, task.act_dim):
            raise SweepInputError(
                f"{where}: {path} has observation/action sizes {obs.shape[-1]}/"
                f"{action.shape[-1]}, but task {name!r} has {task.obs_dim}/{task.act_dim}")
    return {**header, "task_params": recorded["task_params"] or {}}


def _check_budgets(where: str, path: str, cells: list[CellConfig], num_segments: int,
                   num_seeds: int, segment_bytes: int) -> None:
    """Each cell's label budget: >= 2 labels, <= the training segments' distinct pairs, fits."""
    smallest = min(cells, key=lambda c: c.label_budget)
    if smallest.label_budget < 2:
        raise SweepError(f"{where}: cell {smallest.label()}: label_budget "
                         f"{smallest.label_budget} is too small; a preference fit needs at "
                         "least 2 labels (and both outcomes among them)")
    # The largest budget's gathered pairs (two segments per query and seed), before any
    # cell allocates them: one cell asking for too much would abort the whole process.
    biggest = max(cells, key=lambda c: c.label_budget)
    try:
        preflight.check_memory("label_budget", biggest.label_budget, num_seeds
                               * biggest.label_budget * (2 * segment_bytes + 16))
    except ValueError as err:
        raise SweepError(f"{where} {path}, cell {biggest.label()}: {err}") from err
    for cell in cells:
        # As prefrl.studies.cell_data splits the pool (prefrl.data.pairs.split).
        heldout = int(round(cell.settings.heldout_fraction * num_segments))
        train = num_segments - heldout
        distinct = train * (train - 1) // 2
        if cell.label_budget > distinct:
            raise SweepError(
                f"{where}: cell {cell.label()}: label_budget {cell.label_budget} exceeds the "
                f"{distinct} distinct pairs of the {train} training segments of {path} "
                f"({num_segments} segments, {heldout} held out); asking for more only repeats "
                "queries")


def _check_expert(source: str, path: str, cells: list[CellConfig], dataset_header: dict
                  ) -> None:
    """The expert critic as ``prefrl label`` checks it (task, parameters, reward, discount)."""
    from prefrl.data.labelling_checks import check_critic
    from prefrl.envs.tasks import OBS_DIM

    where = f"{source}: [tasks.{cells[0].task}] expert"
    try:
        _, header = load_npz(path, kind=PPO_KIND)
        for cell in cells:
            discount = cell.settings.discount
            check_critic(header, dataset_header, discount=discount, obs_dim=OBS_DIM, where=path)
    except FileNotFoundError as err:
        raise SweepInputError(f"{where} file {path} does not exist") from err
    except FileFormatError as err:
        raise SweepInputError(f"{where}: {err}") from err
