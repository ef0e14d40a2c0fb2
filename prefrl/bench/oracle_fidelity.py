"""``prefrl bench oracle_fidelity``: regret labels from the critic V_E against MC V̂ (issue #24).

Per task (``run``, ``target-speed``, ``run-backward``) and per source of
segments (the random policy, two expert snapshots — by default the ones at
10 % and 50 % of training — and the expert, all stochastic):

1. roll ``--segments / 16`` … 16 environments for ``--warmup`` + the steps
   that give ``--segments`` segments of ``--length`` steps (stride = length,
   so consecutive segments share endpoints);
2. compute V̂ of every distinct endpoint (s_0, and s_k one step from s_{k-1},
   :mod:`prefrl.oracles_mc`) from ``--rollouts`` R expert rollouts of
   ``--horizon`` H steps each, plus γ^H·V_E(s_H);
3. report: Pearson of V_E against V̂ (all R) on those states; for every M in
   ``--ms`` (2M ≤ R), V̂'s mean standard error at M, the agreement of
   deterministic regret labels on ``--pairs`` random pairs between two
   independent M-rollout estimates (rollouts 0..M−1 against M..2M−1) and
   between the critic and one M-rollout estimate; with all R: the
   critic–MC label agreement and the spread of the critic's error in a
   segment's regret against the regret's own spread; the cost per label (env
   steps and seconds, measured).

Also per task, on 64 states of the first snapshot: the error of the
reconstructed s_k against the recorded ``next_obs[-1]``, and what the lost
solver warm-start and root x = 0 change in one rollout's return (same policy
noise), against two independent rollouts' difference.

Writes ``experiments/bench/results/oracle_fidelity.json`` and a Markdown
table beside it (``oracle_fidelity.md``); the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

TASKS = ("run", "target-speed", "run-backward")
NUM_ENVS = 16


def _agreement(a: np.ndarray, b: np.ndarray, first: np.ndarray, second: np.ndarray) -> float:
    """Fraction of pairs on which deterministic labels from scores a and b agree."""
    la, lb = np.sign(a[first] - a[second]), np.sign(b[first] - b[second])
    return float(np.mean(la == lb))


def _scores(reward: np.ndarray, v_0: np.ndarray, v_k: np.ndarray, gamma: float) -> np.ndarray:
    """``[N]`` regret-model scores ``Σ γ^t r_t + γ^k V(s_k) − V(s_0)`` (float64)."""
    k = reward.shape[1]
    return reward @ gamma ** np.arange(k) + gamma**k * v_k - v_0


def source_segments(task: Any, checkpoint: str | None, *, segments: int, length: int,
                    warmup: int, seed: int) -> Any:
    """``segments`` segments of a (stochastic) policy, stride = length, after ``warmup`` steps."""
    from prefrl import checkpoints
    from prefrl.data.segments import segment
    from prefrl.policies import random_policy
    from prefrl.rollout import BatchedEnv

    per_env = -(-segments // NUM_ENVS)
    policy = (random_policy(task.act_dim) if checkpoint is None else checkpoints.load_policy(
        checkpoint, deterministic=False, obs_dim=task.obs_dim)[0])
    with BatchedEnv(task, num_envs=NUM_ENVS, seed=seed) as env:
        env.reset()
        traj = env.rollout(policy, warmup + per_env * length, jax.random.key(seed))
    traj = jax.tree.map(lambda x: x[warmup:], traj)
    pool = segment(traj, length, length)
    return jax.tree.map(lambda x: np.asarray(x)[:segments], pool)


def measure_source(pool: Any, expert: Any, env: Any, key: jax.Array, *, rollouts: int,
                   horizon: int, ms: tuple[int, ...], pairs: int) -> dict[str, Any]:
    """Critic against MC on one pool of segments (module docstring, step 2–3)."""
    from prefrl import oracles_mc
    from prefrl.data.queries import uniform_pairs
    from prefrl.evaluation import pearson
    from prefrl.rollout.batched import observation

    gamma, n = expert.discount, int(pool.obs.shape[0])
    ends = oracles_mc.endpoints_of(pool)
    used = np.arange(n)
    key_mc, key_pairs = jax.random.split(key)
    qpos, qvel, at_0, at_k, stepped = oracles_mc.endpoint_states(ends, used, env=env)
    start = time.perf_counter()
    values = oracles_mc.mc_values(expert, key_mc, qpos, qvel, rollouts=rollouts,
                                  horizon=horizon, env=env)
    seconds = time.perf_counter() - start
    v_critic = np.asarray(expert.value_fn(observation(qpos, qvel).astype(np.float32)),
                          np.float64)
    first, second = (np.asarray(x) for x in uniform_pairs(key_pairs, n, pairs))
    reward = np.asarray(ends.reward, np.float64)
    critic = _scores(reward, v_critic[at_0], v_critic[at_k], gamma)
    full = _scores(reward, values.value[at_0], values.value[at_k], gamma)
    by_m = {}
    for m in ms:
        if 2 * m > rollouts:
            continue
        est_a = values.returns[:, :m].mean(1)
        est_b = values.returns[:, m : 2 * m].mean(1)
        score_a = _scores(reward, est_a[at_0], est_a[at_k], gamma)
        score_b = _scores(reward, est_b[at_0], est_b[at_k], gamma)
        by_m[str(m)] = {
            "value_stderr": float(np.mean(values.returns.std(1, ddof=1)) / np.sqrt(m)),
            "regret_stderr": float(np.sqrt(np.mean(
                values.returns.var(1, ddof=1)[at_0] + gamma ** (2 * reward.shape[1])
                * values.returns.var(1, ddof=1)[at_k]) / m)),
            "self_agreement": _agreement(score_a, score_b, first, second),
            "critic_agreement": _agreement(critic, score_a, first, second),
            "env_steps_per_label": 2 * qpos.shape[0] / n * m * horizon,
            "seconds_per_label": 2 * qpos.shape[0] / n * m * horizon * seconds
            / values.env_steps,
        }
    return {
        "segments": n, "states": int(qpos.shape[0]), "stepped_final_states": stepped,
        "states_per_segment": qpos.shape[0] / n, "pairs": int(first.size),
        "rollouts": rollouts, "mc_seconds": seconds, "mc_env_steps": values.env_steps,
        "env_steps_per_s": values.env_steps / seconds,
        "pearson_critic_mc": pearson(v_critic, values.value),
        "mean_critic": float(v_critic.mean()), "mean_mc": float(values.value.mean()),
        "std_mc": float(values.value.std()),
        "bias_critic": float((v_critic - values.value).mean()),
        "critic_agreement_all_rollouts": _agreement(critic, full, first, second),
        "regret_std": float(full.std()),
        "critic_regret_error_std": float((critic - full).std()),
        "pearson_regret_critic_mc": pearson(critic, full),
        "mean_abs_tail_critic": float(gamma**horizon * np.mean(np.abs(v_critic))),
        "by_m": by_m,
    }


def warm_start_effect(task: Any, checkpoint: str, expert: Any, *, horizon: int, seed: int,
                      steps: int = 150, num_envs: int = 64) -> dict[str, Any]:
    """What ``set_state`` (cold solver, optionally root x = 0) changes, same noise."""
    from prefrl import checkpoints, oracles_mc

    policy, _ = checkpoints.load_policy(checkpoint, deterministic=False, obs_dim=task.obs_dim)
    env = oracles_mc.make_env(task, num_envs, steps + horizon + 2)
    env.reset(seed=seed)
    traj = env.rollout(policy, steps, jax.random.key(seed))
    # s_k reconstruction: s_{T-1}, a_{T-1} -> s_T against the recorded next_obs.
    qk, vk = oracles_mc.final_states(traj.qpos[-1], traj.qvel[-1], traj.action[-1], env=env)
    recon = float(np.abs(np.concatenate([qk[:, 1:], vk], 1) - traj.next_obs[-1]).max())
    env.reset(seed=seed)
    env.rollout(policy, steps, jax.random.key(seed))
    saved, state = env.state_dict(), env.get_state()
    ids = np.arange(num_envs)
    noise = [np.asarray(oracles_mc.rollout_noise(jax.random.key(seed + i), ids, ids, horizon,
                                                 task.act_dim)) for i in (1, 2)]
    warm = oracles_mc.rollout_returns(env, expert, noise[0])
    out = {}
    for name, qpos, n in (("cold", state["qpos"], 0), ("cold_root_x_0",
                          oracles_mc.root_x_zero(state["qpos"]), 0),
                          ("cold_other_noise", state["qpos"], 1)):
        env.set_state(qpos, state["qvel"], state["steps"])
        out[name] = oracles_mc.rollout_returns(env, expert, noise[n])
    env.load_state_dict(saved)
    warm_again = oracles_mc.rollout_returns(env, expert, noise[0])
    env.close()
    return {
        "states": num_envs, "after_steps": steps, "horizon": horizon,
        "final_state_max_abs_error": recon,
        "warm_replay_max_abs_diff": float(np.abs(warm - warm_again).max()),
        "mean_abs_diff_warm_vs_cold": float(np.abs(warm - out["cold"]).mean()),
        "mean_diff_warm_minus_cold": float((warm - out["cold"]).mean()),
        "mean_abs_diff_cold_vs_root_x_0": float(np.abs(out["cold"] - out["cold_root_x_0"]).mean()),
        "mean_abs_diff_independent_noise": float(np.abs(out["cold"]
                                                        - out["cold_other_noise"]).mean()),
    }


def _snapshots(experts: Any, fractions: tuple[float, ...]) -> list[Path]:
    final = experts.progress[-1]
    return [experts.checkpoints[int(np.argmin([abs(p - f * final) for p in experts.progress]))]
            for f in fractions]


def run_task(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every source of one task, plus the warm-start check."""
    from prefrl import oracles_mc
    from prefrl.envs import make_task
    from prefrl.studies.experts import find_experts

    task = make_task(name)
    experts = find_experts(args.experts and Path(args.experts) / name, name)
    mc = oracles_mc.MCConfig(expert=str(experts.final), rollouts=args.rollouts,
                             horizon=args.horizon, num_envs=args.num_envs)
    expert = oracles_mc.load_expert(mc, task)
    snaps = _snapshots(experts, tuple(args.snapshot_fractions))
    sources = {"random": None, **{f"snapshot_{f:g}": str(p)
                                  for f, p in zip(args.snapshot_fractions, snaps, strict=True)},
               "expert": str(experts.final)}
    env = oracles_mc.make_env(task, args.num_envs, args.horizon)
    out: dict[str, Any] = {"expert": str(experts.final), "sources": {}}
    for i, (source, checkpoint) in enumerate(sources.items()):
        pool = source_segments(task, checkpoint, segments=args.segments, length=args.length,
                               warmup=args.warmup, seed=args.seed + i)
        result = measure_source(pool, expert, env, jax.random.key(args.seed * 1000 + i),
                                rollouts=args.rollouts, horizon=args.horizon,
                                ms=tuple(args.ms), pairs=args.pairs)
        out["sources"][source] = {"checkpoint": checkpoint, **result}
        print(f"[oracle_fidelity] {name} {source}: {json.dumps(result['by_m'])} "
              f"pearson {result['pearson_critic_mc']:.3f} "
              f"critic agreement {result['critic_agreement_all_rollouts']:.3f} "
              f"({result['mc_seconds']:.0f} s)", file=sys.stderr, flush=True)
    env.close()
    out["warm_start"] = warm_start_effect(task, str(snaps[0]), expert, horizon=args.horizon,
                                          seed=args.seed)
    return out


