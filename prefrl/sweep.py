"""Sweeps: a grid of experiment cells, a resumable result store, local and Ray execution.

A sweep file (TOML) names a grid over

    task × label model × learner × oracle noise (β × ε) × label budget × segment length

plus the seeds to run in every cell, the data files of each task and shared
settings (training steps, network sizes …). A file may instead give several
sub-grids as ``[[grid]]`` tables (e.g. every noise level for the cheap
reward-fit cells, the clean labels only for the PPO cells); the sweep is the
union of their points, each once. A ``--set grid.AXIS=…`` override then
applies to every sub-grid::

    name = "tiny"
    seeds = [0, 1]                            # or a count: seeds = 5

    [grid]
    task = ["run"]
    label_model = ["partial_return"]          # the oracle that labels the queries
    learner = ["rm_pr", "rm_regret"]          # keys of RUNNERS
    beta = [0.0]                              # oracle temperature (0: deterministic)
    epsilon = [0.0]                           # oracle mistake probability
    label_budget = [64]
    segment_length = [10]                     # ≤ the dataset's segment length

    [tasks.run]
    dataset = "../data/run.npz"               # relative to the sweep file
    expert = "../experts/run.npz"             # PPO checkpoint; V_E for the regret oracle

    [settings]                                # fields of ``Settings``
    reward_steps = 200

:func:`load_sweep` parses and validates such a file into frozen dataclasses
(:class:`SweepSpec`, :class:`CellConfig`, :class:`Settings`): an unknown key,
a bad value or a data file that does not exist raises :class:`SweepError`
naming the key or file *before* any run starts.

Learners (:data:`RUNNERS`; the preference model each assumes is in
:data:`LEARNER_ASSUMPTION`):

* ``rm_pr`` / ``rm_regret`` — fit r̂ (partial return) or Â (regret) only;
  report held-out preference accuracy under both oracles and reward correlations;
* ``rm_pr+ppo`` / ``rm_regret+ppo`` — the same fit, then PPO on the learned
  function (``prefrl.training``), optionally KL-regularised to a BC π_ref;
* ``cpl`` / ``dpo`` — CPL and contrastive DPO (``prefrl.offline``): no RL.

Every cell draws its training queries uniformly from a fixed ~80 % of the
dataset's segments and labels them with its oracle (β, ε); the other
segments form held-out queries labelled without noise by every oracle (the
regret one needs the task's expert). Seed s of a cell uses
``PRNGKey(s)``: same cell and seed → same queries, labels and numbers.

Every run (one cell, one seed) has a run id derived deterministically from
the cell's configuration (data files by content), the seed and the budget
scale, and leaves one JSON record ``DIR/runs/<run id>.json``, written
atomically by the driver process and carrying a checksum of its own
content. :func:`run_sweep` with ``resume=True`` runs only the runs whose
record is missing or corrupt, so a sweep that is killed loses nothing it
finished.

The seeds of one cell are handed to its runner together, so a runner whose
learner is ``vmap``-able trains them in one compiled call (reward models,
CPL/DPO, BC; PPO's host-side environment loop runs seeds in turn). Cells run
in a process pool (``spawn`` start method: forking a process that has
initialised JAX's thread pools can deadlock) or as Ray tasks
(``ray_address``); the driver alone writes records, so both paths produce
the same store. Workers share a persistent XLA compilation cache
(``DIR/.jax_cache``), so a resumed sweep does not pay compile time again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import time
import tomllib
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from prefrl import config as cfg
from prefrl.io import atomic_write_json, atomic_write_text

RECORD_KIND = "prefrl.sweep.record"
RECORD_SCHEMA_VERSION = 1

LABEL_MODELS = ("partial_return", "regret")
KNOWN_TASKS = ("run", "run-backward", "target-speed")

# The preference model each learner assumes: what the 2×2 "label model ×
# assumption" table crosses with the oracle's model.
LEARNER_ASSUMPTION = {
    "rm_pr": "partial_return",
    "rm_regret": "regret",
    "rm_pr+ppo": "partial_return",
    "rm_regret+ppo": "regret",
    "cpl": "regret",
    "dpo": "regret",
}
# Learners that only fit a reward (no policy): reported by held-out accuracy.
FIT_ONLY_LEARNERS = ("rm_pr", "rm_regret")
# Learners that need the task's expert file whatever the oracle (the regret
# oracle always does: its V_E comes from the expert).
_NEEDS_EXPERT: tuple[str, ...] = ()


class SweepError(ValueError):
    """A sweep file, its data files or a result directory is invalid; the message says which."""


# --------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class Settings:
    """Shared run settings of every cell. Fields marked ``scaled`` shrink with ``budget_scale``."""

    discount: float = cfg.field(0.99, "γ of the regret oracle, the advantage model and PPO")
    beta_mode: str = cfg.field(
        "relative", "oracle β in score units ('absolute') or × std of the scores ('relative')"
    )
    heldout_fraction: float = cfg.field(0.2, "share of the segment pool kept for held-out queries")
    heldout_queries: int = cfg.field(512, "held-out queries (disjoint segments) for accuracy")
    reward_hidden: tuple[int, ...] = cfg.field((64, 64), "reward/advantage MLP widths")
    reward_ensemble: int = cfg.field(1, "reward-model ensemble members")
    reward_steps: int = dataclasses.field(
        default=2000, metadata={"help": "reward-model gradient steps", "scaled": True}
    )
    reward_batch_size: int = cfg.field(64, "queries per reward-model step")
    reward_learning_rate: float = cfg.field(3e-4, "reward-model Adam learning rate")
    reward_weight_decay: float = cfg.field(1e-4, "reward-model L2 / weight decay")
    ppo_env_steps: int = dataclasses.field(
        default=1_000_000, metadata={"help": "PPO environment steps", "scaled": True}
    )
    ppo_num_envs: int = cfg.field(16, "parallel environments for PPO")
    ppo_kl_coef: float = cfg.field(0.0, "β_KL of the KL-to-π_ref penalty in the PPO reward")
    policy_hidden: tuple[int, ...] = cfg.field((64, 64), "policy MLP widths")
    cpl_steps: int = dataclasses.field(
        default=20_000, metadata={"help": "CPL / DPO gradient steps", "scaled": True}
    )
    cpl_batch_size: int = cfg.field(64, "queries per CPL / DPO step")
    cpl_learning_rate: float = cfg.field(3e-4, "CPL / DPO Adam learning rate")
    cpl_alpha: float = cfg.field(0.1, "CPL temperature α (A* = α log π*)")
    cpl_bias: float = cfg.field(0.5, "CPL conservative bias λ ∈ (0, 1]")
    cpl_bc_weight: float = cfg.field(0.0, "weight of the BC regulariser (CPL-BC)")
    dpo_beta: float = cfg.field(0.1, "DPO β in β log(π/π_ref)")
    bc_steps: int = dataclasses.field(
        default=5000, metadata={"help": "BC (reference policy) gradient steps", "scaled": True}
    )
    eval_episodes: int = cfg.field(8, "full episodes for the final policy's true return")
    ppo_rollout_steps: int = cfg.field(64, "PPO steps per environment per update (T)")
    ppo_evals: int = cfg.field(10, "evaluations (curve points) during PPO training")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if kind == "float" and not (number and math.isfinite(value)):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
            if kind == "str" and not isinstance(value, str):
                raise ValueError(f"{f.name} must be a string, got {value!r}")
            if kind.startswith("tuple") and not isinstance(value, tuple):
                raise ValueError(f"{f.name} must be a list, got {value!r}")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {self.discount}")
        if self.beta_mode not in ("relative", "absolute"):
            raise ValueError(f"beta_mode must be 'relative' or 'absolute', got {self.beta_mode!r}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if not 0.0 < self.cpl_bias <= 1.0:
            raise ValueError(f"cpl_bias must be in (0, 1], got {self.cpl_bias}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int) and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{f.name} must be an integer, got {value!r}")
            if f.name.endswith(("_steps", "_size", "_envs", "_episodes", "_horizon", "_ensemble")):
                if value < 1:
                    raise ValueError(f"{f.name} must be >= 1, got {value}")
            if f.name.endswith(("_rate", "_coef", "_weight", "_decay", "_alpha", "_beta")):
                if not isinstance(value, int | float) or value < 0 or not math.isfinite(value):
                    raise ValueError(f"{f.name} must be a finite number >= 0, got {value!r}")
        if not all(isinstance(w, int) and w > 0 for w in self.reward_hidden + self.policy_hidden):
            raise ValueError("hidden widths must be positive integers")
        if self.ppo_rollout_steps < 1 or self.ppo_evals < 1:
            raise ValueError("ppo_rollout_steps and ppo_evals must be >= 1")
        if self.heldout_queries < 1:
            raise ValueError(f"heldout_queries must be >= 1, got {self.heldout_queries}")

    def scaled(self, budget_scale: float) -> Settings:
        """A copy with every ``scaled`` field multiplied by ``budget_scale`` (at least 1)."""
        check_budget_scale(budget_scale)
        changes = {
            f.name: max(1, int(round(getattr(self, f.name) * budget_scale)))
            for f in dataclasses.fields(self)
            if f.metadata.get("scaled")
        }
        return dataclasses.replace(self, **changes)


def check_budget_scale(budget_scale: float) -> float:
    if not isinstance(budget_scale, int | float) or not 0.0 < budget_scale <= 1e6:
        raise SweepError(f"budget scale must be a positive number, got {budget_scale!r}")
    return float(budget_scale)


@dataclasses.dataclass(frozen=True)
class TaskFiles:
    """Data files of one task (paths relative to the sweep file are resolved on load)."""

    dataset: str = cfg.field("", "segment-pool / rollout dataset the queries are drawn from")
    expert: str | None = cfg.field(None, "expert checkpoint (V_E for the regret oracle, π_ref)")

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError("dataset must be a non-empty path")
        if self.expert is not None and (not isinstance(self.expert, str) or not self.expert):
            raise ValueError("expert must be a non-empty path")


@dataclasses.dataclass(frozen=True)
class CellConfig:
    """One point of the grid: everything a runner needs except the seed."""

    task: str
    label_model: str
    learner: str
    beta: float
    epsilon: float
    label_budget: int
    segment_length: int
    files: TaskFiles
    settings: Settings

    @property
    def assumption(self) -> str:
        """The preference model the learner assumes (``partial_return`` or ``regret``)."""
        return LEARNER_ASSUMPTION[self.learner]

    @property
    def fit_only(self) -> bool:
        return self.learner in FIT_ONLY_LEARNERS

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description; file paths as given, plus the files' content digests."""
        out = {
            "task": self.task,
            "label_model": self.label_model,
            "learner": self.learner,
            "beta": self.beta,
            "epsilon": self.epsilon,
            "label_budget": self.label_budget,
            "segment_length": self.segment_length,
            "dataset": self.files.dataset,
            "expert": self.files.expert,
            "settings": cfg.to_dict(self.settings),
        }
        return out

    def label(self) -> str:
        """A short human-readable name (not unique: noise values are rounded)."""
        return (
            f"{self.learner}|{self.label_model}|{self.task}|n{self.label_budget}"
            f"|k{self.segment_length}|b{self.beta:g}|e{self.epsilon:g}"
        )


