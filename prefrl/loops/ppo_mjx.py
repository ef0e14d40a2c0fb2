"""PPO on MJX in one jit: rollout, reward, GAE and update as one compiled step (for GPUs).

``make_trainer(train_config, ppo_config, solver=GPU) -> Trainer(init, step, train)``:

- ``step(ts) -> (ts, metrics)`` is one PPO iteration, pure and ``jit``-able:
  a ``lax.scan`` of ``rollout_steps`` batched MJX steps with auto-reset
  (:func:`prefrl.envs.mjx.rollout`), acting with the project's one acting
  function (:func:`prefrl.policies.policy_fn` on ``ppo.make_policy_apply`` and
  ``ppo.policy_bundle``: the tanh-Gaussian sampled inside the trace), then
  **the same PPO learner** as the CPU loop, ``prefrl.learners.ppo.make(…).update``
  on the same :class:`prefrl.types.Trajectory` ``[T, B, …]``, which evaluates
  the learned or true reward (``reward_fn``), computes GAE and runs every
  epoch × minibatch. No host round-trip inside an iteration.
- ``train(key, inputs) -> (ts, metrics [U])`` is ``init`` then a ``lax.scan``
  of ``step`` over all updates, so ``jax.jit(jax.vmap(train))(keys, inputs)``
  trains several seeds, and several hyper-parameter values, in one compiled
  call (PureJaxRL's pattern).
- :func:`run` is the host loop over a jitted ``step`` behind ``prefrl train
  ppo --backend mjx``: one line of metrics per update, the final policy
  evaluated on the C engine (the project's one evaluator), ``final.npz``.

What travels as arrays (:class:`RunInputs`, vmappable without recompiling):
Adam's learning rate (kept in the optimiser state: :func:`make_optimizer`
factors the linear annealing as ``lr × (1 − k/K)``, the same updates as
``ppo.make_optimizer``), the adaptive-KL coefficient's start value
(``PPOState.kl_coef``), the per-step KL penalty weight β_KL to π_ref
(``PPOState.kl_ref_coef``), a learned reward's parameters and π_ref's parameters.

Solver options (:mod:`prefrl.envs.mjx_options`): :data:`GPU` caps the Newton
solver at 4 iterations and 8 line-search steps (MuJoCo C: 100 and 50) and
switches off stages half-cheetah has no element for. Under ``vmap`` the
solver loop runs until the slowest environment stops, so the cap bounds
every step's cost.
What it changes against the C engine, measured on CPU with the ``run``
expert (deterministic, the same start states): nothing visible on the
expert's gait — MJX's returns with the cap equal those with MuJoCo's own
options (4 episodes: 1000 steps in float32, 100 in float64). MJX itself
parts from MuJoCo C after ~25 steps (``|Δqpos| > 1e-2``; in float64 too, so
not float32 rounding alone; contacts amplify small differences), so single
episodes differ by chance (8 episodes: up to 23 % over 100 steps, 4.8 % over
1000) while the mean return agrees: 1.7 % over 100 steps, 0.65 % over 200,
0.25 % over 1000 (``tests/test_ppo_mjx.py``). On a 2-core CPU MJX rollouts
are 5–22× slower than the C engine's and the whole PPO loop ~6× (README,
Backends), with the same returns at 1 M steps; it is the backend for GPUs.
On a CPU, set ``prefrl.jax_setup.MJX_CPU_FLAG`` in ``XLA_FLAGS`` (the command
does): without it XLA:CPU deadlocks from B = 1024 environments up.

:func:`run` writes the CPU loop's files (metrics, evaluations, snapshots,
``final.npz``) and ``last.npz`` with the whole device state, so a killed run
resumes bit for bit (``prefrl.loops.resume``).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from prefrl import checkpoints
from prefrl import config as config_lib
from prefrl.envs import mjx as mjx_env
from prefrl.envs.mjx_options import GPU, SolverOptions
from prefrl.learners import Learner, ppo
from prefrl.loops import resume
from prefrl.loops.ppo import TrainConfig, TrainResult
from prefrl.loops.ppo_files import RunFiles
from prefrl.policies import Policy, policy_fn

Array = jax.Array
PRNGKey = jax.Array
Metrics = dict[str, Array]


class RunInputs(NamedTuple):
    """Per-run values that are arrays, so runs differing in them share one compile.

    ``learning_rate`` ``[]``: Adam's start learning rate (annealed to 0 when
    ``anneal_lr``); ``kl_coef`` ``[]``: the adaptive-KL β's start value (the
    ``"kl"`` loss; unused by ``"clip"``); ``reward_params``/``ref_params``: a
    learned reward's and π_ref's parameters (``PPOState`` fields), or None;
    ``kl_ref_coef`` ``[]``: β_KL of the KL penalty to π_ref (used when the
    trainer has a ``reference_apply``; None: ``PPOConfig.kl_ref_coef``).
    Add a leading axis to every leaf to ``vmap`` over runs.
    """

    learning_rate: Array
    kl_coef: Array
    reward_params: Any = None
    ref_params: Any = None
    kl_ref_coef: Any = None


def default_inputs(config: ppo.PPOConfig, reward_params: Any = None,
                   ref_params: Any = None) -> RunInputs:
    """:class:`RunInputs` with the configuration's learning rate, KL start value and β_KL."""
    return RunInputs(learning_rate=jnp.asarray(config.learning_rate, jnp.float32),
                     kl_coef=jnp.asarray(config.kl_init_coef, jnp.float32),
                     reward_params=reward_params, ref_params=ref_params,
                     kl_ref_coef=jnp.asarray(config.kl_ref_coef, jnp.float32))


