"""PPO's training loop (host code): batched CPU rollouts → one jitted PPO update.

Per iteration: ``env.rollout(policy_fn, rollout_steps, key)`` collects a
``[T, B]`` :class:`prefrl.types.Trajectory` with the current (behaviour)
policy; ``update(state, trajectory)`` — one jitted call — recomputes the
behaviour log-probs and values, the learning reward, GAE and all
epochs × minibatches. Around it: a tqdm progress bar, periodic deterministic
evaluation, metrics as JSON lines, checkpoints (``last.npz`` every
``checkpoint_every`` updates, snapshots at fractions of training) and resume
from ``last.npz`` after an interruption.

Resuming restores the learner's full state (parameters, optimiser,
normalisers, PRNG key), the update counter, both environments' state
(physics with the solver warm-start, episode steps, reset generators) and the
training episodes' running returns, all kept in ``last.npz`` by
:mod:`prefrl.loops.resume`: a run stopped or killed between checkpoints and
resumed ends with the same ``final.npz`` arrays, bit for bit, as an
uninterrupted one. The updates after the checkpoint are redone, so
``metrics.jsonl``/``evals.jsonl`` are first cut back to the checkpoint's
update. Environments without ``state_dict`` (test doubles) restart from fresh
resets seeded by ``(seed, update)`` instead, which only shifts a few episode
boundaries. A finished run (``final.npz``) is not trained again: ``train``
returns its saved result.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prefrl import checkpoints
from prefrl.config import field
from prefrl.io import jsonable
from prefrl.learners import ppo
from prefrl.loops import resume
from prefrl.loops.ppo_files import EpisodeTracker as _EpisodeTracker
from prefrl.loops.ppo_files import RunFiles as _RunFiles
from prefrl.policies import Policy, policy_fn
from prefrl.rollout import episode_length_of, evaluate_policy  # noqa: F401 (re-exported)

EnvFactory = Callable[[int, int], Any]  # (num_envs, seed) -> env with reset/rollout


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training run (algorithm settings live in :class:`prefrl.learners.ppo.PPOConfig`)."""

    task: str = field("run", "task name: run, run-backward, target-speed")
    task_param: tuple[str, ...] = field(
        (), "task parameter NAME=VALUE, repeatable (e.g. target_speed=3.0)", repeat=True)
    total_steps: int = field(1_000_000, "environment steps to train for")
    num_envs: int = field(64, "parallel environments (B)")
    rollout_steps: int = field(64, "steps per environment per update (T)")
    seed: int = field(0, "seed of the learner and the environments")
    eval_every: int = field(25, "evaluate every this many updates (0: only at the end)",
                            result_free=True)
    eval_episodes: int = field(8, "deterministic evaluation episodes (run in parallel)",
                               result_free=True)
    checkpoint_every: int = field(25, "write last.npz every this many updates (0: only at end)",
                                  result_free=True)
    snapshots: tuple[float, ...] = field(
        (0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
        "fractions of training at which to keep a snapshot checkpoint", result_free=True,
    )
    out_dir: str | None = field(None, "output folder (checkpoints, metrics.jsonl); None: none",
                                result_free=True)
    resume: bool = field(True, "resume from out_dir/last.npz when it exists", result_free=True)
    progress: bool = field(True, "show a progress bar", result_free=True)
    num_threads: int | None = field(None, "physics threads (default: all cores)",
                                    result_free=True)

    def __post_init__(self) -> None:
        if self.total_steps < 1 or self.num_envs < 1 or self.rollout_steps < 1:
            raise ValueError("total_steps, num_envs and rollout_steps must be >= 1")
        if self.eval_every < 0 or self.checkpoint_every < 0 or self.eval_episodes < 1:
            raise ValueError("eval_every/checkpoint_every must be >= 0, eval_episodes >= 1")
        if any(not 0 < f <= 1 for f in self.snapshots):
            raise ValueError(f"snapshot fractions must lie in (0, 1], got {self.snapshots}")

    def task_spec(self) -> Any:
        """The :class:`prefrl.envs.TaskSpec` of ``task`` with its ``task_param`` values."""
        from prefrl.envs import parse_task_params

        return parse_task_params(self.task, self.task_param)

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.rollout_steps

    @property
    def num_updates(self) -> int:
        return max(1, math.ceil(self.total_steps / self.steps_per_update))


@dataclasses.dataclass
class TrainResult:
    state: ppo.PPOState
    history: list[dict[str, Any]]
    evaluations: list[dict[str, Any]]
    env_steps: int
    wall_s: float
    out_dir: Path | None


def _default_env_factory(task: Any, num_threads: int | None) -> EnvFactory:
    from prefrl.rollout import BatchedEnv

    def make_env(num_envs: int, seed: int) -> Any:
        return BatchedEnv(task, num_envs=num_envs, seed=seed, num_threads=num_threads,
                          dtype=np.float32)

    return make_env


def _check_finite(x: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(x)):
        t, b = np.argwhere(~np.isfinite(x))[0][:2]
        raise ValueError(f"non-finite {what} (first at step {t}, env {b}): {x[t, b]}")


@functools.lru_cache(maxsize=16)
def _jitted_learner(
    ppo_config: ppo.PPOConfig,
    obs_dim: int,
    act_dim: int,
    num_updates: int,
    reward_fn: ppo.RewardFn,
    reference_apply: ppo.PolicyApply | None,
) -> tuple[Any, Callable[..., Any]]:
    learner = ppo.make(ppo_config, obs_dim, act_dim, num_updates=num_updates,
                       reward_fn=reward_fn, reference_apply=reference_apply)
    return learner, jax.jit(learner.update)


def _learner(*spec: Any) -> tuple[Any, Callable[..., Any]]:
    # Cached: runs with the same settings (seeds of a bench, resumed runs) compile once;
    # the reward's and π_ref's parameters travel in the state, not in the compiled code.
    try:
        return _jitted_learner(*spec)
    except TypeError:  # an unhashable reward_fn / apply: compile for this run only
        return _jitted_learner.__wrapped__(*spec)


def _environments(tc: TrainConfig, env_factory: EnvFactory | None,
                  task_header: Mapping[str, Any] | None, target_speed: float | None
                  ) -> tuple[EnvFactory, Mapping[str, Any] | None, float | None]:
    """The environment factory (default: ``BatchedEnv`` on ``tc.task``) and the task's header."""
    if env_factory is not None:
        return env_factory, task_header, target_speed
    task = tc.task_spec()
    if target_speed is None:
        target_speed = task.params_dict.get("target_speed")
    return _default_env_factory(task, tc.num_threads), task.to_header(), target_speed


def _start_from_checkpoint(state: ppo.PPOState, path: str | Path, obs_dim: int,
                           ppo_config: ppo.PPOConfig) -> ppo.PPOState:
    """The checkpoint's policy, critic and normalisers in ``state`` (its optimiser stays fresh)."""
    loaded, header = checkpoints.load_ppo(path, obs_dim=obs_dim)
    shapes = jax.tree.map(jnp.shape, (state.policy_params, state.value_params))
    if jax.tree.map(jnp.shape, (loaded.policy_params, loaded.value_params)) != shapes:
        raise ValueError(
            f"{path}: network sizes {header['policy_hidden']}/"
            f"{header['value_hidden']} differ from this run's "
            f"{list(ppo_config.policy_hidden)}/{list(ppo_config.value_hidden)}"
        )
    return state.replace(policy_params=loaded.policy_params, value_params=loaded.value_params,
                         obs_stats=loaded.obs_stats, return_stats=loaded.return_stats)


def _diverged(metrics: Mapping[str, Any]) -> str:
    """Which of an update's numbers went non-finite, and what to change for it."""
    if not np.isfinite(metrics["learning_reward"]):
        return "the learning reward is non-finite: check reward_fn / the reward model"
    bad = sorted(k for k, v in metrics.items()
                 if k != "nonfinite" and not np.all(np.isfinite(np.asarray(v, float))))
    return (f"the policy update diverged (non-finite {', '.join(bad)}) while the learning "
            "reward stayed finite: lower --learning-rate (or --max-grad-norm)")


def _rollout_and_update(env: Any, update: Callable[..., Any], state: ppo.PPOState,
                        policy_apply: ppo.PolicyApply, tc: TrainConfig, update_idx: int,
                        tracker: _EpisodeTracker) -> tuple[ppo.PPOState, dict[str, Any]]:
    """One PPO iteration: a rollout with the current policy, then one jitted update."""
    key = jax.random.fold_in(jax.random.key(tc.seed + 1), update_idx)
    behaviour = policy_fn(Policy(policy_apply, ppo.policy_bundle(state)))
    t0 = time.perf_counter()
    traj = env.rollout(behaviour, tc.rollout_steps, key)
    t1 = time.perf_counter()
    reward_np = np.asarray(traj.reward)
    _check_finite(reward_np, f"reward in the rollout of update {update_idx}")
    tracker.add(reward_np, np.asarray(traj.terminated) | np.asarray(traj.truncated))
    state, metrics = update(state, jax.tree.map(jnp.asarray, traj))
    metrics = jax.device_get(metrics)
    t2 = time.perf_counter()
    if bool(metrics["nonfinite"]):
        raise checkpoints.NonFiniteError(
            f"PPO update {update_idx} produced non-finite values: {_diverged(metrics)}")
    record = jsonable(metrics, keep_non_finite=True)
    episodes = tracker.pop()
    if episodes:
        record["train_episode_return"] = float(np.mean(episodes))
        record["train_episodes"] = len(episodes)
    record.update(update=update_idx, env_steps=update_idx * tc.steps_per_update,
                  rollout_s=t1 - t0, update_s=t2 - t1)
    return state, record


def train(
    train_config: TrainConfig,
    ppo_config: ppo.PPOConfig,
    *,
    env_factory: EnvFactory | None = None,
    task_header: Mapping[str, Any] | None = None,
    target_speed: float | None = None,
    reward_fn: ppo.RewardFn = ppo.true_reward,
    reward_params: Any = None,
    reward_name: str = "true",
    reference: tuple[Any, ppo.PolicyApply] | None = None,
    log: Callable[[str], None] | None = None,
    stop_after_updates: int | None = None,
    init_checkpoint: str | Path | None = None,
) -> TrainResult:
    """Train PPO; returns the final state, per-update metrics and evaluations.

    ``env_factory(num_envs, seed)`` builds the training and evaluation
    environments (default: :class:`prefrl.rollout.BatchedEnv` on
    ``train_config.task``). ``reward_fn``/``reward_params``/``reference`` go
    to :func:`prefrl.learners.ppo.make` (``reward_name`` is recorded in
    checkpoints; anything but ``"true"`` marks V as not in true units).
    ``stop_after_updates`` stops early (as if interrupted) — for tests of resume.
    ``init_checkpoint`` starts from a checkpoint's policy, critic and
    normalisers (fresh optimiser) — e.g. RLHF fine-tuning from π_ref.
    With ``out_dir`` set, writes ``metrics.jsonl``, ``evals.jsonl``,
    ``last.npz``, ``snapshots/step_XXXXXXXXX.npz`` and ``final.npz``.
    Raises ``ValueError`` on non-finite rewards or updates.
    """
    tc = train_config
    env_factory, task_header, target_speed = _environments(tc, env_factory, task_header,
                                                           target_speed)
    env = env_factory(tc.num_envs, tc.seed)
    obs_dim = int(env.obs_dim if hasattr(env, "obs_dim") else env.task.obs_dim)
    act_dim = int(env.act_dim if hasattr(env, "act_dim") else env.task.act_dim)
    num_updates = tc.num_updates
    ref_params, ref_apply = (None, None) if reference is None else reference
    learner, update = _learner(ppo_config, obs_dim, act_dim, num_updates, reward_fn, ref_apply)
    policy_apply = ppo.make_policy_apply(ppo_config, act_dim)
    files = _RunFiles(Path(tc.out_dir) if tc.out_dir else None, ppo_config, tc, obs_dim,
                      act_dim, task_header, reward_name)
    inputs = {"reward_params": reward_params, "ref_params": ref_params}
    state = jax.jit(learner.init)(jax.random.key(tc.seed)).replace(**inputs)
    if (done := files.finished(state, log)) is not None:
        env.close() if hasattr(env, "close") else None
        return TrainResult(state=done[0], history=done[1], evaluations=done[2],
                           env_steps=num_updates * tc.steps_per_update, wall_s=0.0,
                           out_dir=files.out_dir)
    if init_checkpoint is not None:
        state = _start_from_checkpoint(state, init_checkpoint, obs_dim, ppo_config)
    eval_env = env_factory(tc.eval_episodes, tc.seed + 1_000_003)
    tracker = _EpisodeTracker(tc.num_envs)
    state, start_update, restored = files.resume(
        state, inputs, log, {"env": env, "eval_env": eval_env}, tracker)
    if start_update and not restored:
        env.close() if hasattr(env, "close") else None
        # Fresh environments, seeded differently from the interrupted run's.
        env = env_factory(tc.num_envs, tc.seed + 7919 * start_update)

    def run_eval(update_idx: int) -> dict[str, Any]:
        key = jax.random.fold_in(jax.random.key(tc.seed + 2), update_idx)
        policy = policy_fn(Policy(policy_apply, ppo.policy_bundle(state)), deterministic=True)
        result = evaluate_policy(eval_env, policy, key, target_speed=target_speed,
                                 discount=ppo_config.discount)
        result.update(update=update_idx, env_steps=update_idx * tc.steps_per_update)
        return result

    history: list[dict[str, Any]] = []
    evaluations: list[dict[str, Any]] = []
    if not restored:
        env.reset()

    def resume_arrays() -> dict[str, np.ndarray] | None:
        arrays = resume.env_arrays({"env": env, "eval_env": eval_env})
        return None if arrays is None else {**arrays, "tracker.running": tracker.running}

    bar = None
    if tc.progress and sys.stderr.isatty():  # a bar only on a terminal: logs stay clean
        from tqdm import tqdm

        bar = tqdm(total=num_updates, initial=start_update, unit="upd", dynamic_ncols=True)
    t_start = time.perf_counter()
    last_train_return = float("nan")
    update_idx = start_update
    try:
        for update_idx in range(start_update + 1, num_updates + 1):
            if stop_after_updates is not None and update_idx > stop_after_updates:
                update_idx -= 1
                break
            state, record = _rollout_and_update(env, update, state, policy_apply, tc,
                                                update_idx, tracker)
            last_train_return = record.get("train_episode_return", last_train_return)
            result = None
            if (tc.eval_every and update_idx % tc.eval_every == 0) or update_idx == num_updates:
                result = run_eval(update_idx)
                evaluations.append(result)
                record["eval_return"] = result["mean_return"]
                if "mean_speed_error" in result:
                    record["eval_speed_error"] = result["mean_speed_error"]
                if log:
                    log(json.dumps({k: v for k, v in result.items() if k != "returns"}))
            history.append(record)
            files.after_update(state, update_idx, record, result, resume_arrays)
            if bar is not None:
                bar.update(1)
                postfix = {"ret": f"{last_train_return:.1f}", "kl": f"{record['kl']:.4f}"}
                if "eval_return" in record:
                    postfix["eval"] = f"{record['eval_return']:.1f}"
                bar.set_postfix(postfix)
    finally:
        if bar is not None:
            bar.close()
        for e in (env, eval_env):
            if hasattr(e, "close"):
                e.close()
    wall = time.perf_counter() - t_start
    if files.out_dir is not None and update_idx == num_updates:
        final_eval = evaluations[-1] if evaluations else {}
        files.save(files.out_dir / "final.npz", state, update_idx,
                   {"eval": {k: v for k, v in final_eval.items() if k != "returns"}})
    if log:
        rollout_s = sum(h["rollout_s"] for h in history)
        update_s = sum(h["update_s"] for h in history)
        steps = len(history) * tc.steps_per_update
        log(f"{steps} env steps in {wall:.1f} s (rollout {rollout_s:.1f} s, update "
            f"{update_s:.1f} s, {steps / max(wall, 1e-9):.0f} steps/s)")
    return TrainResult(state=state, history=history, evaluations=evaluations,
                       env_steps=update_idx * tc.steps_per_update, wall_s=wall,
                       out_dir=files.out_dir)


def load_reference(path: str | Path) -> tuple[Any, ppo.PolicyApply]:
    """``(params, apply)`` of a frozen π_ref: a PPO checkpoint or a ``prefrl train bc`` policy."""
    policy, _ = checkpoints.read_policy(path)
    return policy.params, policy.apply


def rlhf_kwargs(
    reward_model_path: str | None, reference_path: str | None, ppo_config: ppo.PPOConfig
) -> dict[str, Any]:
    """Keyword arguments of :func:`train` for PPO on a learned reward (+ KL to π_ref)."""
    kwargs: dict[str, Any] = {}
    if reward_model_path:
        from prefrl.io import read_kind
        from prefrl.learners import reward_model, sf_networks

        # The reward's arrays travel in PPO's state (reward_params), not in the compiled code.
        if read_kind(reward_model_path) == checkpoints.REGRET_SF_KIND:  # r̂ = w·φ (regret model)
            (value, params), _ = checkpoints.load_regret_sf_reward(reward_model_path)
            kwargs.update(reward_fn=sf_networks.SFReward(value), reward_params=params)
        else:
            (model, rm_state), _ = checkpoints.load_reward_model(reward_model_path)
            kwargs.update(reward_fn=reward_model.PPOReward(model), reward_params=rm_state)
        kwargs["reward_name"] = f"learned:{reward_model_path}"
    if ppo_config.kl_ref_coef > 0 and not reference_path:
        raise ValueError("--kl-ref-coef > 0 needs --reference (the frozen policy π_ref)")
    if reference_path:
        # With β_KL = 0 the KL to π_ref is only measured (metric ref_kl), not penalised.
        kwargs["reference"] = load_reference(reference_path)
        if ppo_config.kl_ref_coef > 0:
            name = kwargs.get("reward_name", "true")
            kwargs["reward_name"] = f"{name}-kl{ppo_config.kl_ref_coef}:{reference_path}"
    return kwargs
