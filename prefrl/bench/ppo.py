"""``prefrl bench ppo``: PPO on half-cheetah ``run``, 1 M env steps per seed, several seeds.

The seeds train together in one process (:func:`prefrl.loops.ppo_seeds.train_seeds`:
one batched environment of S × B, one vmapped update); in the same run, the
first seed alone (:func:`prefrl.loops.ppo.train`) gives the 1-seed wall-clock,
so the JSON line reports S seeds against 1 (``seeds_vs_one_wall_ratio``) on
the same machine state. ``--separate`` runs the seeds one after another
instead (the single-seed loop for each).

For each seed: the final deterministic evaluation return (mean over
``--eval-episodes`` episodes of 1000 steps), the mean return of the last
training episodes (stochastic policy, as CleanRL reports it), and the
rollout and update seconds (shared by the seeds of one batch). Over seeds:
the IQM with a 95 % bootstrap interval.

Reference point (not re-run here: it needs ~25 min per run): CleanRL's
``ppo_continuous_action.py`` reports 1442 ± 46 on HalfCheetah-v4 after 1 M
steps (CleanRL docs, PPO continuous-action benchmark), ~25 min per run on CPU.
Targets: that return in ≤ 5 min a seed (``target_met``), and ≤ 30 s per seed
with IQM ≥ 5 500 on ``run`` (``fast_target_met``).

Results go to ``experiments/bench/results/ppo.json``; the last line printed
is one JSON object.

``--backend mjx`` (``prefrl.bench._mjx``): the seeds train as one
``jit(vmap(train))`` call on MJX on ``jax.devices()[0]`` (rollouts, reward,
GAE and updates, ``lax.scan`` over updates); reports compile and run time,
env-steps/s of the whole training loop, each seed's final return on the C
engine, and, in the same run, C-engine PPO's env-steps/s over
``--cpu-steps`` for the ratio; writes ``ppo_mjx.json``. A GPU run::

    prefrl bench ppo --backend mjx --num-envs 2048 --rollout-steps 32 \
        --num-minibatches 32 --num-epochs 4 --total-steps 20000000 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from prefrl.config import parse_seed, positive_int

CLEANRL_RETURN = 1442.0
CLEANRL_RETURN_STD = 46.0
TARGET_WALL_S = 300.0
FAST_WALL_S = 30.0
FAST_IQM = 5500.0
RESULTS = Path("experiments/bench/results/ppo.json")


def _run_record(seed: int, result: Any, wall: float, S: int) -> dict[str, Any]:
    final = result.evaluations[-1]
    train_returns = [r["train_episode_return"] for r in result.history
                     if "train_episode_return" in r]
    return {
        "seed": seed,
        "env_steps": result.env_steps,
        "wall_s_per_seed": round(wall / S, 1),
        "rollout_s": round(float(sum(r["rollout_s"] for r in result.history)), 1),
        "update_s": round(float(sum(r["update_s"] for r in result.history)), 1),
        "eval_return": round(final["mean_return"], 1),
        "eval_return_std": round(final["std_return"], 1),
        "last_train_episode_return": round(train_returns[-1], 1) if train_returns else None,
        "beats_cleanrl_return": final["mean_return"] >= CLEANRL_RETURN,
    }


def main(argv: list[str] | None = None) -> int:
    from prefrl.evaluation import bootstrap_ci
    from prefrl.io import atomic_write_json
    from prefrl.jax_setup import jax_settings
    from prefrl.learners import ppo
    from prefrl.loops import ppo as training
    from prefrl.loops import ppo_seeds

    p = argparse.ArgumentParser(prog="prefrl bench ppo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--total-steps", type=positive_int, default=1_000_000)
    p.add_argument("--seeds", type=parse_seed, nargs="+", default=[0, 1, 2])
    p.add_argument("--task", default="run")
    p.add_argument("--num-envs", type=positive_int, default=64)
    p.add_argument("--rollout-steps", type=positive_int, default=64)
    p.add_argument("--num-minibatches", type=positive_int, default=32)
    p.add_argument("--eval-episodes", type=positive_int, default=8)
    p.add_argument("--separate", action="store_true",
                   help="train the seeds one after another (no 1-seed comparison run)")
    p.add_argument("--out", default=None, help=f"results file (JSON; default {RESULTS}, "
                   "or ppo_mjx.json beside it for --backend mjx)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--backend", choices=("cpu", "mjx"), default="cpu",
                   help="cpu: C-engine rollouts, jitted update; mjx: jit(vmap(train)) on MJX")
    p.add_argument("--num-epochs", type=positive_int, default=ppo.PPOConfig.num_epochs)
    p.add_argument("--mjx-solver", choices=("gpu", "c"), default="gpu",
                   help="MJX solver options: gpu (prefrl.envs.mjx_options.GPU) or MuJoCo C's")
    p.add_argument("--cpu-steps", type=positive_int, default=262_144,
                   help="--backend mjx: env steps of the C-engine PPO run timed for the ratio")
    args = p.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds must be distinct, got {args.seeds}")
    if args.out is None:
        args.out = str(RESULTS.with_name("ppo_mjx.json" if args.backend == "mjx" else RESULTS.name))
    if args.backend == "mjx":
        from prefrl.bench import _mjx

        return _mjx.ppo_main(args)

    ppo_config = ppo.PPOConfig(num_minibatches=args.num_minibatches, num_epochs=args.num_epochs)

    def config(seed: int) -> Any:
        return training.TrainConfig(
            task=args.task, total_steps=args.total_steps, num_envs=args.num_envs,
            rollout_steps=args.rollout_steps, seed=seed, eval_every=0,
            eval_episodes=args.eval_episodes, checkpoint_every=0, out_dir=None,
            progress=args.progress)

    def timed(fn: Any) -> tuple[Any, float]:
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0  # includes jit compilation and env construction

    runs: list[dict[str, Any]] = []
    one_seed_wall = None
    if args.separate:
        for seed in args.seeds:
            result, wall = timed(lambda s=seed: training.train(config(s), ppo_config))
            runs.append(_run_record(seed, result, wall, 1))
            print(json.dumps(runs[-1]), flush=True)
        seeds_wall = sum(r["wall_s_per_seed"] for r in runs)
    else:
        single, one_seed_wall = timed(lambda: training.train(config(args.seeds[0]), ppo_config))
        print(json.dumps({"one_seed": _run_record(args.seeds[0], single, one_seed_wall, 1)}),
              flush=True)
        results, seeds_wall = timed(lambda: ppo_seeds.train_seeds(
            config(args.seeds[0]), ppo_config, args.seeds))
        for seed, result in zip(args.seeds, results, strict=True):
            runs.append(_run_record(seed, result, seeds_wall, len(args.seeds)))
            print(json.dumps(runs[-1]), flush=True)

    returns = np.array([r["eval_return"] for r in runs])
    per_seed = seeds_wall / len(args.seeds)
    return_iqm, low, high = bootstrap_ci(returns, seed=0)
    summary = {
        "bench": "ppo",
        "mode": "separate" if args.separate else "seeds_in_one_batch",
        "task": args.task,
        "total_steps": args.total_steps,
        "num_envs": args.num_envs,
        "rollout_steps": args.rollout_steps,
        "ppo_config": {k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in ppo_config.__dict__.items()},
        "seeds": args.seeds,
        "runs": runs,
        "iqm_eval_return": round(float(return_iqm), 1),
        "iqm_eval_return_ci95": [round(float(low), 1), round(float(high), 1)],
        "mean_eval_return": round(float(returns.mean()), 1),
        "seeds_wall_s": round(seeds_wall, 1),
        "wall_s_per_seed": round(per_seed, 1),
        "one_seed_wall_s": None if one_seed_wall is None else round(one_seed_wall, 1),
        "seeds_vs_one_wall_ratio": (None if one_seed_wall is None
                                    else round(seeds_wall / one_seed_wall, 3)),
        "env_steps_per_s": round(len(runs) * runs[0]["env_steps"] / seeds_wall, 1),
        "reference": {
            "cleanrl_halfcheetah_v4_1M_return": CLEANRL_RETURN,
            "cleanrl_return_std": CLEANRL_RETURN_STD,
            "cleanrl_wall_s_per_run_approx": 1500,
            "measured_here": False,
        },
        "target_met": bool(all(r["beats_cleanrl_return"] for r in runs)
                           and per_seed <= TARGET_WALL_S),
        "fast_target_met": bool(per_seed <= FAST_WALL_S and return_iqm >= FAST_IQM),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_1min": round(os.getloadavg()[0], 2),
                    "jax_settings": jax_settings()},
    }
    atomic_write_json(args.out, summary)
    print(json.dumps(summary))
    return 0
