"""Checks of the files the oracles use, without JAX (``prefrl label`` and a sweep's pre-check)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefrl.io import FileFormatError


def check_critic(critic: Mapping[str, Any], trajectory: Mapping[str, Any], *, discount: float,
                 obs_dim: int | None, where: str) -> None:
    """Refuse an expert critic V_E (a PPO checkpoint header) that cannot score these segments.

    Regret labels are only right when V_E is the value of the task whose
    reward the trajectory carries (same task *and* parameters, e.g. v*), in
    true-reward units, with the oracle's discount γ, on observations of the
    trajectory's size (docs/design.md §3).

    Raises:
      prefrl.io.FileFormatError: naming the file and what disagrees.
    """
    from prefrl.envs.tasks import TASKS, task_from_header

    problems = []
    if obs_dim is not None and int(critic.get("obs_dim", obs_dim)) != obs_dim:
        problems.append(f"its observation size {critic['obs_dim']} differs from the "
                        f"trajectory's {obs_dim}")
    gamma = critic.get("discount")
    if gamma is not None and not abs(float(gamma) - discount) <= 1e-12:  # NaN differs too
        problems.append(f"its discount {gamma} differs from --regret-discount {discount} "
                        f"(set --regret-discount {gamma})")
    if critic.get("reward", "true") != "true":
        problems.append(f"it was trained on reward {critic['reward']!r}, not the task's "
                        "true reward")
    if critic.get("task") in TASKS and trajectory.get("task") in TASKS:
        try:
            ours, theirs = task_from_header(critic), task_from_header(trajectory)
        except ValueError as err:
            raise FileFormatError(f"{where}: {err}") from err
        if ours != theirs:
            problems.append(f"it is the critic of task {ours.name!r} {ours.params_dict}, but the "
                            f"trajectory is of task {theirs.name!r} {theirs.params_dict}")
    if problems:
        raise FileFormatError(f"expert critic {where} cannot label these segments: "
                              + "; ".join(problems))


__all__ = ["check_critic"]
