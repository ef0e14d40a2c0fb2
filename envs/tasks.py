"""Half-cheetah task specifications and their reward functions.

All tasks share Gymnasium HalfCheetah-v5's MJCF model, frame skip (5, so
``dt = 5 × 0.01 s = 0.05 s``), 17-d observation ``(qpos[1:], qvel)``, action box
``[-1, 1]^6`` and reset noise (``qpos += U(−0.1, 0.1)``, ``qvel += 0.1·N(0, 1)``).
They differ only in the reward, a pure function of the forward velocity
``v_x = (x_{t+1} − x_t)/dt`` and the action ``a``:

- ``run``:           ``w_f · v_x − w_c ‖a‖²``   (HalfCheetah-v5's reward; w_f = 1, w_c = 0.1)
- ``run-backward``:  ``−v_x − w_c ‖a‖²``
- ``target-speed``:  ``−|v_x − v*| − w_c ‖a‖²``  (v* = 2 m/s by default)

``target-speed`` is where partial return and regret disagree and reward
over-optimisation shows: past ``v*`` faster is worse.

The reward functions use only operators and array methods (``**``, ``.sum``,
``abs``), so the same code runs on ``numpy`` arrays (the CPU stepper) and
``jax.numpy`` arrays (the MJX backend, PPO) without an ``xp`` switch.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

OBS_DIM = 17
ACT_DIM = 6
NQ = 9
NV = 9
EPISODE_LENGTH = 1000
FRAME_SKIP = 5
TIMESTEP = 0.01  # half_cheetah.xml's <option timestep>; checked against the model in tests
RESET_NOISE_SCALE = 0.1
ACTION_LOW = -1.0
ACTION_HIGH = 1.0


def model_path() -> str:
    """Path of Gymnasium's ``half_cheetah.xml`` inside the installed ``gymnasium`` package."""
    import gymnasium

    path = os.path.join(
        os.path.dirname(gymnasium.__file__), "envs", "mujoco", "assets", "half_cheetah.xml"
    )
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: Gymnasium's half-cheetah model is missing")
    return path


@functools.lru_cache(maxsize=1)
def _compiled_model() -> Any:
    """Gymnasium's model, compiled without its deprecated ``settotalmass`` attribute.

    MuJoCo 4 prints a deprecation warning for the compiler attribute
    ``settotalmass="14"`` and advises compiling without it, then calling
    ``mj_setTotalmass`` and ``mj_setConst``. That gives bitwise the same masses,
    inertias and derived constants; the two statistics the compiler derives
    from them (mean body mass and mean diagonal inertia, the constraint
    solver's scale) are recomputed the compiler's way. A test compares every
    array and statistic with a direct compile.
    """
    import mujoco

    with open(model_path(), encoding="utf-8") as f:
        xml = f.read()
    found = re.search(r'\s+settotalmass="([^"]+)"', xml)
    if found is None:
        return mujoco.MjModel.from_xml_path(model_path())
    model = mujoco.MjModel.from_xml_string(xml.replace(found.group(0), "", 1))
    mujoco.mj_setTotalmass(model, float(found.group(1)))
    mujoco.mj_setConst(model, mujoco.MjData(model))
    model.stat.meanmass = sum(float(m) for m in model.body_mass[1:]) / (model.nbody - 1)
    model.stat.meaninertia = sum(float(m) for m in model.dof_M0) / model.nv
    return model


def load_model() -> Any:
    """A fresh copy of the compiled half-cheetah ``mujoco.MjModel``.

    Compiled once per process (:func:`_compiled_model`); the copy is
    identical to a new compile.
    """
    import copy

    return copy.copy(_compiled_model())


def control_cost(action: Any, ctrl_cost_weight: float) -> Any:
    """``[..., act] -> [...]``: ``w_c ‖a‖²`` (HalfCheetah-v5's ``ctrl_cost``)."""
    return ctrl_cost_weight * (action**2).sum(axis=-1)


def run_reward(
    x_velocity: Any,
    action: Any,
    *,
    forward_reward_weight: float = 1.0,
    ctrl_cost_weight: float = 0.1,
) -> Any:
    """``[...], [..., act] -> [...]``: ``w_f v_x − w_c ‖a‖²`` (Gymnasium HalfCheetah-v5)."""
    return forward_reward_weight * x_velocity - control_cost(action, ctrl_cost_weight)


def run_backward_reward(x_velocity: Any, action: Any, *, ctrl_cost_weight: float = 0.1) -> Any:
    """``[...], [..., act] -> [...]``: ``−v_x − w_c ‖a‖²`` (run toward −x)."""
    return -x_velocity - control_cost(action, ctrl_cost_weight)


def target_speed_reward(
    x_velocity: Any, action: Any, *, target_speed: float = 2.0, ctrl_cost_weight: float = 0.1
) -> Any:
    """``[...], [..., act] -> [...]``: ``−|v_x − v*| − w_c ‖a‖²`` (best at ``v_x = v*``)."""
    return -abs(x_velocity - target_speed) - control_cost(action, ctrl_cost_weight)


class TaskDef(NamedTuple):
    """A registered task: its reward function, default parameters and Gymnasium id."""

    reward_fn: Callable[..., Any]
    defaults: Mapping[str, float]
    gym_id: str
    description: str


