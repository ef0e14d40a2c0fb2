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
are 5–11× slower than the C engine's and the whole PPO loop 3.5× (README,
Performance); it is the backend for GPUs.

There is no resume: a run is one compiled program (on a GPU, minutes).
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
from prefrl.loops.ppo import TrainConfig, TrainResult
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
    caller (the online loop, :mod:`prefrl.loops.online_mjx`) can use the
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


def evaluate(trainer: Trainer, state: ppo.PPOState, tc: TrainConfig, discount: float
              ) -> dict[str, Any]:
    """The final policy (deterministic) on the C engine: the project's one evaluator."""
    from prefrl.rollout import BatchedEnv, evaluate_policy

    spec = tc.task_spec()
    acting = policy_fn(Policy(trainer.policy_apply, ppo.policy_bundle(state)), deterministic=True)
    with BatchedEnv(spec, num_envs=tc.eval_episodes, seed=tc.seed + 1_000_003,
                    num_threads=tc.num_threads, dtype=np.float32) as env:
        return evaluate_policy(env, acting, jax.random.key(tc.seed + 2),
                               target_speed=spec.params_dict.get("target_speed"),
                               discount=discount)


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
) -> TrainResult:
    """Train PPO on MJX: a host loop over the jitted :attr:`Trainer.step`, one line per update.

    Arguments as :func:`prefrl.loops.ppo.train` (``reference = (params, apply)``
    of π_ref). Every ``eval_every`` updates a metrics line goes to ``log``;
    the final policy is evaluated on the C engine. With ``out_dir``: writes
    ``metrics.jsonl`` and ``final.npz`` (a PPO checkpoint ``load_ppo`` reads).
    ``wall_s`` includes compiling (the first update; the log gives both). Raises
    ``checkpoints.NonFiniteError`` when an update diverges.
    """
    tc = train_config
    spec = tc.task_spec()
    ref_params, ref_apply = (None, None) if reference is None else reference
    trainer, init, step = jitted_trainer(tc, ppo_config, solver, reward_fn, ref_apply)
    ts = init(jax.random.key(tc.seed), default_inputs(ppo_config, reward_params, ref_params))
    if init_checkpoint is not None:
        from prefrl.loops.ppo import _start_from_checkpoint

        ts = ts.replace(ppo=_start_from_checkpoint(ts.ppo, init_checkpoint, spec.obs_dim,
                                                   ppo_config))
    out_dir = Path(tc.out_dir) if tc.out_dir else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.jsonl").write_text("")
    history: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for update_idx in range(1, trainer.num_updates + 1):
        t1 = time.perf_counter()
        ts, metrics = step(ts)  # the first call compiles (once per process and settings)
        metrics = jax.device_get(metrics)  # waits for the update: step_s is its real time
        record = _record(metrics, update_idx, tc, time.perf_counter() - t1)
        if record["nonfinite"]:
            raise checkpoints.NonFiniteError(
                f"PPO update {update_idx} on MJX produced non-finite values")
        history.append(record)
        if out_dir is not None:
            with open(out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if log and (update_idx == trainer.num_updates
                    or (tc.eval_every and update_idx % tc.eval_every == 0)):
            keys = ("update", "env_steps", "true_reward", "kl", "train_episode_return")
            log(json.dumps({k: record[k] for k in keys if k in record}))
    wall = time.perf_counter() - t_start
    evaluation = evaluate(trainer, ts.ppo, tc, ppo_config.discount)
    evaluation.update(update=trainer.num_updates, env_steps=trainer.num_updates
                      * tc.steps_per_update)
    if out_dir is not None:
        checkpoints.save_ppo(
            out_dir / "final.npz", checkpoint_state(ts.ppo, ppo_config, trainer.num_updates),
            config=ppo_config, obs_dim=spec.obs_dim, act_dim=spec.act_dim,
            num_updates=trainer.num_updates, task=spec.to_header(), reward=reward_name,
            train_config={**config_lib.to_dict(tc), "backend": "mjx",
                          "solver": config_lib.to_dict(solver) if solver else None},
            progress={"update": trainer.num_updates,
                      "env_steps": trainer.num_updates * tc.steps_per_update},
            extra={"eval": {k: v for k, v in evaluation.items() if k != "returns"}})
    if log:
        steps = trainer.num_updates * tc.steps_per_update
        later = sum(r["step_s"] for r in history[1:])  # the first update includes compiling
        rate = f"{(steps - tc.steps_per_update) / later:.0f}" if later > 0 else "n/a"
        log(f"{steps} env steps on MJX in {wall:.1f} s (first update, with compiling, "
            f"{history[0]['step_s']:.1f} s; then {rate} steps/s; device {jax.devices()[0]})")
    return TrainResult(state=ts.ppo, history=history, evaluations=[evaluation],
                       env_steps=trainer.num_updates * tc.steps_per_update, wall_s=wall,
                       out_dir=out_dir)


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
    "run",
    "set_learning_rate",
]
