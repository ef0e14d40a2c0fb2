"""``--backend mjx`` of ``prefrl bench rollout`` and ``prefrl bench ppo``.

Both measure MJX on ``jax.devices()[0]`` (a GPU when one is visible, else the
CPU) and, in the same run, the C engine on this machine's CPU cores, so the
ratio compares two backends on one machine state. Compile time is measured
apart from run time (``lower(...).compile()``): on a GPU a run is seconds,
its compile tens of seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import jax
import numpy as np

from prefrl.io import atomic_write_json
from prefrl.jax_setup import jax_settings


def device_info() -> dict[str, Any]:
    """The device MJX ran on and the machine around it."""
    device = jax.devices()[0]
    return {
        "device": str(device),
        "device_kind": getattr(device, "device_kind", device.platform),
        "platform": device.platform,
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "jax": jax.__version__,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "jax_settings": jax_settings(),
    }


def _solver(name: str) -> Any:
    from prefrl.envs.mjx_options import C_ENGINE, GPU

    return GPU if name == "gpu" else C_ENGINE


def _compile(fn: Any, *args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def _rollout_row(model: Any, policy: Any, B: int, args: argparse.Namespace, threads: int
                 ) -> dict[str, Any]:
    """One batch size: MJX (compiled apart, then timed) and ``BatchedEnv`` at the same B."""
    from prefrl.bench.rollout import bench_batched_env, time_runs
    from prefrl.envs import mjx as mjx_env

    T, R = args.steps, args.repeats

    def run(state: Any, key: jax.Array) -> Any:
        # Only the final state and the returns leave the device: XLA drops the rest.
        state, traj = mjx_env.rollout("run", policy, state, T, key, model)
        return state, traj.reward.sum(axis=0)

    state = jax.jit(lambda k: mjx_env.reset_batch(model, "run", k, B, forward=False))(
        jax.random.key(args.seed))
    compiled, compile_s = _compile(run, state, jax.random.key(0))
    jax.block_until_ready(compiled(state, jax.random.key(1)))  # warm-up
    keys = iter(jax.random.split(jax.random.key(2), R))
    mjx_t = time_runs(lambda: jax.block_until_ready(compiled(state, next(keys))), R)
    cpu_t = bench_batched_env(policy, B, args.cpu_steps, threads, R, args.seed)
    mjx_sps, cpu_sps = B * T / mjx_t["wall"], B * args.cpu_steps / cpu_t["wall"]
    return {
        "num_envs": B, "mjx_env_steps_per_s": round(mjx_sps, 1),
        "c_engine_env_steps_per_s": round(cpu_sps, 1),
        "mjx_vs_c_engine": round(mjx_sps / cpu_sps, 3), "mjx_compile_s": round(compile_s, 1),
        "mjx_times_s": [round(x, 4) for x in mjx_t["times"]],
        "c_engine_times_s": [round(x, 4) for x in cpu_t["times"]],
    }


def rollout_main(args: argparse.Namespace) -> int:
    """MJX rollouts of the 2×64 policy at each ``--num-envs`` B vs ``BatchedEnv`` at the same B."""
    from prefrl.rollout import policy_from_params, require_mjx

    require_mjx()
    from prefrl.envs import mjx as mjx_env
    from prefrl.networks import GaussianPolicy

    net = GaussianPolicy(action_dim=6, hidden=(64, 64))
    params = net.init(jax.random.key(args.seed), np.zeros((1, 17), np.float32))
    policy = policy_from_params(net.apply, params)
    model = mjx_env.make_model(_solver(args.mjx_solver))
    threads = args.threads or os.cpu_count() or 1
    rows = []
    for B in args.num_envs:
        rows.append(_rollout_row(model, policy, B, args, threads))
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "bench": "rollout", "backend": "mjx", "results": rows, "steps": args.steps,
        "c_engine_steps": args.cpu_steps, "c_engine_threads": threads, "repeats": args.repeats,
        "statistic": "median wall time", "solver": args.mjx_solver,
        "policy": "GaussianPolicy hidden=(64, 64), sampled, inside the scan",
        **{f"mjx_env_steps_per_s@{r['num_envs']}": r["mjx_env_steps_per_s"] for r in rows},
        "machine": device_info(),
    }
    atomic_write_json(args.out, result)
    print(json.dumps(result))
    return 0


def ppo_main(args: argparse.Namespace) -> int:
    """``jit(vmap(train))`` over ``--seeds`` on MJX (``jit(train)`` for one); C-engine PPO for the
    steps/s ratio."""
    from prefrl.rollout import require_mjx

    require_mjx()
    from prefrl.evaluation import bootstrap_ci
    from prefrl.learners import ppo
    from prefrl.loops import ppo as training
    from prefrl.loops import ppo_mjx

    ppo_config = ppo.PPOConfig(num_minibatches=args.num_minibatches, num_epochs=args.num_epochs)
    tc = training.TrainConfig(task=args.task, total_steps=args.total_steps,
                              num_envs=args.num_envs, rollout_steps=args.rollout_steps,
                              seed=args.seeds[0], eval_every=0,
                              eval_episodes=args.eval_episodes, checkpoint_every=0,
                              progress=False)
    trainer = ppo_mjx.make_trainer(tc, ppo_config, solver=_solver(args.mjx_solver))
    S = len(args.seeds)
    keys = jax.vmap(jax.random.key)(np.asarray(args.seeds))
    inputs = jax.tree.map(lambda x: np.broadcast_to(x, (S,)),
                          ppo_mjx.default_inputs(ppo_config))
    # One seed runs unvmapped: on XLA:CPU a vmap over one seed measured 1.8x slower.
    fn, call = ((trainer.train, (keys[0], ppo_mjx.default_inputs(ppo_config))) if S == 1
                else (jax.vmap(trainer.train), (keys, inputs)))
    compiled, compile_s = _compile(fn, *call)
    t0 = time.perf_counter()
    ts, metrics = jax.block_until_ready(compiled(*call))
    wall = time.perf_counter() - t0
    if S == 1:
        ts, metrics = jax.tree.map(lambda x: x[None], (ts, metrics))
    env_steps = trainer.num_updates * tc.steps_per_update
    runs = []
    for i, seed in enumerate(args.seeds):
        state = jax.tree.map(lambda x, i=i: x[i], ts.ppo)
        evaluation = ppo_mjx.evaluate(trainer, state, tc, ppo_config.discount)
        curve = np.asarray(metrics["train_episode_return"][i])
        runs.append({"seed": seed, "eval_return": round(evaluation["mean_return"], 1),
                     "eval_return_std": round(evaluation["std_return"], 1),
                     "last_train_episode_return": (round(float(curve[np.isfinite(curve)][-1]), 1)
                                                   if np.isfinite(curve).any() else None)})
        print(json.dumps(runs[-1]), flush=True)
    # The same loop settings on the C engine, one seed, a shorter budget: the steps/s ratio.
    cpu_tc = training.TrainConfig(task=args.task, total_steps=args.cpu_steps,
                                  num_envs=args.num_envs, rollout_steps=args.rollout_steps,
                                  seed=args.seeds[0], eval_every=0, eval_episodes=1,
                                  checkpoint_every=0, progress=False)
    cpu = training.train(cpu_tc, ppo_config)
    iqm, low, high = bootstrap_ci([r["eval_return"] for r in runs], seed=0)  # as bench ppo
    cpu_sps = cpu.env_steps / cpu.wall_s
    mjx_sps = S * env_steps / wall
    summary = {
        "bench": "ppo", "backend": "mjx", "vmapped_seeds": S > 1, "task": args.task,
        "seeds": args.seeds,
        "total_steps_per_seed": env_steps, "num_envs": args.num_envs,
        "rollout_steps": args.rollout_steps, "num_updates": trainer.num_updates,
        "ppo_config": {k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in ppo_config.__dict__.items()},
        "solver": args.mjx_solver, "runs": runs,
        "mean_eval_return": round(float(np.mean([r["eval_return"] for r in runs])), 1),
        "iqm_eval_return": round(float(iqm), 1),
        "iqm_eval_return_ci95": [round(float(low), 1), round(float(high), 1)],
        "compile_s": round(compile_s, 1), "train_wall_s": round(wall, 2),
        "env_steps_per_s": round(mjx_sps, 1),
        "c_engine": {"env_steps": cpu.env_steps, "wall_s": round(cpu.wall_s, 2),
                     "env_steps_per_s": round(cpu_sps, 1), "threads": os.cpu_count(),
                     "loop": "prefrl.loops.ppo.train, same B, T and PPO config, one seed"},
        "mjx_vs_c_engine": round(mjx_sps / cpu_sps, 3),
        "machine": device_info(),
    }
    atomic_write_json(args.out, summary)
    print(json.dumps(summary))
    return 0
