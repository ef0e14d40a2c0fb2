"""The tasks as Gymnasium environments (``prefrl/HalfCheetah…-v0``).

Each is Gymnasium's own ``HalfCheetahEnv`` (v5: same model, frame skip, observation,
reset noise and stepping) with the reward replaced by the task's pure reward
function, so any Gymnasium tool can use the tasks and HalfCheetah-v5 itself is
the reference the project's batched stepper is tested against.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from prefrl.envs.tasks import RESET_NOISE_SCALE, TASKS, TaskSpec, make_task, model_path

# Keyword arguments of HalfCheetahEnv that would change the model, observation or
# reset distribution away from the task definition.
_FIXED = (
    "xml_file",
    "frame_skip",
    "reset_noise_scale",
    "exclude_current_positions_from_observation",
)


class HalfCheetahTaskEnv(HalfCheetahEnv):
    """HalfCheetah-v5 with a prefrl task's reward.

    ``task`` is a task name (then the task's parameters may be given as keyword
    arguments, e.g. ``target_speed=3.0``) or a :class:`TaskSpec`. Other keyword
    arguments (``render_mode``, camera options) go to ``HalfCheetahEnv``.
    ``info`` holds ``x_velocity``, ``reward_ctrl`` and ``reward_task``.
    """

    def __init__(self, task: str | TaskSpec = "run", **kwargs: Any) -> None:
        for key in _FIXED:
            if key in kwargs:
                raise ValueError(f"{key!r} is fixed by the task definition and cannot be set")
        if isinstance(task, TaskSpec):
            spec = task
        else:
            if task not in TASKS:
                make_task(task)  # raises the ValueError listing valid names
            task_params = {k: kwargs.pop(k) for k in list(kwargs) if k in TASKS[task].defaults}
            spec = make_task(task, **task_params)
        self.task = spec
        params = spec.params_dict
        super().__init__(
            xml_file=model_path(),
            frame_skip=spec.frame_skip,
            forward_reward_weight=params.get("forward_reward_weight", 1.0),
            ctrl_cost_weight=params["ctrl_cost_weight"],
            reset_noise_scale=RESET_NOISE_SCALE,
            **kwargs,
        )

    def _get_rew(self, x_velocity: float, action: np.ndarray) -> tuple[float, dict[str, float]]:
        action = np.asarray(action)
        reward = float(self.task.reward(np.float64(x_velocity), action))
        ctrl = float(self.control_cost(action))
        return reward, {"reward_task": reward + ctrl, "reward_ctrl": -ctrl}