@struct.dataclass
class MJXTrainState:
    """The whole training run's state: learner, batched environments, episode returns, key."""

    ppo: ppo.PPOState
    env: mjx_env.EnvState  # leaves with leading axis B
    episode_return: Array  # [B] return of each environment's current episode so far
    key: PRNGKey


class Trainer(NamedTuple):
    """Pure functions of one MJX PPO run (all ``jit``-able; ``train`` also ``vmap``-able).

    ``init(key, inputs) -> ts``; ``step(ts) -> (ts, metrics)``: one PPO
    iteration; ``train(key, inputs) -> (ts, metrics)`` with every metric
    stacked over the ``num_updates`` updates. ``step`` is ``update(*collect(ts))``:
    ``collect(ts) -> (ts, traj [T, B, …])`` is the rollout alone and
    ``update(ts, traj) -> (ts, metrics)`` the learner's update on it, so a
    caller (the online loop, :mod:`prefrl.loops.online.mjx`) can use the
    rollout between the two.
    """

    init: Callable[[PRNGKey, RunInputs], MJXTrainState]
    step: Callable[[MJXTrainState], tuple[MJXTrainState, Metrics]]
    train: Callable[[PRNGKey, RunInputs], tuple[MJXTrainState, Metrics]]
    learner: Learner
    policy_apply: ppo.PolicyApply
    num_updates: int
    collect: Callable[[MJXTrainState], tuple[MJXTrainState, Any]]
    update: Callable[[MJXTrainState, Any], tuple[MJXTrainState, Metrics]]


def make_optimizer(config: ppo.PPOConfig, num_updates: int) -> optax.GradientTransformation:
    """``ppo.make_optimizer``'s updates with the learning rate as an array in the state.

    Global-norm clipping, Adam's scaling, the linear annealing factor
    ``1 − k/K`` (when ``anneal_lr``) and ``−lr`` injected as a hyper-parameter,
    so :func:`set_learning_rate` changes it without recompiling.
    """
    parts = [optax.clip_by_global_norm(config.max_grad_norm), optax.scale_by_adam(eps=1e-5)]
    if config.anneal_lr:
        total = num_updates * config.num_epochs * config.num_minibatches
        parts.append(optax.scale_by_schedule(optax.linear_schedule(1.0, 0.0, total)))
    parts.append(optax.inject_hyperparams(optax.scale)(step_size=-config.learning_rate))
    return optax.chain(*parts)


