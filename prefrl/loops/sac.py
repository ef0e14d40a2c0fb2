"""SAC's training loop (host code): C-engine steps, replay, one jitted learning call per step.

Per *iteration* (one control step of the B environments):

1. act: uniform-random actions for the first ``warmup_steps`` transitions, then
   a sample of the current actor (:func:`prefrl.policies.policy_fn`);
2. ``env.rollout(policy, 1, key)``: one step of every environment (the C
   engine, :class:`prefrl.rollout.BatchedEnv`); a time-limit truncation keeps
   its true last state in ``next_obs`` and ``terminated`` stays False, so SAC
   bootstraps through it;
3. one jitted call: add the B transitions to the replay ring buffer
   (:func:`prefrl.data.buffers.make_ring_buffer`, donated: written in place),
   then ``B × updates_per_step`` SAC updates (:mod:`prefrl.learners.sac`) on
   uniform batches, as one ``lax.scan`` — one gradient update per transition
   by default.

The run's unit for files is a *chunk* of ``log_every`` environment steps: one
``metrics.jsonl`` line (metrics averaged over the chunk's updates), and
evaluations, ``last.npz`` and snapshots fall on chunk ends. Files under
``out_dir``, as ``prefrl train ppo`` writes them:

- ``metrics.jsonl``, ``evals.jsonl`` (deterministic policy, true reward);
- ``snapshots/step_XXXXXXXXX.npz`` and ``final.npz``: the actor as a policy
  file (:func:`prefrl.checkpoints.save_offline_policy`; ``prefrl eval``
  reads it);
- ``last.npz`` (kind ``sac_checkpoint``): the whole learner state, the replay
  buffer, both environments' state and the training episodes' running
  returns (:mod:`prefrl.loops.resume`). A run stopped or killed between
  checkpoints and started again redoes the chunks after its checkpoint and
  ends with the same arrays, bit for bit, as an uninterrupted run.
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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from prefrl import checkpoints
from prefrl.config import field
from prefrl.data.buffers import RingState, make_ring_buffer
from prefrl.io import jsonable, load_npz
from prefrl.learners import sac
from prefrl.learners.ppo import RewardFn
from prefrl.loops import resume
from prefrl.loops.ppo import _environments
from prefrl.loops.ppo_files import EpisodeTracker
from prefrl.loops.sac_files import SAC_KIND, SACRunFiles, resumable
from prefrl.policies import Policy, policy_fn, random_policy
from prefrl.rollout import evaluate_policy

EnvFactory = Callable[[int, int], Any]  # (num_envs, seed) -> env with reset/rollout


@dataclasses.dataclass(frozen=True)
class SACTrainConfig:
    """The training run (algorithm settings live in :class:`prefrl.learners.sac.SACConfig`)."""

    task: str = field("run", "task name: run, run-backward, target-speed")
    task_param: tuple[str, ...] = field(
        (), "task parameter NAME=VALUE, repeatable (e.g. target_speed=3.0)", repeat=True)
    total_steps: int = field(300_000, "environment steps (transitions) to train for")
    num_envs: int = field(4, "parallel environments (B transitions per control step)")
    warmup_steps: int = field(5_000, "uniform-random steps that fill the buffer before learning")
    updates_per_step: int = field(1, "gradient updates per environment step (transition)")
    seed: int = field(0, "seed of the learner and the environments")
    log_every: int = field(1_000, "environment steps per metrics.jsonl line (a chunk)")
    eval_every: int = field(10_000, "evaluate every this many env steps (0: only at the end)")
    eval_episodes: int = field(8, "deterministic evaluation episodes (run in parallel)")
    checkpoint_every: int = field(
        10_000, "write last.npz every this many env steps (0: only at the end)")
    snapshots: tuple[float, ...] = field(
        (0.1, 0.25, 0.5, 1.0), "fractions of training at which to keep a policy snapshot")
    out_dir: str | None = field(None, "output folder (checkpoints, metrics.jsonl); None: none")
    resume: bool = field(True, "resume from out_dir/last.npz when it exists")
    progress: bool = field(True, "show a progress bar (on a terminal only)")
    num_threads: int | None = field(None, "physics threads (default: all cores)")

    def __post_init__(self) -> None:
        positive = {"total_steps": self.total_steps, "num_envs": self.num_envs,
                    "updates_per_step": self.updates_per_step, "log_every": self.log_every,
                    "eval_episodes": self.eval_episodes}
        if bad := {k: v for k, v in positive.items() if v < 1}:
            raise ValueError(f"these SAC run settings must be >= 1: {bad}")
        if bad := {k: v for k, v in {"warmup_steps": self.warmup_steps,
                                     "eval_every": self.eval_every,
                                     "checkpoint_every": self.checkpoint_every}.items() if v < 0}:
            raise ValueError(f"these SAC run settings must be >= 0: {bad}")
        if self.log_every % self.num_envs:
            raise ValueError(f"log_every = {self.log_every} must be a multiple of num_envs = "
                             f"{self.num_envs} (each control step adds num_envs transitions)")
        for name in ("total_steps", "eval_every", "checkpoint_every"):
            if getattr(self, name) % self.log_every:
                raise ValueError(f"{name} = {getattr(self, name)} must be a multiple of "
                                 f"log_every = {self.log_every}")
        if self.warmup_steps > self.total_steps:
            raise ValueError(f"warmup_steps = {self.warmup_steps} is longer than the run "
                             f"(total_steps = {self.total_steps}): SAC would never learn")
        if any(not 0 < f <= 1 for f in self.snapshots):
            raise ValueError(f"snapshot fractions must lie in (0, 1], got {self.snapshots}")

    def task_spec(self) -> Any:
        """The :class:`prefrl.envs.TaskSpec` of ``task`` with its ``task_param`` values."""
        from prefrl.envs import parse_task_params

        return parse_task_params(self.task, self.task_param)

    @property
    def iterations_per_chunk(self) -> int:
        return self.log_every // self.num_envs

    @property
    def num_chunks(self) -> int:
        return self.total_steps // self.log_every

    @property
    def warmup_iterations(self) -> int:
        return math.ceil(self.warmup_steps / self.num_envs)

    @property
    def updates_per_iteration(self) -> int:
        return self.num_envs * self.updates_per_step


@dataclasses.dataclass
class SACTrainResult:
    """What :func:`train` returns: the final state, per-chunk metrics, the evaluations."""

    state: sac.SACState
    history: list[dict[str, Any]]
    evaluations: list[dict[str, Any]]
    env_steps: int
    wall_s: float
    out_dir: Path | None


# --------------------------------------------------------------------------- jitted steps


class SACSteps(NamedTuple):
    """A run's jitted pieces (:func:`make_steps`; shared by runs of the same settings)."""

    learner: Any
    actor: Any  # the actor module: Policy(actor.apply, state.actor_params)
    init: Callable[[jax.Array], tuple[sac.SACState, RingState]]
    add: Callable[[RingState, sac.Transition], RingState]
    learn: Callable[..., tuple[sac.SACState, RingState, dict[str, jax.Array]]]


