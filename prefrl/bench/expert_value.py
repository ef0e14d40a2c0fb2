"""``prefrl bench expert_value``: how good is V_E as the regret oracle's V*? (docs/design.md §3)

The regret oracle scores a segment with ``Σ γ^t r_t + γ^k V_E(s_k) − V_E(s_0)``,
where V_E is the critic of a PPO expert trained on the true reward. This
bench measures V_E against the Monte-Carlo discounted return of the same
expert from the same states:

1. roll the expert (stochastic, as V_E estimates; or ``--deterministic``) in
   ``--envs`` environments from fresh resets, with the time limit lifted so
   that every state has ``--horizon`` further steps;
2. at the probe times ``--times`` (from rest to cruising), record ``V_E(s_t)``
   and ``G_t = Σ_{k<H} γ^k r_{t+k} + γ^H V_E(s_{t+H})`` (the tail term is
   ≤ γ^H·max|V| and reported separately; ``--no-tail`` drops it);
3. report Pearson and Spearman correlation, mean error (bias), mean absolute
   error and the error relative to the spread of G.

PPO bootstraps at the 1000-step time limit, so V_E estimates the
infinite-horizon discounted return, which is what the probes measure.
The last line printed is one JSON object; results also go to
``experiments/bench/results/expert_value_<task>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from prefrl.config import parse_seed, positive_int


def value_mc_check(
    checkpoint_path: str | Path,
    task: str | None = None,
    *,
    num_envs: int = 16,
    horizon: int = 500,
    times: tuple[int, ...] = (0, 5, 10, 20, 50, 100, 200, 400, 700, 1000),
    seed: int = 0,
    deterministic: bool = False,
    tail: bool = True,
    state_checkpoint: str | Path | None = None,
) -> dict[str, Any]:
    """Correlation of ``V_E(s)`` with the expert's Monte-Carlo discounted return from ``s``.

    Returns a dict with ``pearson``, ``spearman``, ``bias`` (mean V − G),
    ``mae``, ``relative_mae`` (MAE / std of G), ``discount``, the per-probe
    arrays ``value``/``mc_return`` and the settings.

    With ``state_checkpoint`` (e.g. a 10 % snapshot), the states come from
    that policy: it acts until each probe time and the expert from then on —
    one rollout per probe time — so V_E is checked on the off-expert states
    the regret oracle also labels.
    """
    from prefrl import checkpoints
    from prefrl.envs import make_task
    from prefrl.evaluation import pearson, spearman
    from prefrl.io import load_npz
    from prefrl.rollout import BatchedEnv

    if task is None:
        _, header = load_npz(checkpoint_path, kind=checkpoints.PPO_KIND)
        task = header["task"]
    spec = make_task(task)
    times = tuple(sorted(set(int(t) for t in times)))
    if not times or times[0] < 0 or horizon < 1:
        raise ValueError("times must be >= 0 and horizon >= 1")
    num_steps = times[-1] + horizon + 1
    # Lift the time limit so every probe has `horizon` steps of future.
    long_task = dataclasses.replace(spec, episode_length=num_steps + 1)
    policy_fn, info = checkpoints.load_policy(
        checkpoint_path, deterministic=deterministic, obs_dim=spec.obs_dim
    )
    value_fn = checkpoints.load_value_fn(checkpoint_path, obs_dim=spec.obs_dim)
    gamma = float(info["discount"])
    weights = gamma ** np.arange(horizon)
    values, returns, tails = [], [], []

    def probe(traj: Any, t: int) -> None:
        reward = np.asarray(traj.reward, np.float64)  # [T, B]
        obs = np.asarray(traj.obs)
        g = (weights[:, None] * reward[t : t + horizon]).sum(axis=0)
        tail_v = gamma**horizon * np.asarray(value_fn(obs[t + horizon]), np.float64)
        values.append(np.asarray(value_fn(obs[t]), np.float64))
        returns.append(g + tail_v if tail else g)
        tails.append(tail_v)

    with BatchedEnv(long_task, num_envs=num_envs, seed=seed, dtype=np.float32) as env:
        if state_checkpoint is None:
            env.reset()
            traj = env.rollout(policy_fn, num_steps, jax.random.key(seed))
            for t in times:
                probe(traj, t)
        else:
            behaviour_fn, _ = checkpoints.load_policy(
                state_checkpoint, deterministic=False, obs_dim=spec.obs_dim
            )
            for t in times:
                env.reset(seed=seed + 1 + t)
                head = env.rollout(behaviour_fn, t, jax.random.key(seed + t)) if t else None
                traj = env.rollout(policy_fn, horizon + 1, jax.random.key(seed + 7 * t + 3))
                del head
                probe(traj, 0)
    v = np.concatenate(values)
    g = np.concatenate(returns)
    err = v - g
    per_time = {
        str(t): {"value": float(np.mean(vs)), "mc_return": float(np.mean(gs))}
        for t, vs, gs in zip(times, values, returns, strict=True)
    }
    return {
        "checkpoint": str(checkpoint_path),
        "task": task,
        "discount": gamma,
        "horizon": horizon,
        "times": list(times),
        "num_envs": num_envs,
        "probes": int(v.size),
        "deterministic_policy": deterministic,
        "tail_bootstrap": tail,
        "state_checkpoint": None if state_checkpoint is None else str(state_checkpoint),
        "mean_abs_tail": float(np.mean(np.abs(np.concatenate(tails)))),
        "pearson": pearson(v, g),
        "spearman": spearman(v, g),
        "bias": float(err.mean()),
        "mae": float(np.abs(err).mean()),
        "std_mc_return": float(g.std()),
        "relative_mae": float(np.abs(err).mean() / (g.std() + 1e-12)),
        "mean_value": float(v.mean()),
        "mean_mc_return": float(g.mean()),
        "by_time": per_time,
    }


def main(argv: list[str] | None = None) -> int:
    from prefrl.io import atomic_write_json

    p = argparse.ArgumentParser(prog="prefrl bench expert_value", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="experiments/experts/run/final.npz")
    p.add_argument("--task", default=None)
    p.add_argument("--envs", type=positive_int, default=16)
    p.add_argument("--horizon", type=positive_int, default=500)
    p.add_argument("--times", type=int, nargs="*",
                   default=[0, 5, 10, 20, 50, 100, 200, 400, 700, 1000])
    p.add_argument("--seed", type=parse_seed, default=0)
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--no-tail", action="store_true")
    p.add_argument("--state-checkpoint", default=None,
                   help="visit states with this policy until each probe time, then the expert")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    result = value_mc_check(
        args.checkpoint, args.task, num_envs=args.envs, horizon=args.horizon,
        times=tuple(args.times), seed=args.seed, deterministic=args.deterministic,
        tail=not args.no_tail, state_checkpoint=args.state_checkpoint,
    )
    out = args.out or f"experiments/bench/results/expert_value_{result['task']}.json"
    atomic_write_json(out, result)
    print(json.dumps(result))
    return 0