def set_learning_rate(state: ppo.PPOState, learning_rate: Array) -> ppo.PPOState:
    """``state`` whose :func:`make_optimizer` state holds ``learning_rate`` (an array)."""
    *rest, injected = state.opt_state
    step_size = -jnp.asarray(learning_rate, jnp.float32)
    injected = injected._replace(hyperparams={**injected.hyperparams, "step_size": step_size})
    return state.replace(opt_state=(*rest, injected))


def checkpoint_state(state: ppo.PPOState, config: ppo.PPOConfig, num_updates: int
                     ) -> ppo.PPOState:
    """``state`` with its optimiser state in ``ppo.make_optimizer``'s structure.

    The same Adam moments and schedule count, regrouped so that
    ``prefrl.checkpoints.load_ppo`` (which rebuilds the default structure from
    the header) reads the file; the learning rate is the header's.
    """
    default = ppo.make_optimizer(config, num_updates).init(
        {"policy": state.policy_params, "value": state.value_params})
    ours = state.opt_state
    schedule = ours[2] if config.anneal_lr else default[1][1]
    regrouped = (ours[0], (ours[1], schedule))
    if jax.tree.structure(regrouped) != jax.tree.structure(default):
        raise ValueError("optimiser state does not regroup into ppo.make_optimizer's structure")
    return state.replace(opt_state=regrouped)


def episode_returns(running: Array, reward: Array, done: Array) -> tuple[Array, Metrics]:
    """Returns of the episodes that end inside a rollout.

    ``running [B]`` (the current episodes' returns so far), ``reward [T, B]``,
    ``done [T, B]`` → ``(running [B] after the rollout, {"train_episode_return":
    mean of the completed returns (NaN when none), "train_episodes": count})``.
    """

    def body(acc: Array, x: tuple[Array, Array]) -> tuple[Array, tuple[Array, Array]]:
        r, d = x
        acc = acc + r
        return jnp.where(d, 0.0, acc), jnp.where(d, acc, 0.0)

    running, completed = jax.lax.scan(body, running, (reward, done))
    count = jnp.sum(done)
    mean = jnp.where(count > 0, jnp.sum(completed) / jnp.maximum(count, 1), jnp.nan)
    return running, {"train_episode_return": mean, "train_episodes": count}