def _example(obs_dim: int, act_dim: int) -> sac.Transition:
    return sac.Transition(jnp.zeros(obs_dim, jnp.float32), jnp.zeros(act_dim, jnp.float32),
                          jnp.zeros((), jnp.float32), jnp.zeros(obs_dim, jnp.float32),
                          jnp.zeros((), bool))


def make_steps(config: sac.SACConfig, obs_dim: int, act_dim: int, capacity: int,
               updates: int, reward_fn: RewardFn | None = None) -> SACSteps:
    """``init(key) -> (state, buffer)``, ``add`` and ``learn`` of one iteration, jitted.

    ``learn(state, buffer, items [B, …], key) -> (state, buffer, metrics)``:
    add ``items``, then ``updates`` SAC updates on batches drawn with
    ``fold_in(key, j)``; metrics are averaged over them (``nonfinite``: any).
    The buffer is donated (written in place); the state is not, since its
    ``reward_params`` may be arrays the caller keeps.
    """
    learner = sac.make(config, obs_dim, act_dim, reward_fn=reward_fn)
    ring = make_ring_buffer(capacity)

    def init(key: jax.Array) -> tuple[sac.SACState, RingState]:
        return learner.init(key), ring.init(_example(obs_dim, act_dim))

    def add(buffer: RingState, items: sac.Transition) -> RingState:
        return ring.add(buffer, items)[0]

    def learn(state: sac.SACState, buffer: RingState, items: sac.Transition, key: jax.Array):
        buffer = add(buffer, items)

        def one(state: sac.SACState, j: jax.Array):
            batch = ring.sample(buffer, jax.random.fold_in(key, j), config.batch_size)
            return learner.update(state, batch)

        state, metrics = jax.lax.scan(one, state, jnp.arange(updates))
        nonfinite = jnp.any(metrics.pop("nonfinite"))
        return state, buffer, {**jax.tree.map(jnp.mean, metrics), "nonfinite": nonfinite}

    return SACSteps(learner=learner, actor=sac.make_networks(act_dim, config.hidden).actor,
                  init=jax.jit(init), add=jax.jit(add, donate_argnums=0),
                  learn=jax.jit(learn, donate_argnums=1))