def _rows(result: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    # (task, source, numbers) in run order: the JSON file's keys are sorted.
    order = {"random": 0, "expert": 2}
    out = []
    for task in result["settings"]["tasks"]:
        sources = result["tasks"][task]["sources"]
        for source in sorted(sources, key=lambda name: (order.get(name, 1), name)):
            out.append((task, source, sources[source]))
    return out


def markdown(result: dict[str, Any], m: int) -> str:
    """The fidelity table at M = ``m`` (one row per task and source)."""
    lines = [
        f"| task | segments from | Pearson V_E vs V̂ | labels: critic vs MC "
        f"(all {result['rollouts']} rollouts) | critic vs MC (M = {m}) | "
        f"MC self-agreement (M = {m}) | V̂ std. error "
        f"(M = {m}) | critic's regret error std / regret std | env steps / label | s / label |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for task, source, s in _rows(result):
        at = s["by_m"].get(str(m), {})
        lines.append(
            f"| `{task}` | {source} | {s['pearson_critic_mc']:.3f} | "
            f"{s['critic_agreement_all_rollouts']:.1%} | {at.get('critic_agreement', 0):.1%} | "
            f"{at.get('self_agreement', 0):.1%} | {at.get('value_stderr', 0):.3g} | "
            f"{s['critic_regret_error_std']:.3g} / {s['regret_std']:.3g} | "
            f"{at.get('env_steps_per_label', 0):,.0f} | {at.get('seconds_per_label', 0):.2f} |")
    lines += ["", "Self-agreement by M (two independent M-rollout estimates):", "",
              "| task | segments from | " + " | ".join(f"M = {k}" for k in result["ms"]) + " |",
              "|---|---|" + "---|" * len(result["ms"])]
    for task, source, s in _rows(result):
        cells = [f"{s['by_m'][str(k)]['self_agreement']:.1%}" if str(k) in s["by_m"] else "—"
                 for k in result["ms"]]
        lines.append(f"| `{task}` | {source} | " + " | ".join(cells) + " |")
    lines += ["", "What `set_state` changes (64 states of the first snapshot, after 150 steps; "
              "one expert rollout of H steps each, same policy noise; mean |ΔG|):", "",
              "| task | s_k rebuilt vs recorded (max abs) | warm vs cold solver | "
              "cold vs root x = 0 | two independent rollouts |", "|---|---|---|---|---|"]
    for task in result["settings"]["tasks"]:
        w = result["tasks"][task]["warm_start"]
        lines.append(f"| `{task}` | {w['final_state_max_abs_error']:.1e} | "
                     f"{w['mean_abs_diff_warm_vs_cold']:.3g} | "
                     f"{w['mean_abs_diff_cold_vs_root_x_0']:.3g} | "
                     f"{w['mean_abs_diff_independent_noise']:.3g} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from prefrl import oracles_mc
    from prefrl.io import atomic_write_json, atomic_write_text

    p = argparse.ArgumentParser(prog="prefrl bench oracle_fidelity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--experts", default=None, help="folder with one expert folder per task")
    p.add_argument("--snapshot-fractions", type=float, nargs="+", default=[0.1, 0.5])
    p.add_argument("--segments", type=int, default=256, help="segments per source")
    p.add_argument("--length", type=int, default=25)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--rollouts", type=int, default=32, help="R rollouts per state (2·max M)")
    p.add_argument("--horizon", type=int, default=oracles_mc.DEFAULT_HORIZON)
    p.add_argument("--ms", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--pairs", type=int, default=4000)
    p.add_argument("--num-envs", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="experiments/bench/results/oracle_fidelity.json")
    args = p.parse_args(argv)
    start = time.time()
    result: dict[str, Any] = {
        "command": " ".join(["nice -n 10 prefrl bench oracle_fidelity",
                             *(sys.argv[1:] if argv is None else argv)]),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "rollouts": args.rollouts, "ms": args.ms, "default_rollouts": oracles_mc.DEFAULT_ROLLOUTS,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "jax": jax.__version__},
        "tasks": {name: run_task(name, args) for name in args.tasks},
    }
    result["seconds"] = time.time() - start
    atomic_write_json(args.out, result)
    atomic_write_text(Path(args.out).with_suffix(".md"),
                      markdown(result, oracles_mc.DEFAULT_ROLLOUTS))
    summary = {name: {src: {"pearson": round(s["pearson_critic_mc"], 3),
                            "critic_agreement": round(s["critic_agreement_all_rollouts"], 3),
                            "self_agreement_default_m": s["by_m"].get(
                                str(oracles_mc.DEFAULT_ROLLOUTS), {}).get("self_agreement")}
                      for src, s in t["sources"].items()}
               for name, t in result["tasks"].items()}
    print(json.dumps({"out": args.out, "seconds": round(result["seconds"], 1),
                      "summary": summary}))
    return 0


__all__ = ["main", "markdown", "measure_source", "source_segments", "warm_start_effect"]