def make_trainer(
    train_config: TrainConfig,
    ppo_config: ppo.PPOConfig,
    *,
    solver: SolverOptions | None = GPU,
    reward_fn: ppo.RewardFn = ppo.true_reward,
    reference_apply: ppo.PolicyApply | None = None,
) -> Trainer:
    """Build the pure functions of MJX PPO training (see the module docstring).

    ``train_config`` gives the task, ``num_envs`` (B), ``rollout_steps`` (T) and
    ``total_steps`` (→ ``num_updates``); its evaluation, checkpoint and thread
    settings are for :func:`run`. ``solver``: the MJX solver options (None:
    MuJoCo C's). ``reward_fn``/``reference_apply`` go to ``ppo.make``.
    """
    tc = train_config
    spec = tc.task_spec()
    num_updates = tc.num_updates
    learner = ppo.make(ppo_config, spec.obs_dim, spec.act_dim, num_updates=num_updates,
                       reward_fn=reward_fn, reference_apply=reference_apply,
                       optimizer=make_optimizer(ppo_config, num_updates))
    policy_apply = ppo.make_policy_apply(ppo_config, spec.act_dim)
    model = mjx_env.make_model(solver)

    def init(key: PRNGKey, inputs: RunInputs) -> MJXTrainState:
        ppo_key, env_key, run_key = jax.random.split(key, 3)
        state = learner.init(ppo_key).replace(
            kl_coef=jnp.asarray(inputs.kl_coef, jnp.float32),
            reward_params=inputs.reward_params, ref_params=inputs.ref_params,
            kl_ref_coef=None if inputs.kl_ref_coef is None
            else jnp.asarray(inputs.kl_ref_coef, jnp.float32))
        state = set_learning_rate(state, inputs.learning_rate)
        # forward=False: the first step recomputes everything from (qpos, qvel).
        env = mjx_env.reset_batch(model, spec, env_key, tc.num_envs, forward=False)
        return MJXTrainState(ppo=state, env=env, episode_return=jnp.zeros(tc.num_envs),
                             key=run_key)

    def collect(ts: MJXTrainState) -> tuple[MJXTrainState, Any]:
        key, rollout_key = jax.random.split(ts.key)
        act = policy_fn(Policy(policy_apply, ppo.policy_bundle(ts.ppo)))
        env, traj = mjx_env.rollout(spec, act, ts.env, tc.rollout_steps, rollout_key, model)
        return ts.replace(env=env, key=key), traj

    def update(ts: MJXTrainState, traj: Any) -> tuple[MJXTrainState, Metrics]:
        state, metrics = learner.update(ts.ppo, traj)
        running, episodes = episode_returns(ts.episode_return, traj.reward, traj.done)
        return ts.replace(ppo=state, episode_return=running), {**metrics, **episodes}

    def step(ts: MJXTrainState) -> tuple[MJXTrainState, Metrics]:
        return update(*collect(ts))

    def train(key: PRNGKey, inputs: RunInputs) -> tuple[MJXTrainState, Metrics]:
        return jax.lax.scan(lambda ts, _: step(ts), init(key, inputs), None, length=num_updates)

    return Trainer(init=init, step=step, train=train, learner=learner,
                   policy_apply=policy_apply, num_updates=num_updates, collect=collect,
                   update=update)


@functools.lru_cache(maxsize=8)
def _cached_trainer(tc: TrainConfig, ppo_config: ppo.PPOConfig, solver: SolverOptions | None,
                    reward_fn: ppo.RewardFn, reference_apply: ppo.PolicyApply | None
                    ) -> tuple[Trainer, Callable[..., Any], Callable[..., Any]]:
    trainer = make_trainer(tc, ppo_config, solver=solver, reward_fn=reward_fn,
                           reference_apply=reference_apply)
    return trainer, jax.jit(trainer.init), jax.jit(trainer.step)


def jitted_trainer(tc: TrainConfig, ppo_config: ppo.PPOConfig, solver: SolverOptions | None,
                   reward_fn: ppo.RewardFn = ppo.true_reward,
                   reference_apply: ppo.PolicyApply | None = None
                   ) -> tuple[Trainer, Callable[..., Any], Callable[..., Any]]:
    """``(trainer, jit(init), jit(step))``, cached: equal settings compile once per process.

    Only what the computation depends on keys the cache (task, B, T, the
    number of updates), not output folders, seeds or evaluation settings.
    """
    shape = TrainConfig(task=tc.task, task_param=tc.task_param, num_envs=tc.num_envs,
                        rollout_steps=tc.rollout_steps,
                        total_steps=tc.num_updates * tc.steps_per_update)
    spec = (shape, ppo_config, solver, reward_fn, reference_apply)
    try:
        return _cached_trainer(*spec)
    except TypeError:  # an unhashable reward_fn / apply: build for this call only
        return _cached_trainer.__wrapped__(*spec)


def _record(metrics: Mapping[str, Any], update_idx: int, tc: TrainConfig, step_s: float
            ) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for k, v in jax.device_get(dict(metrics)).items():
        value = np.asarray(v).item()
        record[k] = bool(value) if isinstance(value, bool | np.bool_) else value
    if not record["train_episodes"]:
        del record["train_episode_return"]  # NaN: no episode ended in this rollout
    record.update(update=update_idx, env_steps=update_idx * tc.steps_per_update,
                  step_s=step_s)
    return record


