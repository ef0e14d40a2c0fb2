"""Sweep files: the grid, its seeds, data files and shared settings, validated (no JAX).

:func:`load_sweep` parses and validates a TOML sweep file (see
:mod:`prefrl.sweeps`) into frozen dataclasses — :class:`SweepSpec`,
:class:`CellConfig`, :class:`Settings` — raising :class:`SweepError` naming
the key or file *before* any run starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefrl import config as cfg
from prefrl.io import FileFormatError

LABEL_MODELS = ("partial_return", "regret")
KNOWN_TASKS = ("run", "run-backward", "target-speed")

# The learners a grid may name (each a runner of prefrl.studies.cells.RUNNERS)
# and the preference model each assumes: what the 2×2 "label model ×
# assumption" table crosses with the oracle's model.
LEARNER_ASSUMPTION = {
    "rm_pr": "partial_return",
    "rm_regret": "regret",
    "rm_pr+ppo": "partial_return",
    "rm_regret+ppo": "regret",
    "cpl": "regret",
    "dpo": "regret",
    # The online loop (prefrl.loops.online): PPO on r̂ refitted on labels of its own
    # segments; the suffix names the query selection.
    "online_uniform+ppo": "partial_return",
    "online_disagreement+ppo": "partial_return",
    "online_entropy+ppo": "partial_return",
    # Learners that really assume regret (prefrl.studies.cells_regret): the regret-model
    # r̂ via successor features + PPO, and Â used greedily (AWR, no RL).
    "regret_sf+ppo": "regret",
    "advantage_greedy": "regret",
}
# Learners that only fit a reward (no policy): reported by held-out accuracy.
FIT_ONLY_LEARNERS = ("rm_pr", "rm_regret")
# Learners that need the task's expert file whatever the oracle (the regret
# oracle always does: its V_E comes from the expert).
_NEEDS_EXPERT: tuple[str, ...] = ("regret_sf+ppo",)  # its library Π: the expert's folder


class SweepError(ValueError):
    """A sweep file, its data files or a result directory is invalid; the message says which."""


class SweepInputError(SweepError, FileFormatError):
    """A file a sweep's cells would read cannot be used (exit status 1, as any unusable input)."""


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
    task_params: Any = cfg.field(
        (), "the task's parameters, a table such as {target_speed = 3.0} (default: the task's)")

    @property
    def task_param(self) -> tuple[str, ...]:
        """``task_params`` as ``NAME=VALUE`` strings (``--task-param``)."""
        return tuple(f"{k}={v!r}" for k, v in self.task_params)

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
        if self.files.task_params:  # only then: run ids of sweeps without it stay the same
            out["task_params"] = dict(self.files.task_params)
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
        from prefrl.sweeps.store import run_id

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
        if name == "learner" and v not in LEARNER_ASSUMPTION:
            raise SweepError(
                f"grid.learner: unknown {v!r}; choose from {list(LEARNER_ASSUMPTION)}")
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
        if not 1 <= seeds <= 10_000:
            raise SweepError(f"{source}: seeds = {seeds}: give a count in [1, 10000] or a list "
                             "of seeds")
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(
        isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= cfg.SEED_MAX for s in seeds
    ):
        raise SweepError(f"{source}: 'seeds' must be a count or a list of integers in "
                         f"[0, {cfg.SEED_MAX}]")
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
        tasks[task] = TaskFiles(resolve(files.dataset), resolve(files.expert),
                                _task_params(task, files.task_params, source))

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


def _task_params(task: str, params: Any, source: str) -> tuple[tuple[str, float], ...]:
    """``[tasks.X] task_params`` checked against the task's declared parameters (sorted pairs)."""
    from prefrl.envs.tasks import make_task

    if not isinstance(params, Mapping | tuple) or (isinstance(params, tuple) and params):
        raise SweepError(f"{source}: [tasks.{task}] task_params must be a table, e.g. "
                         "{target_speed = 3.0}")
    params = dict(params)
    try:
        spec = make_task(task, **params)
    except (TypeError, ValueError) as err:
        raise SweepError(f"{source}: [tasks.{task}] task_params: {err}") from err
    return tuple((k, v) for k, v in sorted(spec.params_dict.items()) if k in params)


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
    except UnicodeDecodeError as err:
        raise SweepError(f"{path}: not a text (UTF-8) file, so not a TOML sweep file: "
                         f"byte {err.object[err.start]:#04x} at position {err.start}") from err
    for assignment in overrides:
        _apply_override(data, assignment)
    return parse_sweep(data, base_dir=path.parent, source=str(path), check_files=check_files)