TASKS: dict[str, TaskDef] = {
    "run": TaskDef(
        run_reward,
        {"forward_reward_weight": 1.0, "ctrl_cost_weight": 0.1},
        "prefrl/HalfCheetahRun-v0",
        "run forward: w_f*v_x - w_c*|a|^2 (HalfCheetah-v5's reward)",
    ),
    "run-backward": TaskDef(
        run_backward_reward,
        {"ctrl_cost_weight": 0.1},
        "prefrl/HalfCheetahRunBackward-v0",
        "run backward: -v_x - w_c*|a|^2",
    ),
    "target-speed": TaskDef(
        target_speed_reward,
        {"target_speed": 2.0, "ctrl_cost_weight": 0.1},
        "prefrl/HalfCheetahTargetSpeed-v0",
        "hold a speed: -|v_x - v*| - w_c*|a|^2",
    ),
}


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A task with its reward parameters fixed; hashable, so usable as a jit static arg.

    ``params`` is a sorted tuple of ``(name, value)`` pairs (see ``params_dict``).
    """

    name: str
    params: tuple[tuple[str, float], ...]
    obs_dim: int = OBS_DIM
    act_dim: int = ACT_DIM
    episode_length: int = EPISODE_LENGTH
    frame_skip: int = FRAME_SKIP
    dt: float = TIMESTEP * FRAME_SKIP
    reset_noise_scale: float = RESET_NOISE_SCALE

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise ValueError(_unknown_task_message(self.name))
        allowed = set(TASKS[self.name].defaults)
        for key, value in self.params:
            if key not in allowed:
                raise ValueError(
                    f"task {self.name!r} has no parameter {key!r}; valid: {sorted(allowed)}"
                )
            if not isinstance(value, int | float) or value != value or abs(value) == float("inf"):
                raise ValueError(f"task parameter {key!r} must be a finite number, got {value!r}")
            if key in NON_NEGATIVE and value < 0:
                raise ValueError(f"task parameter {key!r} must be >= 0 (a cost weight), "
                                 f"got {value!r}")
        if self.episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {self.episode_length}")

    @property
    def params_dict(self) -> dict[str, float]:
        return dict(self.params)

    @property
    def gym_id(self) -> str:
        return TASKS[self.name].gym_id

    def reward(self, x_velocity: Any, action: Any) -> Any:
        """``[...], [..., act] -> [...]``: this task's reward (numpy or jax.numpy inputs)."""
        return TASKS[self.name].reward_fn(x_velocity, action, **self.params_dict)

    def to_header(self) -> dict[str, Any]:
        """JSON-able description for file headers."""
        return {"task": self.name, "task_params": self.params_dict}


# Parameters that must not be negative: a negative control cost pays for large actions.
NON_NEGATIVE = ("ctrl_cost_weight",)


def _unknown_task_message(name: str) -> str:
    return f"unknown task {name!r}; valid tasks: {sorted(TASKS)}"


def make_task(name: str, **params: float) -> TaskSpec:
    """Build the frozen :class:`TaskSpec` for ``name`` with defaults overridden by ``params``.

    Raises ``ValueError`` for an unknown task (listing the valid names) or an
    unknown / non-finite parameter.
    """
    if name not in TASKS:
        raise ValueError(_unknown_task_message(name))
    unknown = sorted(set(params) - set(TASKS[name].defaults))
    if unknown:
        raise ValueError(
            f"task {name!r} has no parameter(s) {unknown}; valid: {sorted(TASKS[name].defaults)}"
        )
    merged = {**TASKS[name].defaults, **params}
    return TaskSpec(name=name, params=tuple(sorted((k, float(v)) for k, v in merged.items())))


def as_task(task: str | TaskSpec) -> TaskSpec:
    """A task name (default parameters) or an existing spec -> ``TaskSpec``."""
    if isinstance(task, TaskSpec):
        return task
    if isinstance(task, str):
        return make_task(task)
    raise TypeError(f"task must be a task name or a TaskSpec, got {type(task).__name__}")


def task_from_header(header: Mapping[str, Any]) -> TaskSpec:
    """Inverse of :meth:`TaskSpec.to_header`."""
    if "task" not in header:
        raise ValueError("header has no 'task' entry")
    return make_task(header["task"], **dict(header.get("task_params") or {}))


def parse_task_params(name: str, assignments: Sequence[str]) -> TaskSpec:
    """The task ``name`` with ``NAME=VALUE`` parameter strings (``--task-param``) applied.

    Raises ``ValueError`` naming the assignment for a malformed one, a value
    that is not a finite number, or a name the task does not declare (listing
    the valid names).
    """
    if name not in TASKS:
        raise ValueError(_unknown_task_message(name))
    valid = sorted(TASKS[name].defaults)
    params: dict[str, float] = {}
    for item in assignments:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--task-param {item!r}: expected NAME=VALUE; task {name!r} "
                             f"has parameters {valid}")
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"--task-param {item!r}: {text!r} is not a number") from None
        if value != value or abs(value) == float("inf"):
            raise ValueError(f"--task-param {item!r}: the value must be a finite number")
        if key in params and params[key] != value:
            raise ValueError(f"--task-param {key}={params[key]:g} and {item!r} contradict each "
                             "other; give each parameter once")
        params[key] = value
    return make_task(name, **params)


def check_same_params(task: TaskSpec, header: Mapping[str, Any], where: str) -> None:
    """``ValueError`` when ``header`` (a file's) records ``task``'s name with other parameters.

    Files of another task (e.g. a ``run`` expert used on ``target-speed``) and
    files that record no parameters pass: only a silent parameter mismatch
    (a dataset at v* = 3 meeting a critic trained at v* = 2) is refused.
    """
    params = header.get("task_params")
    if header.get("task") != task.name or not isinstance(params, Mapping):
        return
    theirs = make_task(task.name, **dict(params)).params_dict
    diff = {k: (theirs[k], v) for k, v in task.params_dict.items() if theirs.get(k) != v}
    if diff:
        text = ", ".join(f"{k}={a:g} there, {k}={b:g} here" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"{where} was made for task {task.name!r} with other parameters: {text}")