def evaluate(trainer: Trainer, state: ppo.PPOState, tc: TrainConfig, discount: float,
             update_idx: int = 0) -> dict[str, Any]:
    """The policy (deterministic) on the C engine: the project's one evaluator.

    Every evaluation of a run starts from the same ``eval_episodes`` start
    states (the environments are seeded by the run's seed alone), so a
    resumed run evaluates exactly as an uninterrupted one.
    """
    from prefrl.rollout import BatchedEnv, evaluate_policy

    spec = tc.task_spec()
    acting = policy_fn(Policy(trainer.policy_apply, ppo.policy_bundle(state)), deterministic=True)
    with BatchedEnv(spec, num_envs=tc.eval_episodes, seed=tc.seed + 1_000_003,
                    num_threads=tc.num_threads, dtype=np.float32) as env:
        result = evaluate_policy(env, acting, jax.random.key(tc.seed + 2),
                                 target_speed=spec.params_dict.get("target_speed"),
                                 discount=discount)
    result.update(update=update_idx, env_steps=update_idx * tc.steps_per_update)
    return result


def resumable(ts: MJXTrainState) -> MJXTrainState:
    """What ``last.npz`` stores of a run: everything but the inputs that have files of their own.

    A learned reward's and π_ref's parameters come from their files on a resume.
    """
    return ts.replace(ppo=ts.ppo.replace(reward_params=None, ref_params=None))


def resume_from(files: RunFiles, ts: MJXTrainState, log: Callable[[str], None] | None
                ) -> tuple[MJXTrainState, int]:
    """``(state, update)`` from ``out_dir/last.npz`` (the whole device state), else ``(ts, 0)``.

    The restored state is the one the interrupted run had after that update,
    leaf for leaf, so the run continues bit for bit (same machine and device).
    """
    opened = files.open_last()
    if opened is None:
        return ts, 0
    arrays, header = opened
    last = files.out_dir / "last.npz"
    restored = resume.restore_device_state(resumable(ts), arrays, str(last))
    ts = restored.replace(ppo=restored.ppo.replace(reward_params=ts.ppo.reward_params,
                                                   ref_params=ts.ppo.ref_params))
    start = int(header["progress"]["update"])
    if log:
        log(f"resuming {last} at update {start}/{files.tc.num_updates}")
    return ts, start


