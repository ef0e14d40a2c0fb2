"""Half-cheetah tasks (installed as ``prefrl.envs``).

Importing this package registers each task with Gymnasium (``prefrl/HalfCheetahRun-v0``,
``prefrl/HalfCheetahRunBackward-v0``, ``prefrl/HalfCheetahTargetSpeed-v0``; 1000-step
episodes). Task parameters go through ``gymnasium.make(id, target_speed=3.0)``.
The MJX (pure-JAX) backend is ``prefrl.envs.mjx``, imported on demand.
"""

from __future__ import annotations

from prefrl.envs.tasks import (
    ACT_DIM,
    EPISODE_LENGTH,
    OBS_DIM,
    TASKS,
    TaskSpec,
    as_task,
    check_same_params,
    make_task,
    model_path,
    parse_task_params,
    run_backward_reward,
    run_reward,
    target_speed_reward,
    task_from_header,
)

__all__ = [
    "ACT_DIM",
    "EPISODE_LENGTH",
    "OBS_DIM",
    "TASKS",
    "TaskSpec",
    "as_task",
    "check_same_params",
    "make_task",
    "model_path",
    "parse_task_params",
    "register_envs",
    "run_backward_reward",
    "run_reward",
    "target_speed_reward",
    "task_from_header",
]


def register_envs() -> None:
    """Register every task with Gymnasium (idempotent)."""
    import gymnasium

    for name, task in TASKS.items():
        if task.gym_id in gymnasium.registry:
            continue
        gymnasium.register(
            id=task.gym_id,
            entry_point="prefrl.envs.half_cheetah:HalfCheetahTaskEnv",
            max_episode_steps=EPISODE_LENGTH,
            kwargs={"task": name},
        )


register_envs()
