"""Batched rollouts of the half-cheetah tasks on either backend (docs/design.md §5).

CPU backend — :class:`BatchedEnv`: ``B`` environments as one
``mujoco.batch.Batch`` (MuJoCo ≥ 4.0), a state row per environment
(``mjSTATE_INTEGRATION``: time, qpos, qvel, act, the solver warm-start
``qacc_warmstart``, ctrl, …) stepped by MuJoCo's C engine on a thread pool.
One call per control step moves the whole batch through the ``frame_skip = 5``
``mj_step`` substeps (Gymnasium HalfCheetah-v5's ``do_simulation``): no Python
runs per environment per step. Observations, rewards and velocities are
computed afterwards for the whole ``[T, B]`` block; only an environment that
reaches the episode length runs Python (its reset draws, once per episode).
The policy is one jitted call per control step for the whole batch; a
stochastic :class:`prefrl.policies.Actor` gets its Gaussian noise drawn for a
block of steps in one call, so the per-step call is the network alone (the
same actions bit for bit). Because
each row carries the warm-start and each environment keeps its own reset
generator, rollouts reproduce Gymnasium's HalfCheetah-v5 bit for bit at any
thread count, and :meth:`BatchedEnv.state_dict` resumes them bit for bit.

Why ``mujoco.batch`` rather than ``mujoco.rollout.rollout(model, data, state,
control, nstep=5, initial_warmstart=…, persistent_pool=True)`` once per control
step: rollout takes a warm-start in but does not give the final one back (its
state output is ``mjSTATE_FULLPHYSICS``), so from the second control step on
the solver starts cold and drifts from Gymnasium (measured with random actions,
B = 64: bit-equal for the first control step, max |Δqpos| 4e-8 after 50 steps,
1.3 after 200). It was not faster either: ~69 k env-steps/s closed loop at
B = 64 against ~85 k for ``Batch.step`` (physics only, 2 threads, near-idle box).
A hand-written compiled stepping loop would be what ``Batch`` already is.

MJX backend — :func:`mjx_rollout`: the same tasks in pure JAX
(``prefrl.envs.mjx``), ``jit`` + ``vmap`` + ``lax.scan`` end to end, for GPUs.

Both return the same time-major :class:`prefrl.types.Trajectory` ``[T, B, …]``,
so nothing downstream knows which backend ran.
"""

from prefrl.policies import PolicyFn
from prefrl.rollout.batched import BatchedEnv, observation, reset_rng
from prefrl.rollout.evaluate import (
    episode_length_of,
    evaluate_on_task,
    evaluate_policy,
    policy_from_params,
    random_policy,
    stack_trajectories,
)
from prefrl.rollout.mjx_backend import MJX_EXTRA, MissingExtraError, mjx_rollout, require_mjx

__all__ = [
    "MJX_EXTRA",
    "BatchedEnv",
    "MissingExtraError",
    "PolicyFn",
    "episode_length_of",
    "evaluate_on_task",
    "evaluate_policy",
    "mjx_rollout",
    "observation",
    "policy_from_params",
    "random_policy",
    "require_mjx",
    "reset_rng",
    "stack_trajectories",
]