@functools.lru_cache(maxsize=8)
def _cached_steps(*spec: Any) -> SACSteps:
    return make_steps(*spec)


def _steps(*spec: Any) -> SACSteps:
    # Runs of the same settings (seeds of a bench, a resumed run) compile once.
    try:
        return _cached_steps(*spec)
    except TypeError:  # an unhashable reward_fn: compile for this run only
        return make_steps(*spec)


# --------------------------------------------------------------------------- training


def train(
    train_config: SACTrainConfig,
    config: sac.SACConfig,
    *,
    env_factory: EnvFactory | None = None,
    task_header: Mapping[str, Any] | None = None,
    target_speed: float | None = None,
    reward_fn: RewardFn | None = None,
    reward_params: Any = None,
    reward_name: str = "true",
    log: Callable[[str], None] | None = None,
    stop_after_chunks: int | None = None,
) -> SACTrainResult:
    """Train SAC; returns the final state, per-chunk metrics and evaluations.

    ``env_factory(num_envs, seed)`` builds the training and evaluation
    environments (default: :class:`prefrl.rollout.BatchedEnv` on
    ``train_config.task``). ``reward_fn``/``reward_params`` go to
    :func:`prefrl.learners.sac.make` / the state (``reward_name`` is recorded).
    ``stop_after_chunks`` stops early, as if killed — for tests of resume.
    Raises ``ValueError`` on non-finite rewards, ``NonFiniteError`` on a
    diverged update.
    """
    tc = train_config
    env_factory, task_header, target_speed = _environments(tc, env_factory, task_header,
                                                           target_speed)
    env = env_factory(tc.num_envs, tc.seed)
    obs_dim = int(env.obs_dim if hasattr(env, "obs_dim") else env.task.obs_dim)
    act_dim = int(env.act_dim if hasattr(env, "act_dim") else env.task.act_dim)
    capacity = min(config.buffer_size, tc.total_steps)  # never more rows than the run fills
    steps = _steps(config, obs_dim, act_dim, capacity, tc.updates_per_iteration, reward_fn)
    files = SACRunFiles(Path(tc.out_dir) if tc.out_dir else None, config, tc, obs_dim, act_dim,
                        task_header, reward_name)
    state, buffer = steps.init(jax.random.key(tc.seed))
    state = state.replace(reward_params=reward_params)
    eval_env = None
    try:
        if (done := _finished(files, state, buffer, log)) is not None:
            return done
        eval_env = env_factory(tc.eval_episodes, tc.seed + 1_000_003)
        tracker = EpisodeTracker(tc.num_envs)
        envs = {"env": env, "eval_env": eval_env}
        start, restored = 0, False
        if (opened := files.open_last()) is not None:
            arrays, header = opened
            template = resumable(state, buffer)
            back = resume.restore_device_state(template, arrays, str(files.out_dir / "last.npz"))
            state, buffer = back["learner"].replace(reward_params=reward_params), back["buffer"]
            start = int(header["progress"]["chunk"])
            restored = (all(hasattr(e, "load_state_dict") for e in envs.values())
                        and resume.has_env_arrays(arrays, envs) and "tracker.running" in arrays)
            if restored:
                resume.restore_envs(envs, arrays)
                tracker.running = np.array(arrays["tracker.running"], np.float64)
            elif start:
                # Fresh environments, seeded differently from the interrupted run's.
                env = envs["env"] = env_factory(tc.num_envs, tc.seed + 7919 * start)
            if log:
                log(f"resuming {files.out_dir / 'last.npz'} at chunk {start}/{tc.num_chunks} "
                    f"({start * tc.log_every} env steps)"
                    + ("" if restored else " (fresh environments: they have no saved state)"))
        if not restored:
            env.reset()
        return _run(tc, config, steps, files, env, eval_env, tracker, state, buffer, start,
                    target_speed, log, stop_after_chunks)
    finally:
        for e in (env, eval_env):
            if e is not None and hasattr(e, "close"):
                e.close()