def run(
    train_config: TrainConfig,
    ppo_config: ppo.PPOConfig,
    *,
    solver: SolverOptions | None = GPU,
    reward_fn: ppo.RewardFn = ppo.true_reward,
    reward_params: Any = None,
    reward_name: str = "true",
    reference: tuple[Any, ppo.PolicyApply] | None = None,
    init_checkpoint: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    stop_after_updates: int | None = None,
) -> TrainResult:
    """Train PPO on MJX: a host loop over the jitted :attr:`Trainer.step`, one line per update.

    Arguments as :func:`prefrl.loops.ppo.train` (``reference = (params, apply)``
    of π_ref; ``stop_after_updates`` stops early, as if interrupted). Every
    ``eval_every`` updates and at the end the policy is evaluated on the C
    engine. With ``out_dir`` the run writes what the CPU loop writes
    (:class:`prefrl.loops.ppo_files.RunFiles`): ``metrics.jsonl``,
    ``evals.jsonl``, ``snapshots/step_*.npz``, ``final.npz`` and, every
    ``checkpoint_every`` updates, ``last.npz``: a PPO checkpoint that also holds
    the whole device state (``device_state/…``: MJX physics, episode returns,
    optimiser, key), from which running the same command again continues bit
    for bit; a finished run is not trained again (its result's state is
    ``final.npz``'s: ``ppo.make_optimizer``'s optimiser structure). ``wall_s`` includes
    compiling (the first update; the log gives both). Raises
    ``checkpoints.NonFiniteError`` when an update diverges.
    """
    tc = train_config
    spec = tc.task_spec()
    ref_params, ref_apply = (None, None) if reference is None else reference
    trainer, init, step = jitted_trainer(tc, ppo_config, solver, reward_fn, ref_apply)
    ts = init(jax.random.key(tc.seed), default_inputs(ppo_config, reward_params, ref_params))
    files = RunFiles(Path(tc.out_dir) if tc.out_dir else None, ppo_config, tc, spec.obs_dim,
                     spec.act_dim, spec.to_header(), reward_name, backend="mjx",
                     train_extra={"solver": config_lib.to_dict(solver) if solver else None})

    def as_checkpoint(ts: MJXTrainState) -> ppo.PPOState:
        return checkpoint_state(ts.ppo, ppo_config, trainer.num_updates)

    if (done := files.finished(as_checkpoint(ts), log)) is not None:
        return TrainResult(state=done[0], history=done[1], evaluations=done[2],
                           env_steps=trainer.num_updates * tc.steps_per_update, wall_s=0.0,
                           out_dir=files.out_dir)
    if init_checkpoint is not None:
        from prefrl.loops.ppo import _start_from_checkpoint

        ts = ts.replace(ppo=_start_from_checkpoint(ts.ppo, init_checkpoint, spec.obs_dim,
                                                   ppo_config))
    ts, start = resume_from(files, ts, log)
    history: list[dict[str, Any]] = []
    evaluations: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    update_idx = start
    for update_idx in range(start + 1, trainer.num_updates + 1):
        if stop_after_updates is not None and update_idx > stop_after_updates:
            update_idx -= 1
            break
        t1 = time.perf_counter()
        ts, metrics = step(ts)  # the first call compiles (once per process and settings)
        metrics = jax.device_get(metrics)  # waits for the update: step_s is its real time
        record = _record(metrics, update_idx, tc, time.perf_counter() - t1)
        if record["nonfinite"]:
            raise checkpoints.NonFiniteError(
                f"PPO update {update_idx} on MJX produced non-finite values")
        evaluation = None
        if (tc.eval_every and update_idx % tc.eval_every == 0) or (
                update_idx == trainer.num_updates):
            evaluation = evaluate(trainer, ts.ppo, tc, ppo_config.discount, update_idx)
            evaluations.append(evaluation)
            record["eval_return"] = evaluation["mean_return"]
        history.append(record)
        files.after_update(lambda ts=ts: as_checkpoint(ts), update_idx, record, evaluation,
                           lambda ts=ts: resume.device_state_arrays(resumable(ts)))
        if log and evaluation is not None:
            keys = ("update", "env_steps", "true_reward", "kl", "train_episode_return",
                    "eval_return")
            log(json.dumps({k: record[k] for k in keys if k in record}))
    wall = time.perf_counter() - t_start
    if files.out_dir is not None and update_idx == trainer.num_updates:
        files.save(files.out_dir / "final.npz", as_checkpoint(ts), update_idx,
                   {"eval": _without_returns(evaluations[-1])})
    if log and history:
        steps = len(history) * tc.steps_per_update
        later = sum(r["step_s"] for r in history[1:])  # the first update includes compiling
        rate = f"{(steps - tc.steps_per_update) / later:.0f}" if later > 0 else "n/a"
        log(f"{steps} env steps on MJX in {wall:.1f} s (first update, with compiling, "
            f"{history[0]['step_s']:.1f} s; then {rate} steps/s; device {jax.devices()[0]})")
    return TrainResult(state=ts.ppo, history=history, evaluations=evaluations,
                       env_steps=update_idx * tc.steps_per_update, wall_s=wall,
                       out_dir=files.out_dir)


def _without_returns(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in evaluation.items() if k != "returns"}


__all__ = [
    "MJXTrainState",
    "RunInputs",
    "Trainer",
    "checkpoint_state",
    "default_inputs",
    "episode_returns",
    "evaluate",
    "jitted_trainer",
    "make_optimizer",
    "make_trainer",
    "resumable",
    "resume_from",
    "run",
    "set_learning_rate",
]