_GRID_AXES = {
    "task": str,
    "label_model": str,
    "learner": str,
    "beta": float,
    "epsilon": float,
    "label_budget": int,
    "segment_length": int,
}
_TOP_KEYS = ("name", "description", "seeds", "grid", "tasks", "settings")


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: the grid axes, seeds, per-task files and shared settings."""

    name: str
    seeds: tuple[int, ...]
    task: tuple[str, ...]
    label_model: tuple[str, ...]
    learner: tuple[str, ...]
    beta: tuple[float, ...]
    epsilon: tuple[float, ...]
    label_budget: tuple[int, ...]
    segment_length: tuple[int, ...]
    tasks: tuple[tuple[str, TaskFiles], ...]
    settings: Settings
    description: str = ""
    source: str = ""
    # The grid(s) as parsed, each ``((axis, values), ...)`` (several for a
    # ``[[grid]]`` file); the axis fields above are the union of their values.
    # Empty (a spec built by hand): the product of the axis fields.
    grids: tuple[tuple[tuple[str, tuple[Any, ...]], ...], ...] = ()

    def files_of(self, task: str) -> TaskFiles:
        return dict(self.tasks)[task]

    def cells(self) -> list[CellConfig]:
        """All grid points in a fixed order (task-major, then the axes as listed).

        With several sub-grids (``[[grid]]``) the union of their points, each
        point once, in the order the sub-grids list them.
        """
        grids = self.grids or (tuple((k, getattr(self, k)) for k in _GRID_AXES),)
        out: list[CellConfig] = []
        seen: set[tuple] = set()
        for grid in grids:
            axes = dict(grid)
            for point in itertools.product(*(axes[k] for k in _GRID_AXES)):
                if point in seen:
                    continue
                seen.add(point)
                task = point[0]
                out.append(CellConfig(*point, self.files_of(task), self.settings))
        return out

    def runs(self, budget_scale: float = 1.0) -> list[tuple[CellConfig, int, str]]:
        """Every ``(cell, seed, run_id)`` of the sweep."""
        return [(c, s, run_id(c, s, budget_scale)) for c in self.cells() for s in self.seeds]


def _as_list(value: Any, where: str) -> list[Any]:
    if isinstance(value, list):
        if not value:
            raise SweepError(f"{where}: empty list")
        return value
    return [value]


def _check_axis(name: str, values: list[Any]) -> tuple[Any, ...]:
    tp = _GRID_AXES[name]
    out = []
    for v in values:
        if tp is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, tp) or isinstance(v, bool):
            raise SweepError(f"grid.{name}: expected {tp.__name__} values, got {v!r}")
        out.append(v)
    if len(set(out)) != len(out):
        raise SweepError(f"grid.{name}: duplicate values {out}")
    for v in out:
        if name == "label_model" and v not in LABEL_MODELS:
            raise SweepError(f"grid.label_model: unknown {v!r}; choose from {list(LABEL_MODELS)}")
        if name == "learner" and v not in RUNNERS:
            raise SweepError(f"grid.learner: unknown {v!r}; choose from {list(RUNNERS)}")
        if name == "task" and v not in KNOWN_TASKS:
            raise SweepError(f"grid.task: unknown {v!r}; choose from {list(KNOWN_TASKS)}")
        if name == "beta" and not (v >= 0 and math.isfinite(v)):
            raise SweepError(f"grid.beta: temperature must be finite and >= 0, got {v!r}")
        if name == "epsilon" and not 0.0 <= v < 0.5:
            raise SweepError(f"grid.epsilon: mistake probability must be in [0, 0.5), got {v!r}")
        if name in ("label_budget", "segment_length") and v < 1:
            raise SweepError(f"grid.{name}: must be >= 1, got {v!r}")
    return tuple(out)


def _apply_override(data: dict[str, Any], assignment: str) -> None:
    """``a.b.c=VALUE`` (VALUE parsed as a TOML value, else taken as a string)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise SweepError(f"override {assignment!r}: expected KEY=VALUE (e.g. grid.seeds=[0,1])")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    parts = key.strip().split(".")
    if parts[0] == "grid" and len(parts) == 2 and isinstance(data.get("grid"), list):
        for table in data["grid"]:  # [[grid]]: the override applies to every sub-grid
            if isinstance(table, dict):
                table[parts[1]] = value
        return
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SweepError(f"override {assignment!r}: {part!r} is not a table")
    node[parts[-1]] = value


