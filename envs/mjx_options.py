"""MJX solver settings for half-cheetah: what a GPU run trades against MuJoCo C's defaults.

Gymnasium's ``half_cheetah.xml`` keeps MuJoCo's default solver: Newton with
up to ``iterations = 100`` iterations and ``ls_iterations = 50`` line-search
steps, stopping early at ``tolerance = 1e-8``. Under ``vmap`` a
``while_loop`` runs until the *slowest* environment of the batch stops, so
the worst contact among thousands of environments sets every step's cost.
The GPU settings (:data:`GPU`) cap the solver at 4 iterations and 8
line-search steps, and switch off features half-cheetah has no element for
(equality constraints, friction loss, sensors: off by construction, so
switching them off changes no number).

What they change against the C engine: the constraint forces of a step are
those after at most 4 Newton iterations instead of up to 100 (the solver
warm-starts from the previous step's accelerations). On the ``run`` expert's
gait the cap does not bind: MJX's returns with :data:`GPU` equal those with
:data:`C_ENGINE` (measured on CPU, 4 episodes: 1000 steps in float32, 100 in
float64), and the capped rollout ran 1.8× faster (B = 4). The
remaining difference to MuJoCo C is MJX's own (float32, and collision and
solver arithmetic that differ in detail); :mod:`prefrl.loops.ppo_mjx` gives
the measured returns. Joint damping stays implicit (``eulerdamp`` on, as in
the C engine): half-cheetah's joints are damped (1.5–6 N·m·s/rad) and
switching it off would change the dynamics, not only their cost.

This module imports no MJX: options are parsed (``prefrl train ppo
--backend mjx``) before the optional ``mujoco-mjx`` package is needed.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from prefrl.config import field

# Features half-cheetah has no element for: switching them off changes no number.
UNUSED_FEATURES = ("EQUALITY", "FRICTIONLOSS", "SENSOR")


@dataclasses.dataclass(frozen=True)
class SolverOptions:
    """Constraint-solver settings applied to the ``mjx.Model`` (static: part of the compile)."""

    iterations: int = field(4, "MJX: Newton solver iterations (MuJoCo C default: 100)")
    ls_iterations: int = field(8, "MJX: line-search iterations (MuJoCo C default: 50)")
    eulerdamp: bool = field(True, "MJX: implicit joint damping in the Euler step (C default)")
    disable_unused: bool = field(
        True, "MJX: switch off equality, friction-loss and sensor stages (none in the model)")

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.ls_iterations < 1:
            raise ValueError(f"iterations and ls_iterations must be >= 1, got "
                             f"{self.iterations} and {self.ls_iterations}")

    def apply(self, mj_model: Any) -> Any:
        """A copy of ``mj_model`` (a ``mujoco.MjModel``) with these options."""
        import mujoco

        model = copy.copy(mj_model)
        model.opt.iterations = int(self.iterations)
        model.opt.ls_iterations = int(self.ls_iterations)
        flags = int(model.opt.disableflags)
        if not self.eulerdamp:
            flags |= int(mujoco.mjtDisableBit.mjDSBL_EULERDAMP)
        if self.disable_unused:
            for name in UNUSED_FEATURES:
                flags |= int(getattr(mujoco.mjtDisableBit, f"mjDSBL_{name}"))
        model.opt.disableflags = flags
        return model


# MuJoCo C's own settings (what Gymnasium's model file leaves at the defaults).
C_ENGINE = SolverOptions(iterations=100, ls_iterations=50, eulerdamp=True, disable_unused=False)
# The settings chosen for GPU training.
GPU = SolverOptions()

__all__ = ["C_ENGINE", "GPU", "SolverOptions", "UNUSED_FEATURES"]