def _finished(files: SACRunFiles, state: sac.SACState, buffer: RingState, log: Any
              ) -> SACTrainResult | None:
    """The saved result of a finished run (``final.npz`` exists), which is not trained again."""
    out = files.out_dir
    if not (files.tc.resume and out is not None and (out / "final.npz").exists()
            and (out / "last.npz").exists()):
        return None
    arrays, header = load_npz(out / "last.npz", kind=SAC_KIND)
    files.check_same_run(header, out / "last.npz")
    back = resume.restore_device_state(resumable(state, buffer), arrays, str(out / "last.npz"))
    if log:
        log(f"{out} holds a finished run ({out / 'final.npz'}); nothing to train "
            "(another out_dir or --resume false trains again)")
    return SACTrainResult(
        state=back["learner"].replace(reward_params=state.reward_params),
        history=resume.read_jsonl(out / "metrics.jsonl"),
        evaluations=resume.read_jsonl(out / "evals.jsonl"),
        env_steps=files.tc.total_steps, wall_s=0.0, out_dir=out)


def _run(tc: SACTrainConfig, config: sac.SACConfig, steps: SACSteps, files: SACRunFiles,
         env: Any, eval_env: Any, tracker: EpisodeTracker, state: sac.SACState,
         buffer: RingState, start: int, target_speed: float | None, log: Any,
         stop_after_chunks: int | None) -> SACTrainResult:
    """Chunks ``start + 1 … num_chunks``: the host loop proper."""
    random_actions = random_policy(files.act_dim)
    act_key, learn_key = jax.random.key(tc.seed + 1), jax.random.key(tc.seed + 3)

    def run_eval(chunk: int) -> dict[str, Any]:
        actor = policy_fn(Policy(steps.actor.apply, state.actor_params), deterministic=True)
        result = evaluate_policy(eval_env, actor, jax.random.fold_in(jax.random.key(tc.seed + 2),
                                                                     chunk),
                                 target_speed=target_speed, discount=config.discount)
        result.update(chunk=chunk, env_steps=chunk * tc.log_every)
        return result

    bar = None
    if tc.progress and sys.stderr.isatty():  # a bar only on a terminal: logs stay clean
        from tqdm import tqdm

        bar = tqdm(total=tc.total_steps, initial=start * tc.log_every, unit="step",
                   dynamic_ncols=True)
    history: list[dict[str, Any]] = []
    evaluations: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    chunk = start
    try:
        for chunk in range(start + 1, tc.num_chunks + 1):
            if stop_after_chunks is not None and chunk > stop_after_chunks:
                chunk -= 1
                break
            t0 = time.perf_counter()
            chunk_metrics = []
            for i in range((chunk - 1) * tc.iterations_per_chunk + 1,
                           chunk * tc.iterations_per_chunk + 1):
                warm = i <= tc.warmup_iterations
                acting = random_actions if warm else policy_fn(
                    Policy(steps.actor.apply, state.actor_params))
                traj = env.rollout(acting, 1, jax.random.fold_in(act_key, i))
                reward = np.asarray(traj.reward)
                if not np.all(np.isfinite(reward)):
                    raise ValueError(f"non-finite reward at env step {i * tc.num_envs}: {reward}")
                tracker.add(reward, np.asarray(traj.terminated) | np.asarray(traj.truncated))
                items = sac.Transition(traj.obs[0], traj.action[0], traj.reward[0],
                                       traj.next_obs[0], traj.terminated[0])
                if warm:
                    buffer = steps.add(buffer, items)
                else:
                    state, buffer, metrics = steps.learn(state, buffer, items,
                                                         jax.random.fold_in(learn_key, i))
                    chunk_metrics.append(metrics)
            record = _chunk_record(chunk_metrics, chunk)
            episodes = tracker.pop()
            if episodes:
                record["train_episode_return"] = float(np.mean(episodes))
                record["train_episodes"] = len(episodes)
            record.update(chunk=chunk, env_steps=chunk * tc.log_every, updates=int(state.step),
                          buffer_size=int(buffer.count), chunk_s=time.perf_counter() - t0)
            result = None
            if (tc.eval_every and (chunk * tc.log_every) % tc.eval_every == 0) or (
                    chunk == tc.num_chunks):
                result = run_eval(chunk)
                evaluations.append(result)
                record["eval_return"] = result["mean_return"]
                if log:
                    log(json.dumps({k: v for k, v in result.items() if k != "returns"}))
            history.append(record)
            files.append(record, result)
            files.after_chunk(chunk, state, buffer, steps.actor, result,
                              {"env": env, "eval_env": eval_env}, tracker)
            if bar is not None:
                bar.update(tc.log_every)
                postfix = {k: f"{record[k]:.1f}" for k in ("train_episode_return", "eval_return")
                           if k in record}
                bar.set_postfix(postfix)
        if (files.out_dir is not None and chunk == tc.num_chunks
                and not (files.out_dir / "final.npz").exists()):  # killed after last.npz
            files.save_final(steps.actor, state, chunk, run_eval(chunk))
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t_start
    if log and history:
        steps_done = len(history) * tc.log_every
        log(f"{steps_done} env steps in {wall:.1f} s ({steps_done / max(wall, 1e-9):.0f} "
            f"steps/s, {int(state.step)} updates)")
    return SACTrainResult(state=state, history=history, evaluations=evaluations,
                          env_steps=chunk * tc.log_every, wall_s=wall, out_dir=files.out_dir)


def _chunk_record(chunk_metrics: list[dict[str, jax.Array]], chunk: int) -> dict[str, Any]:
    """The chunk's update metrics averaged (none during warm-up); refuses a diverged update."""
    if not chunk_metrics:
        return {}
    host = jax.device_get(chunk_metrics)
    if any(bool(m["nonfinite"]) for m in host):
        bad = sorted({k for m in host for k, v in m.items()
                      if k != "nonfinite" and not np.isfinite(v)})
        raise checkpoints.NonFiniteError(
            f"SAC update in chunk {chunk} produced non-finite {', '.join(bad)}: lower "
            "--learning-rate, or check the reward")
    return jsonable({k: np.mean([m[k] for m in host]) for k in host[0]
                         if k != "nonfinite"})


__all__ = ["SAC_KIND", "SACRunFiles", "SACSteps", "SACTrainConfig", "SACTrainResult", "make_steps",
           "train"]