def parse_sweep(
    data: Mapping[str, Any], *, base_dir: str | os.PathLike = ".", source: str = "<sweep>",
    check_files: bool = True,
) -> SweepSpec:
    """Validate a parsed sweep mapping (see the module docstring) into a :class:`SweepSpec`.

    Relative data paths are resolved against ``base_dir``. With ``check_files``
    every dataset and every expert file a cell needs must exist.
    """
    data = dict(data)
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise SweepError(f"{source}: unknown key(s) {unknown}; valid keys: {list(_TOP_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise SweepError(f"{source}: 'name' must be a non-empty string")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise SweepError(f"{source}: 'description' must be a string")
    seeds = data.get("seeds")
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise SweepError(f"{source}: seeds = {seeds}: give a count >= 1 or a list of seeds")
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds
    ):
        raise SweepError(f"{source}: 'seeds' must be a count or a list of integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"{source}: duplicate seeds {seeds}")

    grid = data.get("grid")
    if isinstance(grid, dict):
        tables, where = [grid], ["grid"]
    elif isinstance(grid, list) and grid and all(isinstance(g, dict) for g in grid):
        tables, where = grid, [f"grid[{i}]" for i in range(len(grid))]
    else:
        raise SweepError(f"{source}: missing [grid] table (or a non-empty [[grid]] array)")
    grids = []
    for table, at in zip(tables, where, strict=True):
        unknown = sorted(set(table) - set(_GRID_AXES))
        if unknown:
            raise SweepError(
                f"{source}: unknown key(s) {[at + '.' + k for k in unknown]}; "
                f"valid grid axes: {list(_GRID_AXES)}"
            )
        missing = [k for k in _GRID_AXES if k not in table]
        if missing:
            raise SweepError(f"{source}: [{at}] is missing axis/axes {missing}")
        grids.append({k: _check_axis(k, _as_list(table[k], f"{at}.{k}")) for k in _GRID_AXES})
    # The axis fields: every value any sub-grid uses, in first-seen order.
    axes = {k: tuple(dict.fromkeys(v for g in grids for v in g[k])) for k in _GRID_AXES}

    settings_data = data.get("settings", {})
    if not isinstance(settings_data, dict):
        raise SweepError(f"{source}: [settings] must be a table")
    try:
        settings = cfg.from_mapping(Settings, settings_data, where=f"{source} [settings]")
    except cfg.ConfigError as err:
        raise SweepError(str(err)) from err

    tasks_data = data.get("tasks", {})
    if not isinstance(tasks_data, dict):
        raise SweepError(f"{source}: [tasks] must be a table of tables")
    base = Path(base_dir)
    tasks: dict[str, TaskFiles] = {}
    for task in axes["task"]:
        if task not in tasks_data:
            raise SweepError(f"{source}: grid task {task!r} has no [tasks.{task}] table with files")
    for task, table in tasks_data.items():
        if task not in axes["task"]:
            raise SweepError(f"{source}: [tasks.{task}] is not a task of the grid {axes['task']}")
        if not isinstance(table, dict):
            raise SweepError(f"{source}: [tasks.{task}] must be a table")
        try:
            files = cfg.from_mapping(TaskFiles, table, where=f"{source} [tasks.{task}]")
        except cfg.ConfigError as err:
            raise SweepError(str(err)) from err
        resolve = lambda p: str((base / p).resolve()) if p is not None else None
        tasks[task] = TaskFiles(resolve(files.dataset), resolve(files.expert))

    spec = SweepSpec(
        name=name,
        seeds=tuple(seeds),
        tasks=tuple(sorted(tasks.items())),
        settings=settings,
        description=description,
        source=source,
        grids=tuple(tuple(g.items()) for g in grids),
        **axes,
    )
    if check_files:
        check_sweep_files(spec)
    return spec


def check_sweep_files(spec: SweepSpec) -> None:
    """Every file some cell needs exists: datasets always, experts for regret/PPO/DPO cells."""
    needed: dict[str, str] = {}
    for cell in spec.cells():
        needed[cell.files.dataset] = f"[tasks.{cell.task}] dataset"
        if cell.label_model == "regret" or cell.learner in _NEEDS_EXPERT:
            if cell.files.expert is None:
                raise SweepError(
                    f"{spec.source}: [tasks.{cell.task}] needs an 'expert' file: cell "
                    f"{cell.label()} uses the regret oracle or a reference policy"
                )
            needed[cell.files.expert] = f"[tasks.{cell.task}] expert"
    for path, what in needed.items():
        if not Path(path).is_file():
            raise SweepError(f"{spec.source}: {what} file {path} does not exist")


def load_sweep(
    path: str | os.PathLike, overrides: Sequence[str] = (), *, check_files: bool = True
) -> SweepSpec:
    """Read and validate a sweep TOML file; ``overrides`` are ``dotted.key=VALUE`` strings."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise SweepError(f"{path}: not valid TOML: {err}") from err
    for assignment in overrides:
        _apply_override(data, assignment)
    return parse_sweep(data, base_dir=path.parent, source=str(path), check_files=check_files)


# --------------------------------------------------------------------------------------
# Run ids and records


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)


_DIGESTS: dict[tuple[str, float, int], str] = {}


def file_digest(path: str | None) -> str | None:
    """sha256 of a file's bytes (cached by path, mtime and size)."""
    if path is None:
        return None
    st = os.stat(path)
    key = (path, st.st_mtime, st.st_size)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def identity(cell: CellConfig, seed: int, budget_scale: float) -> dict[str, Any]:
    """What a run's result depends on: the cell (data by content, not by path), seed, scale."""
    ident = cell.to_dict()
    # Identify data by content so a moved checkout keeps its results and a
    # regenerated dataset does not silently reuse stale ones.
    ident["dataset"] = file_digest(cell.files.dataset)
    ident["expert"] = file_digest(cell.files.expert)
    ident["seed"] = int(seed)
    ident["budget_scale"] = float(budget_scale)
    return ident


def run_id(cell: CellConfig, seed: int, budget_scale: float = 1.0) -> str:
    """Deterministic, filename-safe id: readable prefix + 12 hex digits of the identity hash."""
    digest = hashlib.sha256(_canonical(identity(cell, seed, budget_scale)).encode()).hexdigest()
    prefix = f"{cell.learner}_{cell.label_model}_{cell.task}_n{cell.label_budget}"
    prefix = prefix.replace("+", "-")
    return f"{prefix}_k{cell.segment_length}_s{seed}_{digest[:12]}"


def _checksum(record: Mapping[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(_canonical(body).encode()).hexdigest()


_VERSIONS: dict[str, str] | None = None


def versions() -> dict[str, str]:
    """Versions of python, prefrl, jax, numpy and the git commit of the source (if any)."""
    global _VERSIONS
    if _VERSIONS is None:
        import jax
        import numpy

        import prefrl

        out = {
            "python": platform.python_version(),
            "prefrl": prefrl.__version__,
            "jax": jax.__version__,
            "numpy": numpy.__version__,
        }
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                capture_output=True, text=True, timeout=5, check=False,
            ).stdout.strip()
            if commit:
                out["git"] = commit
        except (OSError, subprocess.SubprocessError):
            pass
        _VERSIONS = out
    return dict(_VERSIONS)


def make_record(
    cell: CellConfig,
    seed: int,
    budget_scale: float,
    metrics: Mapping[str, Any],
    *,
    wall_time_s: float,
    group_size: int,
    sweep_name: str = "",
) -> dict[str, Any]:
    """A complete, checksummed record of one run."""
    record = {
        "kind": RECORD_KIND,
        "schema_version": RECORD_SCHEMA_VERSION,
        "run_id": run_id(cell, seed, budget_scale),
        "sweep": sweep_name,
        "cell": cell.to_dict(),
        "identity": identity(cell, seed, budget_scale),
        "assumption": cell.assumption,
        "seed": int(seed),
        "budget_scale": float(budget_scale),
        "metrics": _jsonable(dict(metrics)),
        # The seeds of a cell train in one vmapped call; its wall time is shared.
        "wall_time_s": float(wall_time_s),
        "group_size": int(group_size),
        "versions": versions(),
        "host": platform.node(),
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    record["checksum"] = _checksum(record)
    return record


def _jsonable(obj: Any) -> Any:
    """Convert numpy/JAX scalars and arrays to JSON types (lists for arrays)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bool | int | str) or obj is None:
        return obj
    if isinstance(obj, float):
        return obj
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    raise TypeError(f"metric value of type {type(obj).__name__} is not JSON-serialisable")


def validate_record(record: Any, expected_id: str | None = None) -> str | None:
    """``None`` if ``record`` is a complete, untampered record; else what is wrong."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if record.get("kind") != RECORD_KIND:
        return f"kind is {record.get('kind')!r}, not {RECORD_KIND!r}"
    if record.get("schema_version") != RECORD_SCHEMA_VERSION:
        return f"unknown schema_version {record.get('schema_version')!r}"
    for key in ("run_id", "cell", "identity", "seed", "metrics", "checksum"):
        if key not in record:
            return f"missing field {key!r}"
    if record["checksum"] != _checksum(record):
        return "checksum mismatch (edited or damaged)"
    if expected_id is not None and record["run_id"] != expected_id:
        return f"run_id {record['run_id']!r} does not match the file name {expected_id!r}"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ResultStore:
    """A directory of run records: ``root/runs/<run id>.json`` (one per run, atomic writes)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"

    def path(self, rid: str) -> Path:
        return self.runs_dir / f"{rid}.json"

    def read(self, rid: str) -> tuple[dict[str, Any] | None, str | None]:
        """``(record, None)``, ``(None, None)`` if absent, ``(None, problem)`` if corrupt."""
        path = self.path(rid)
        if not path.exists():
            return None, None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            return None, f"unreadable JSON ({err})"
        problem = validate_record(record, rid)
        return (None, problem) if problem else (record, None)

    def write(self, record: Mapping[str, Any]) -> Path:
        problem = validate_record(dict(record))
        if problem:
            raise ValueError(f"refusing to store an invalid record: {problem}")
        return atomic_write_json(self.path(record["run_id"]), dict(record))

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold ``root/runs/.lock`` while writing: one sweep process per result directory.

        A lock left by a process that no longer exists on this host (e.g. a
        killed sweep) is taken over. On taking the lock, temporary files that
        a killed writer left between ``mkstemp`` and ``os.replace`` are removed.
        """
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        lock = self.runs_dir / ".lock"
        me = f"{platform.node()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                host, _, pid = lock.read_text(encoding="utf-8").partition(" ")
                if host == platform.node() and pid.isdigit() and not _pid_alive(int(pid)):
                    lock.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                raise SweepError(
                    f"{self.root} is being written by another sweep (process {pid} on "
                    f"{host}); if none is running, delete {lock}"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            break
        try:
            for tmp in self.runs_dir.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
            yield
        finally:
            if lock.exists() and lock.read_text(encoding="utf-8") == me:
                lock.unlink()

    def records(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """All valid records (sorted by run id) and ``{file: problem}`` for corrupt ones."""
        good, bad = [], {}
        if not self.runs_dir.is_dir():
            return good, bad
        for path in sorted(self.runs_dir.glob("*.json")):
            record, problem = self.read(path.stem)
            if problem:
                bad[str(path)] = problem
            elif record is not None:
                good.append(record)
        return good, bad


def load_records(results_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Valid records of a result directory; raises :class:`SweepError` if there is none."""
    store = ResultStore(results_dir)
    if not store.runs_dir.is_dir():
        raise SweepError(f"{results_dir}: not a result directory (no runs/ folder)")
    good, bad = store.records()
    for path, problem in bad.items():
        print(f"warning: skipping corrupt record {path}: {problem}", file=sys.stderr)
    if not good:
        raise SweepError(f"{results_dir}: no valid run records")
    return good


# --------------------------------------------------------------------------------------
# Runners

Runner = Callable[[CellConfig, Sequence[int], float], list[dict[str, Any]]]
"""``runner(cell, seeds, budget_scale) -> [metrics of seed 0, metrics of seed 1, …]``.

A runner trains the cell's learner for every seed (vmapped in one compiled
call where the learner allows) and returns one JSON-ready metrics dict per
seed, in the order of ``seeds``. Same cell and seed → same numbers.
"""


@dataclasses.dataclass(frozen=True)
class WorkUnit:
    """The missing seeds of one cell: what one worker call runs."""

    cell: CellConfig
    seeds: tuple[int, ...]
    budget_scale: float
    sweep_name: str = ""
    compile_cache: str | None = None
    keep: tuple[int, ...] | None = None  # seeds whose records are wanted (default: all)

    @property
    def wanted(self) -> tuple[int, ...]:
        return self.seeds if self.keep is None else self.keep


def enable_compile_cache(path: str) -> None:
    """Point JAX's persistent compilation cache at ``path`` (unless one is already set).

    Worker processes of a sweep share it, so a resumed sweep, a second
    worker or a Ray task reuses what another process compiled for the same
    shapes instead of paying XLA's compile time again. Process-wide: called
    only by the sweep's own workers (and the driver when it runs cells itself).
    """
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    Path(path).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def execute_unit(unit: WorkUnit) -> list[dict[str, Any]]:
    """Run one unit (in whatever process) and return its complete records."""
    if unit.compile_cache:
        enable_compile_cache(unit.compile_cache)
    settings = unit.cell.settings.scaled(unit.budget_scale)
    cell = dataclasses.replace(unit.cell, settings=settings)
    start = time.perf_counter()
    metrics = RUNNERS[unit.cell.learner](cell, unit.seeds, unit.budget_scale)
    wall = time.perf_counter() - start
    if len(metrics) != len(unit.seeds):
        raise RuntimeError(
            f"runner {unit.cell.learner!r} returned {len(metrics)} results for "
            f"{len(unit.seeds)} seeds"
        )
    return [
        make_record(
            unit.cell, seed, unit.budget_scale, m, wall_time_s=wall,
            group_size=len(unit.seeds), sweep_name=unit.sweep_name,
        )
        for seed, m in zip(unit.seeds, metrics, strict=True)
        if seed in unit.wanted
    ]


def plan(
    spec: SweepSpec,
    store: ResultStore,
    *,
    budget_scale: float = 1.0,
    resume: bool = False,
    compile_cache: str | None = None,
) -> tuple[list[WorkUnit], dict[str, Any]]:
    """The units still to run and a summary ``{"total", "done", "corrupt": [...]}``.

    Without ``resume`` an existing record is an error (a different sweep's
    directory, or a rerun that would overwrite finished work).
    """
    check_budget_scale(budget_scale)
    pending: dict[CellConfig, list[int]] = {}
    done, corrupt = 0, []
    for cell, seed, rid in spec.runs(budget_scale):
        record, problem = store.read(rid)
        if record is not None:
            if not resume:
                raise SweepError(
                    f"{store.root} already holds results of this sweep (e.g. {rid}); "
                    "pass --resume to run only what is missing, or choose another --out"
                )
            done += 1
            continue
        if problem:
            corrupt.append(f"{store.path(rid)}: {problem}")
        pending.setdefault(cell, []).append(seed)
    # A cell with only some seeds missing (a record was corrupt or deleted)
    # still trains all its seeds in one vmapped call and keeps the missing
    # ones: a seed's numbers then never depend on which other seeds shared
    # its call, so every record is reproducible bit for bit.
    units = [
        WorkUnit(c, spec.seeds, budget_scale, spec.name, compile_cache, tuple(s))
        for c, s in pending.items()
    ]
    return units, {"total": len(spec.seeds) * len(spec.cells()), "done": done, "corrupt": corrupt}


@dataclasses.dataclass
class SweepOutcome:
    written: list[str]
    failed: dict[str, str]  # cell label -> error text
    skipped: int


def _write_manifest(spec: SweepSpec, store: ResultStore, budget_scale: float) -> None:
    store.root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": spec.name,
        "source": spec.source,
        "budget_scale": budget_scale,
        "seeds": list(spec.seeds),
        "cells": [c.to_dict() for c in spec.cells()],
        "versions": versions(),
    }
    atomic_write_json(store.root / "sweep.json", manifest)
    if spec.source and Path(spec.source).is_file():
        atomic_write_text(store.root / "sweep.toml", Path(spec.source).read_text("utf-8"))


def run_sweep(
    spec: SweepSpec,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    budget_scale: float = 1.0,
    workers: int | None = None,
    ray_address: str | None = None,
    on_records: Callable[[list[dict[str, Any]]], None] | None = None,
    on_plan: Callable[[int, int], None] | None = None,
    compile_cache: str | None | bool = True,
) -> SweepOutcome:
    """Run every missing run of ``spec`` and store its records under ``out``.

    Args:
      spec: a validated sweep.
      out: result directory (created).
      resume: skip runs whose record exists; rerun missing or corrupt ones.
      budget_scale: multiplies every step budget in ``Settings`` (tests use ~0.01).
      workers: local processes (default: the number of CPU cores, at most the
        number of units); 1 runs in this process. Ignored with ``ray_address``.
      ray_address: run the units as Ray tasks on this cluster (``"local"``
        starts one here; ``"auto"`` finds a running one). Needs ``pip install
        prefrl[ray]``. If Ray is already initialised in this process, that
        instance is used.
      on_records: called in the driver with each unit's records once stored.
      on_plan: called once with ``(runs to do, runs already done)``.
      compile_cache: JAX persistent compilation cache shared by the workers:
        ``True`` uses ``out/.jax_cache``, a path uses that, ``False``/``None``
        none (see :func:`enable_compile_cache`).
    """
    store = ResultStore(out)
    if compile_cache is True:
        compile_cache = str(Path(out).resolve() / ".jax_cache")
    with store.writer_lock():
        return _run_locked(spec, store, resume, budget_scale, workers, ray_address, on_records,
                           on_plan, compile_cache or None)


def _run_locked(
    spec: SweepSpec,
    store: ResultStore,
    resume: bool,
    budget_scale: float,
    workers: int | None,
    ray_address: str | None,
    on_records: Callable[[list[dict[str, Any]]], None] | None,
    on_plan: Callable[[int, int], None] | None,
    compile_cache: str | None,
) -> SweepOutcome:
    units, summary = plan(
        spec, store, budget_scale=budget_scale, resume=resume, compile_cache=compile_cache
    )
    for line in summary["corrupt"]:
        print(f"rerunning corrupt record {line}", file=sys.stderr)
    _write_manifest(spec, store, budget_scale)
    if on_plan is not None:
        on_plan(sum(len(u.wanted) for u in units), summary["done"])
    outcome = SweepOutcome([], {}, summary["done"])

    def finish(unit: WorkUnit, records: list[dict[str, Any]] | None, error: str | None) -> None:
        if error is not None:
            outcome.failed[unit.cell.label()] = error
            print(f"cell {unit.cell.label()} failed:\n{error}", file=sys.stderr)
            return
        assert records is not None
        for r in records:
            store.write(r)
            outcome.written.append(r["run_id"])
        if on_records is not None:
            on_records(records)

    if not units:
        return outcome
    if ray_address is not None:
        _run_ray(units, ray_address, finish)
    else:
        n = workers if workers is not None else (os.cpu_count() or 1)
        if n < 1:
            raise SweepError(f"workers must be >= 1, got {n}")
        n = min(n, len(units))
        if n == 1:
            for unit in units:
                try:
                    records = execute_unit(unit)
                except Exception:  # noqa: BLE001 - one bad cell must not stop the sweep
                    finish(unit, None, traceback.format_exc())
                else:
                    finish(unit, records, None)
        else:
            _run_pool(units, n, finish)
    return outcome


def _run_pool(units: list[WorkUnit], n: int, finish: Callable[..., None]) -> None:
    # spawn, not fork: a forked child inherits JAX/XLA thread pools mid-state.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
        futures: dict[Future, WorkUnit] = {pool.submit(execute_unit, u): u for u in units}
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for fut in done:
                err = fut.exception()
                if err is not None:
                    text = "".join(traceback.format_exception(err))
                    finish(futures[fut], None, text)
                else:
                    finish(futures[fut], fut.result(), None)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise SweepError(
            "--ray needs Ray: pip install 'prefrl[ray]' (or pip install ray)"
        ) from err
    return ray


def _run_ray(units: list[WorkUnit], address: str, finish: Callable[..., None]) -> None:
    ray = _import_ray()
    if not ray.is_initialized():
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    remote = ray.remote(num_cpus=1, max_retries=0)(_ray_execute)
    refs = {remote.remote(u): u for u in units}
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            records, error = ray.get(ref)
            finish(refs[ref], records, error)


def _ray_execute(unit: WorkUnit) -> tuple[list[dict[str, Any]] | None, str | None]:
    # Errors travel back as text: the driver reports the cell and carries on.
    try:
        return execute_unit(unit), None
    except Exception:  # noqa: BLE001
        return None, traceback.format_exc()


def iter_cells(records: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Group records by cell (identity without the seed)."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        key = _canonical({k: v for k, v in r["identity"].items() if k != "seed"})
        out.setdefault(key, []).append(r)
    return out


# --------------------------------------------------------------------------------------
# Runners: one per learner. Each builds the cell's seed-independent data once
# on the host, then trains every seed in one jit(vmap(...)) call.

OBS_DIM = 17  # half-cheetah (prefrl.envs.OBS_DIM); checked against the dataset
ACT_DIM = 6
_HELDOUT_KEY = 0  # fixed: every cell and seed is scored on the same held-out queries


@dataclasses.dataclass(frozen=True)
class CellData:
    """Seed-independent inputs of a cell (host side).

    ``segments`` is the dataset's pool cut to the cell's segment length
    ``[N, k, …]``; ``train_idx``/``heldout_idx`` split it (fixed permutation,
    so the held-out segments never appear in a training query);
    ``heldout_first``/``heldout_second`` ``[H]`` index held-out queries into
    ``segments``, labelled without noise by every oracle available
    (``heldout_labels``: model → ``[H]``; ``regret`` only with an expert).
    ``rational``/``preference`` ``[N]`` are the cell's oracle's scores.
    """

    segments: Any
    train_idx: Any
    heldout_idx: Any
    heldout_first: Any
    heldout_second: Any
    heldout_labels: dict[str, Any]
    oracle: Any
    rational: Any
    preference: Any
    value_fn: Any


def _oracle_discount(model: str, settings: Settings) -> float:
    # Partial return is the undiscounted sum (γ_p = 1, Christiano 2017); the
    # regret score uses V_E's own γ (DESIGN.md §3).
    return 1.0 if model == "partial_return" else settings.discount


def slice_segments(segments: Any, length: int) -> Any:
    """The first ``length`` steps of every segment (``s_length`` = ``next_obs[:, length − 1]``)."""
    k = segments.obs.shape[1]
    if not 1 <= length <= k:
        raise SweepError(f"segment length {length} is not in [1, {k}] (the dataset's length)")
    if length == k:
        return segments
    changes = {
        f.name: getattr(segments, f.name)[:, :length]
        for f in dataclasses.fields(segments)
        if f.name != "source"
    }
    return segments.replace(**changes)


def load_value_fn(path: str) -> Callable[[Any], Any]:
    """``V_E(obs [..., obs]) -> [...]`` of the expert file ``path`` (true-reward units)."""
    from prefrl import checkpoints

    return checkpoints.load_value_fn(path, obs_dim=OBS_DIM)


def load_cell_data(cell: CellConfig) -> CellData:
    """Load and prepare the cell's segment pool, held-out queries and oracle scores."""
    import jax
    import numpy as np

    from prefrl import oracles
    from prefrl.data import dataset as dataset_lib
    from prefrl.data import pairs, queries

    settings = cell.settings
    ds, _ = dataset_lib.load(cell.files.dataset)
    pool = slice_segments(ds.segments, cell.segment_length)
    n, _, obs_dim = pool.obs.shape
    if obs_dim != OBS_DIM or pool.action.shape[-1] != ACT_DIM:
        raise SweepError(
            f"{cell.files.dataset}: segments have obs/act dims {obs_dim}/{pool.action.shape[-1]}, "
            f"the half-cheetah tasks have {OBS_DIM}/{ACT_DIM}"
        )
    try:
        parts = pairs.split(n, {"heldout": settings.heldout_fraction}, _HELDOUT_KEY,
                            min_rest=2)
    except ValueError:
        parts = {"heldout": ()}
    heldout_idx, train_idx = parts["heldout"], parts.get("train")
    if len(heldout_idx) < 2:
        raise SweepError(
            f"{cell.files.dataset}: {n} segments are too few to hold out "
            f"{settings.heldout_fraction:g} of them (need >= 2 on each side)"
        )
    n_held = len(heldout_idx)
    value_fn = load_value_fn(cell.files.expert) if cell.files.expert else None

    i, j = queries.uniform_pairs(jax.random.PRNGKey(_HELDOUT_KEY), n_held, settings.heldout_queries)
    h_first, h_second = heldout_idx[np.asarray(i)], heldout_idx[np.asarray(j)]
    heldout_labels = {}
    for model in LABEL_MODELS:
        if model == "regret" and value_fn is None:
            continue
        rational_oracle = oracles.OracleConfig(
            model=model, discount=_oracle_discount(model, settings)
        )
        labels = oracles.label_queries(
            rational_oracle, jax.random.PRNGKey(_HELDOUT_KEY), pool, h_first, h_second, value_fn
        )
        heldout_labels[model] = np.asarray(labels.label)
    oracle = oracles.OracleConfig(
        model=cell.label_model,
        discount=_oracle_discount(cell.label_model, settings),
        temperature=cell.beta,
        temperature_mode=settings.beta_mode,
        mistake_prob=cell.epsilon,
    )
    rational, pref = oracles.pool_scores(oracle, pool, value_fn)
    return CellData(
        segments=pool, train_idx=train_idx, heldout_idx=heldout_idx, heldout_first=h_first,
        heldout_second=h_second, heldout_labels=heldout_labels, oracle=oracle,
        rational=np.asarray(rational), preference=np.asarray(pref), value_fn=value_fn,
    )


@functools.lru_cache(maxsize=32)
def _pair_indices_fn(oracle: Any, budget: int, num_train: int) -> Callable[..., Any]:
    import jax

    from prefrl import oracles
    from prefrl.data import queries

    def one(key, train_idx, rational, pref):  # noqa: ANN001, ANN202
        key_pairs, key_labels = jax.random.split(key)
        i, j = queries.uniform_pairs(key_pairs, num_train, budget)
        first, second = train_idx[i], train_idx[j]
        labels = oracles.label_scores(
            oracle, key_labels, rational[first], rational[second], pref[first], pref[second]
        )
        return first, second, labels.label

    return jax.jit(jax.vmap(one, in_axes=(0, None, None, None)))


def pair_indices(data: CellData, budget: int, keys: Any) -> tuple[Any, Any, Any]:
    """``(first, second, label)`` ``[S, budget]``: every seed's labelled training queries.

    Seed s draws ``budget`` uniform ordered pairs of distinct *training*
    segments with ``keys[s]`` (indices into ``data.segments``) and labels them
    with the cell's oracle (β, ε) from the precomputed scores, in one jitted,
    seed-vmapped call cached per (oracle, budget, pool size).
    """
    import jax.numpy as jnp

    fn = _pair_indices_fn(data.oracle, int(budget), int(data.train_idx.shape[0]))
    first, second, label = fn(keys, jnp.asarray(data.train_idx), jnp.asarray(data.rational),
                              jnp.asarray(data.preference))
    return first.astype(jnp.int32), second.astype(jnp.int32), label.astype(jnp.float32)


def sample_pairs(data: CellData, budget: int, keys: Any) -> Any:
    """Labelled training queries of every seed: a reward-model ``PairBatch`` ``[S, budget, …]``.

    Seed s draws ``budget`` uniform pairs of *training* segments with
    ``keys[s]`` and labels them with the cell's oracle (β, ε) from the
    precomputed scores (:func:`pair_indices`). Same key → same queries and labels.
    """
    from prefrl.data import pairs

    first, second, label = pair_indices(data, budget, keys)
    return pairs.gather(data.segments, first, second, label)


def _seed_keys(seeds: Sequence[int]) -> Any:
    import jax
    import jax.numpy as jnp

    return jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds])


def _unstack(tree: Any, n: int) -> list[Any]:
    import jax

    return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(n)]


def heldout_accuracy(data: CellData, scores: Any) -> dict[str, float]:
    """Accuracy of ``score(σ¹) > score(σ²)`` against each oracle's noiseless held-out labels.

    ``scores`` is ``[N]`` (one per pool segment);
    :func:`prefrl.evaluation.preference_accuracy` (tie labels left out, a tie
    in the scores earns ½; 0.5 when every label is a tie).
    ``heldout_accuracy`` is the one under the cell's own label model.
    """
    import math

    import numpy as np

    from prefrl import evaluation

    scores = np.asarray(scores, np.float64)
    accuracy = evaluation.preference_accuracies(
        scores[data.heldout_first], scores[data.heldout_second], data.heldout_labels)
    out = {f"heldout_accuracy_{model}": acc if math.isfinite(acc) else 0.5
           for model, acc in accuracy.items()}
    own = f"heldout_accuracy_{data.oracle.model}"
    if own in out:
        out["heldout_accuracy"] = out[own]
    return out


def _correlations(learned: Any, target: Any, name: str) -> dict[str, float]:
    import numpy as np
    import scipy.stats

    x, y = np.asarray(learned, np.float64).ravel(), np.asarray(target, np.float64).ravel()
    if x.std() == 0 or y.std() == 0:
        return {f"reward_pearson_{name}": float("nan"), f"reward_spearman_{name}": float("nan")}
    return {
        f"reward_pearson_{name}": float(np.corrcoef(x, y)[0, 1]),
        f"reward_spearman_{name}": float(scipy.stats.spearmanr(x, y).statistic),
    }


def _expert_advantages(data: CellData, discount: float) -> Any:
    """``[N, k]`` A_E = r + γ V_E(s') − V_E(s) of every pool step (needs the expert)."""
    import numpy as np

    seg = data.segments
    v = np.asarray(data.value_fn(seg.obs))
    v_next = np.asarray(data.value_fn(seg.next_obs))
    return np.asarray(seg.reward) + discount * v_next - v


def _reward_model_config(cell: CellConfig, assumption: str) -> Any:
    from prefrl.learners import reward_model

    st = cell.settings
    return reward_model.RewardModelConfig(
        assumption=assumption,
        hidden=st.reward_hidden,
        ensemble_size=st.reward_ensemble,
        learning_rate=st.reward_learning_rate,
        weight_decay=st.reward_weight_decay,
        discount=_oracle_discount(assumption, st),
        batch_size=min(st.reward_batch_size, cell.label_budget),
        num_steps=st.reward_steps,
        eval_every=max(1, min(50, st.reward_steps)),
    )


@functools.lru_cache(maxsize=32)
def _fit_fn(config: Any) -> Callable[..., Any]:
    """``jit(vmap(fit))`` for one reward-model config (cached: one compile per config)."""
    import jax

    from prefrl.learners import reward_model

    return jax.jit(jax.vmap(lambda key, batch: reward_model.fit(key, config, batch)))


@functools.lru_cache(maxsize=32)
def _pool_values_fn(config: Any) -> Callable[..., Any]:
    """Jitted ``(states [S], obs, action, mask) -> (r̂ [S, N, k], scores [S, N])``."""
    import jax

    from prefrl.learners import reward_model

    def one(state, obs, action, mask):  # noqa: ANN001, ANN202
        r_hat = reward_model.reward_fn(state)(obs, action)
        return r_hat, reward_model.segment_scores(state, obs, action, mask)

    return jax.jit(jax.vmap(one, in_axes=(0, None, None, None)))


def fit_reward_models(
    cell: CellConfig, data: CellData, seeds: Sequence[int]
) -> tuple[Any, Any, Any, Any]:
    """Fit the cell's reward model for every seed in one ``jit(vmap(fit))`` call.

    Returns ``(states, train_loss, r_hat, scores)``: the fitted, normalised
    states stacked over seeds, each seed's final training loss ``[S]``, and
    the learned function on every pool step ``[S, N, k]`` with the segment
    scores of the assumed model ``[S, N]``.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from prefrl.learners import reward_model

    config = _reward_model_config(cell, cell.assumption)
    keys = _seed_keys(seeds)
    key_pairs, key_fit = jax.vmap(jax.random.split, out_axes=1)(keys)
    batches = sample_pairs(data, cell.label_budget, key_pairs)
    host = jax.tree.map(np.asarray, batches)
    for s, seed in enumerate(seeds):
        # Host-side value checks where data enters (e.g. a single-class label set).
        one = jax.tree.map(lambda x, s=s: x[s], host)
        reward_model.validate_pairs(one, what=f"{cell.label()} seed {seed}")
    result = _fit_fn(config)(key_fit, batches)
    reward_model.check_finite(
        {k: np.swapaxes(np.asarray(v), 0, 1) for k, v in result.metrics.items()
         if k in ("train_loss", "grad_norm", "skipped")}
    )
    seg = data.segments
    r_hat, scores = _pool_values_fn(config)(
        result.state, *(jnp.asarray(x, jnp.float32) for x in (seg.obs, seg.action, seg.mask))
    )
    train_loss = np.asarray(result.metrics["train_loss"])[:, -1]
    return result.state, train_loss.reshape(len(seeds), -1).mean(axis=1), r_hat, scores


def _run_reward_fit(cell: CellConfig, seeds: Sequence[int], budget_scale: float) -> list[dict]:
    """Fit-only cells: held-out accuracy under both oracles and reward correlations."""
    import numpy as np

    data = load_cell_data(cell)
    _, train_loss, r_hat, scores = fit_reward_models(cell, data, seeds)
    held = data.heldout_idx
    true_r = np.asarray(data.segments.reward)[held]
    adv = _expert_advantages(data, cell.settings.discount)[held] if data.value_fn else None
    out = []
    for s in range(len(seeds)):
        metrics: dict[str, Any] = {"train_loss": float(train_loss[s])}
        metrics.update(heldout_accuracy(data, scores[s]))
        metrics.update(_correlations(np.asarray(r_hat[s])[held], true_r, "true_r"))
        if adv is not None:
            metrics.update(_correlations(np.asarray(r_hat[s])[held], adv, "expert_adv"))
        out.append(metrics)
    return out


# -- policy learners -------------------------------------------------------------------


def _policy_network(settings: Settings) -> Any:
    from prefrl.networks import GaussianPolicy

    return GaussianPolicy(action_dim=ACT_DIM, hidden=tuple(settings.policy_hidden),
                          state_dependent_std=True)


def evaluate_policies(
    cell: CellConfig, network: Any, params: Any, seeds: Sequence[int]
) -> list[dict[str, float]]:
    """True return of each seed's deterministic policy over full episodes.

    Every seed is evaluated from the same reset states (common random numbers:
    the environment seed is fixed, so seeds differ only by their policy).
    """
    from prefrl import offline
    from prefrl.policies import Policy, policy_fn
    from prefrl.rollout import evaluate_on_task

    out = []
    for i in range(len(seeds)):
        policy = Policy(network.apply, offline.select_seed(params, i))
        result = evaluate_on_task(cell.task, policy_fn(policy, deterministic=True),
                                  episodes=cell.settings.eval_episodes, seed=1_000_003)
        metrics = {"true_return": result["mean_return"], "true_return_std": result["std_return"],
                   "mean_speed": result["mean_speed"]}
        if "mean_speed_error" in result:
            metrics["mean_speed_error"] = result["mean_speed_error"]
        out.append(metrics)
    return out


def _offline_network(config: Any, segments: Any) -> Any:
    """The policy network of ``config``; with ``normalize_obs`` its input statistics are the pool's.

    Computed on the host once per cell, so every seed's policy (and the
    statistics baked into the network) is the same function of the data.
    """
    from prefrl import offline

    if getattr(config, "normalize_obs", False):
        return config.network(ACT_DIM, *offline.obs_statistics(segments.obs, segments.mask))
    return config.network(ACT_DIM)


def _offline_config(settings: Settings, main_steps: int, bc_steps: int) -> Any:
    from prefrl import offline

    # Logging chunks must divide both phases; ~20 validation points per run.
    log_every = max(1, main_steps // 20)
    round_up = lambda n: max(log_every, -(-n // log_every) * log_every)
    return offline.TrainConfig(
        num_steps=round_up(main_steps),
        batch_size=settings.cpl_batch_size,
        learning_rate=settings.cpl_learning_rate,
        bc_pretrain_steps=round_up(bc_steps) if bc_steps else 0,
        log_every=log_every,
        hidden=tuple(settings.policy_hidden),
        state_dependent_std=True,
    )


@functools.lru_cache(maxsize=16)
def _offline_fn(algo: str, config: Any, learner_config: Any, network: Any) -> Callable[..., Any]:
    """``jit(vmap(train_fn))`` over (key, first, second, label) with the pool shared.

    Cached per (algo, configs, network): cells with equal shapes share one compile.
    """
    import jax

    from prefrl import offline

    def one(key, first, second, label, obs, action, mask, val):  # noqa: ANN001, ANN202
        train = offline.PairData(obs, action, mask, first, second, label)
        return offline.make_train_fn(
            algo, config, learner_config, train, val, network=network
        )(key)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0, None, None, None, None)))


@functools.lru_cache(maxsize=16)
def _implicit_scores_fn(network: Any, use_ref: bool) -> Callable[..., Any]:
    """``(params [S], ref [S], obs, action, mask) -> (scores [S, N], kl [S])``.

    ``scores`` are the implicit segment scores ``Σ_t log π``
    (:func:`prefrl.learners.cpl.segment_scores`; ``log π/π_ref`` with
    ``use_ref``), ``kl`` the mean KL(π ‖ π_ref) per step over the pool's
    states (closed form on the pre-tanh Gaussians, equal to the KL of the
    squashed policies).
    """
    import jax
    import jax.numpy as jnp

    from prefrl.learners import cpl, ppo

    def one(params, ref, obs, action, mask):  # noqa: ANN001, ANN202
        scores = cpl.segment_scores(network, params, obs, action, mask,
                                    ref_params=ref if use_ref else None)
        mean, log_std = network.apply(params, obs)
        ref_mean, ref_log_std = network.apply(ref, obs)
        kl = ppo.gaussian_kl(mean, log_std, ref_mean, ref_log_std)
        return scores, jnp.sum(kl * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None, None, None)))


def _run_offline(cell: CellConfig, seeds: Sequence[int], budget_scale: float) -> list[dict]:
    """CPL (``cpl``) and contrastive DPO (``dpo``): preferences → policy, no RL."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from prefrl import offline
    from prefrl.learners import cpl

    st = cell.settings
    data = load_cell_data(cell)
    if cell.learner == "dpo":
        algo, learner_config = "dpo", cpl.DPOConfig(beta=st.dpo_beta, bias=1.0)
    elif st.cpl_bc_weight > 0:
        algo = "cpl_bc"
        learner_config = cpl.CPLConfig(alpha=st.cpl_alpha, bias=st.cpl_bias,
                                       bc_weight=st.cpl_bc_weight)
    else:
        algo, learner_config = "cpl", cpl.CPLConfig(alpha=st.cpl_alpha, bias=st.cpl_bias)
    config = _offline_config(st, st.cpl_steps, st.bc_steps)
    network = _offline_network(config, data.segments)

    keys = _seed_keys(seeds)
    key_pairs, key_train = jax.vmap(jax.random.split, out_axes=1)(keys)
    first, second, label = pair_indices(data, cell.label_budget, key_pairs)
    seg = data.segments
    pool = tuple(jnp.asarray(x, jnp.float32) for x in (seg.obs, seg.action, seg.mask))
    own = data.heldout_labels[cell.label_model]
    val = offline.PairData(*pool, jnp.asarray(data.heldout_first, jnp.int32),
                           jnp.asarray(data.heldout_second, jnp.int32),
                           jnp.asarray(own, jnp.float32))
    output, history = _offline_fn(algo, config, learner_config, network)(
        key_train, first, second, label, *pool, val
    )
    history = jax.tree.map(np.asarray, history)
    for phase in ("bc", "pref"):
        bad = history.get(f"{phase}_bad_step")
        if bad is not None and (np.asarray(bad) >= 0).any():
            raise offline.TrainingDivergedError(
                f"{cell.label()}: non-finite loss in the {phase} phase (seeds {list(seeds)})"
            )
    # α or β > 0 leaves the order of the scores unchanged: score with 1.
    scores, kl = _implicit_scores_fn(network, algo == "dpo")(output.params, output.ref_params,
                                                             *pool)
    scores = np.asarray(scores)  # [S, N]
    returns = evaluate_policies(cell, network, output.params, seeds)
    out = []
    for s in range(len(seeds)):
        metrics: dict[str, Any] = dict(returns[s])
        metrics.update(heldout_accuracy(data, scores[s]))
        metrics["kl_to_ref"] = float(kl[s])
        metrics["train_loss"] = float(history["pref"]["loss"][s, -1])
        metrics["curves"] = {
            "step": [(i + 1) * config.log_every for i in range(history["pref"]["loss"].shape[1])],
            "train_loss": [float(v) for v in history["pref"]["loss"][s]],
            "val_accuracy": [float(v) for v in history["pref"]["val_accuracy"][s]],
        }
        out.append(metrics)
    return out




# -- RLHF: reward model + PPO ----------------------------------------------------------


def _learned_reward(obs: Any, action: Any, next_obs: Any, extras: Mapping[str, Any]) -> Any:
    """PPO's ``reward_fn``: the fitted model r̂ (or Â) passed as ``reward_params``."""
    from prefrl.learners import reward_model

    del next_obs
    return reward_model.reward_fn(extras["reward_params"])(obs, action)


def _run_rlhf_ppo(cell: CellConfig, seeds: Sequence[int], budget_scale: float) -> list[dict]:
    """``rm_pr+ppo`` / ``rm_regret+ppo``: fit r̂ or Â (seeds vmapped), then PPO on it per seed.

    PPO's environment loop runs on the host, so its seeds run one after the
    other. π_ref is a BC policy of the dataset (seeds vmapped): the KL
    penalty ``β_KL (log π − log π_ref)`` uses it when ``ppo_kl_coef > 0``,
    and ``kl_to_ref`` (the mean of ``log π − log π_ref`` over the last
    rollout, a KL estimate) is reported either way.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from prefrl import offline, training
    from prefrl.learners import bc, ppo

    st = cell.settings
    data = load_cell_data(cell)
    states, train_loss, _, scores = fit_reward_models(cell, data, seeds)

    # π_ref by behaviour cloning on the pool, one per seed in one vmapped call.
    bc_config = _offline_config(st, st.bc_steps, 0)
    network = _offline_network(bc_config, data.segments)
    keys = _seed_keys(seeds)
    first, second, label = pair_indices(data, cell.label_budget, jax.vmap(
        lambda k: jax.random.fold_in(k, 1))(keys))
    seg = data.segments
    pool = tuple(jnp.asarray(x, jnp.float32) for x in (seg.obs, seg.action, seg.mask))
    val = offline.PairData(*pool, jnp.asarray(data.heldout_first, jnp.int32),
                           jnp.asarray(data.heldout_second, jnp.int32),
                           jnp.asarray(data.heldout_labels[cell.label_model], jnp.float32))
    ref_output, _ = _offline_fn("bc", bc_config, bc.BCConfig(), network)(
        jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys), first, second, label, *pool, val
    )

    ppo_config = ppo.PPOConfig(
        discount=st.discount, policy_hidden=tuple(st.policy_hidden),
        value_hidden=tuple(st.policy_hidden), kl_ref_coef=st.ppo_kl_coef,
    )
    steps_per_update = st.ppo_num_envs * st.ppo_rollout_steps
    num_updates = max(1, -(-st.ppo_env_steps // steps_per_update))
    out = []
    for s, seed in enumerate(seeds):
        train_config = training.TrainConfig(
            task=cell.task, total_steps=st.ppo_env_steps, num_envs=st.ppo_num_envs,
            rollout_steps=st.ppo_rollout_steps, seed=int(seed),
            eval_every=max(1, num_updates // st.ppo_evals), eval_episodes=st.eval_episodes,
            checkpoint_every=0, out_dir=None, progress=False,
        )
        result = training.train(
            train_config, ppo_config, reward_fn=_learned_reward,
            reward_params=jax.tree.map(lambda x, s=s: x[s], states),
            reward_name=f"learned ({cell.assumption})",
            reference=(jax.tree.map(lambda x, s=s: x[s], ref_output.params), network.apply),
        )
        final = result.evaluations[-1]
        hist = result.history
        metrics: dict[str, Any] = {
            "true_return": final["mean_return"],
            "true_return_std": final["std_return"],
            "mean_speed": final["mean_speed"],
            "kl_to_ref": float(hist[-1]["ref_kl"]),
            "proxy_reward": float(hist[-1]["proxy_reward"]),
            "reward_train_loss": float(train_loss[s]),
            "env_steps": int(result.env_steps),
        }
        if "mean_speed_error" in final:
            metrics["mean_speed_error"] = final["mean_speed_error"]
        metrics.update(heldout_accuracy(data, np.asarray(scores[s])))
        metrics["curves"] = {
            "env_steps": [int(h["env_steps"]) for h in hist],
            "proxy_reward": [float(h["proxy_reward"]) for h in hist],
            "true_reward": [float(h["true_reward"]) for h in hist],
            "kl_to_ref": [float(h["ref_kl"]) for h in hist],
            "eval_env_steps": [int(e["env_steps"]) for e in result.evaluations],
            "eval_return": [float(e["mean_return"]) for e in result.evaluations],
        }
        out.append(metrics)
    return out


RUNNERS: dict[str, Runner] = {
    "rm_pr": _run_reward_fit,
    "rm_regret": _run_reward_fit,
    "rm_pr+ppo": _run_rlhf_ppo,
    "rm_regret+ppo": _run_rlhf_ppo,
    "cpl": _run_offline,
    "dpo": _run_offline,
}
