"""``prefrl bench online``: online preference-based RL against PPO on the true reward.

Every row trains PPO (default :class:`prefrl.learners.ppo.PPOConfig`, 64 envs
× 64 steps) for the same environment steps; only the reward PPO optimises
differs:

* ``true``: the task's reward (``prefrl bench ppo``'s configuration);
* ``online-pr-N``: the online loop (:mod:`prefrl.loops.online`) with ``N``
  partial-return labels from the current policy's segments;
* ``online-regret-1000``: the same with regret labels (true reward + the
  shipped expert's critic V_E, γ = 0.99), fitted by the partial-return
  learner (which then learns Â and PPO optimises it: Knox et al. 2023);
* ``online-regretfit-1000``: regret labels fitted by the regret learner
  (``reward_learner="regret_critic"``: Σγ^t r̂ plus PPO's own critic terms
  ``γ^k V(s_k) − V(s_0)``, Knox et al. 2022 with Π = {current policy});
* ``offline-initial-1000``: all 1000 labels before any RL, from a fixed pool
  of the *initial* policy's rollouts (8 rollouts, 1024 segments), then PPO on
  the frozen r̂ — Christiano et al.'s "no online queries" ablation;
* ``offline-snapshot-1000``: 1000 labelled queries of the shipped snapshot
  pool (``experiments/data/TASK.npz``: expert snapshots, other experts and
  random), fitted once, then PPO on the frozen r̂ (today's offline pipeline).

Each run is one JSON file under ``--out/runs/TASK/ROW/seedS.json``, written
atomically when the run ends: the benchmark resumes where it stopped (runs
already on disk are skipped) and can be spread over several sessions. The
summary (``--out/summary.json``), a figure of true return against env steps
per row (``--out/curves.png``) and one JSON line are written from whatever
runs exist. Headline rows (true, online-pr-1000, offline-initial-1000) use
seeds 0–4; the others seeds 0–2. The defaults were tuned on seed
10 only (never on 0–4), on ``run`` and ``target-speed``.

Two **held-out tasks** were never used for tuning: ``run-backward`` and
``target-speed-v3`` (``target-speed`` with the task parameter
``target_speed=3.0``, where the defaults were chosen at 2.0); each runs the
``true`` and ``online-pr-1000`` rows on seeds 0–4. ``target-speed-v3`` has no
shipped expert, so its normalised score uses true-reward PPO's IQM as the
upper reference (``normaliser.expert_source`` says which) and its rounds
record no regret-label accuracy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefrl.bench._rows import (  # noqa: F401  (re-exported: bench.parse_row, …)
    HEADLINE_SEEDS,
    LEARNERS,
    OTHER_SEEDS,
    PR_HEADLINE,
    REGRET_GRID_TASKS,
    parse_row,
    regret_grid_plan,
)
from prefrl.config import positive_int

RESULTS = Path("experiments/bench/results/online")
HEADLINE = ("true", "online-pr-1000", "offline-initial-1000")
ROWS = {
    "run": ("true", "online-pr-1000", "offline-initial-1000", "online-pr-500", "online-pr-250",
            "online-pr-2000", "online-regret-1000", "online-regretfit-1000",
            "offline-snapshot-1000"),
    "target-speed": ("true", "online-pr-1000", "offline-initial-1000", "offline-snapshot-1000",
                     "online-regret-1000", "online-regretfit-1000"),
    "run-backward": ("true", "online-pr-1000"),
    "target-speed-v3": ("true", "online-pr-1000"),
}
#: Task keys of the benchmark: ``(task name, task parameters)``; a key is also a folder name.
TASKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "run": ("run", ()),
    "target-speed": ("target-speed", ()),
    "run-backward": ("run-backward", ()),
    "target-speed-v3": ("target-speed", ("target_speed=3.0",)),
}
HELDOUT_TASKS = ("run-backward", "target-speed-v3")


def plan(tasks: Sequence[str]) -> list[tuple[str, str, int]]:
    """``(task, row, seed)`` in the order they run: headline rows first, task by task."""
    out = []
    for task in tasks:
        for row in ROWS[task]:
            if row in HEADLINE:
                out += [(task, row, s) for s in HEADLINE_SEEDS]
    for task in tasks:
        for row in ROWS[task]:
            if row not in HEADLINE:
                out += [(task, row, s) for s in OTHER_SEEDS]
    return out


def expert_path(key: str) -> str:
    """The shipped expert of task key ``key``; ``''`` when none was trained for its parameters."""
    task, params = TASKS[key]
    path = Path(f"experiments/experts/{task}/final.npz")
    return str(path) if not params and path.is_file() else ""


def run_one(key: str, row: str, seed: int, total_steps: int) -> dict[str, Any]:
    """One run of one row on task key ``key``; returns its JSON record (final evaluation,
    curve, wall time)."""
    from prefrl import oracles
    from prefrl.learners import ppo
    from prefrl.loops import online
    from prefrl.loops import ppo as training

    task, params = TASKS[key]
    expert = expert_path(key)
    t0 = time.perf_counter()
    if row == "true":
        tc = training.TrainConfig(task=task, task_param=params, total_steps=total_steps,
                                  seed=seed, eval_every=25, checkpoint_every=0, progress=False)
        result = training.train(tc, ppo.PPOConfig())
        wall = time.perf_counter() - t0
        curve = [(e["env_steps"], e["mean_return"]) for e in result.evaluations]
        return {"final_return": result.evaluations[-1]["mean_return"], "wall_s": wall,
                "curve": curve, "final": _strip(result.evaluations[-1]),
                "rollout_s": sum(h["rollout_s"] for h in result.history),
                "update_s": sum(h["update_s"] for h in result.history)}
    config = dict(task=task, task_param=params, total_steps=total_steps, seed=seed,
                  expert=expert, progress=False)
    ppo_config, policy_config = ppo.PPOConfig(), None
    if row.count("-") >= 4:  # the scheme online-{labels}-{value}-{learner}-{budget}
        scheme = parse_row(row)
        config.update(scheme["config"])
        ppo_config = dataclasses.replace(ppo_config, **scheme["ppo"])
        oracle, policy_config = scheme["oracle"], scheme["policy_config"]
    else:
        kind, model, budget = row.split("-")
        config.update(label_budget=int(budget))
        oracle = oracles.OracleConfig()
        if model in ("regret", "regretfit"):
            oracle = oracles.OracleConfig(model="regret", discount=0.99)
        if model == "regretfit":
            config.update(reward_learner="regret_critic")
        if kind == "offline" and model == "initial":
            config.update(initial_fraction=1.0, initial_rollouts=8)
        elif kind == "offline" and model == "snapshot":
            config.update(offline_dataset=f"experiments/data/{task}.npz", segment_length=50,
                          segment_stride=50)
    result = online.train(online.OnlineConfig(**config), ppo_config, oracle=oracle,
                          policy_config=policy_config)
    wall = time.perf_counter() - t0
    curve = [(e["env_steps"], e["mean_return"]) for e in result["evaluations"]]
    last = result["rounds"][-1] if result["rounds"] else {}
    return {"final_return": result["final"]["mean_return"], "wall_s": wall, "curve": curve,
            "final": _strip(result["final"]), "labels_used": result["labels_used"],
            "timing": result["timing"], "last_round": last,
            "rounds": [{k: r.get(k) for k in ("round", "env_steps", "labels_used",
                                               "reward_pearson", "heldout_acc_partial_return",
                                               "heldout_acc_regret", "heldout_acc_regret_mc",
                                               "valid_accuracy")}
                       for r in result["rounds"]]}


def _strip(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "returns"}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_runs(out: Path) -> list[dict[str, Any]]:
    runs = []
    for path in sorted((out / "runs").glob("*/*/seed*.json")):
        with open(path, encoding="utf-8") as f:
            runs.append(json.load(f))
    return runs


def normaliser(key: str, seed: int = 12345) -> dict[str, Any]:
    """Random and shipped-expert returns of task key ``key`` (8 deterministic episodes each,
    same resets); ``expert`` is ``None`` when no expert was trained for the key's parameters."""
    from prefrl import checkpoints as checkpoint
    from prefrl.envs import parse_task_params
    from prefrl.policies import random_policy
    from prefrl.rollout import evaluate_on_task

    spec = parse_task_params(*TASKS[key])
    rand = evaluate_on_task(spec, random_policy(6), episodes=8, seed=seed)["mean_return"]
    path = expert_path(key)
    if not path:
        return {"random": rand, "expert": None}
    expert_fn, _ = checkpoint.load_policy(path)
    exp = evaluate_on_task(spec, expert_fn, episodes=8, seed=seed)["mean_return"]
    return {"random": rand, "expert": exp}


def summarize(runs: list[dict[str, Any]], out: Path, headline_regret_row: str | None = None
              ) -> dict[str, Any]:
    """IQM and 95 % stratified-bootstrap intervals per (task, row); the figure; the JSON line.

    With ``headline_regret_row``: the summary names it and gives, per task, a bootstrap
    interval on the difference of its IQM and ``online-pr-true-rhat-1000``'s, and the
    ratio of their normalised IQMs.
    """
    from prefrl.evaluation import bootstrap_ci, difference_ci

    rows: dict[str, dict[str, Any]] = {}
    for r in runs:
        rows.setdefault(r["task"], {}).setdefault(r["row"], []).append(r)
    table: dict[str, dict[str, Any]] = {}
    norms: dict[str, dict[str, float]] = {}
    for task, by_row in rows.items():
        for row, rs in by_row.items():
            rs = sorted(rs, key=lambda r: r["seed"])
            finals = np.array([r["final_return"] for r in rs])
            point, low, high = bootstrap_ci(finals)
            table.setdefault(task, {})[row] = {
                "seeds": [r["seed"] for r in rs], "returns": [float(x) for x in finals],
                "iqm": point, "ci95": [low, high],
                "mean_wall_s": float(np.mean([r["wall_s"] for r in rs])),
            }
        norms[task] = dict(normaliser(task), expert_source="shipped expert")
        if norms[task]["expert"] is None:
            # No expert for these task parameters: true-reward PPO is the upper reference.
            norms[task].update(expert=table[task]["true"]["iqm"] if "true" in table[task]
                               else None, expert_source="true-reward PPO IQM")
        rand, exp = norms[task]["random"], norms[task]["expert"]
        for row in table[task].values():
            row["normalised_iqm"] = (None if exp is None
                                     else (row["iqm"] - rand) / (exp - rand))
    _plot(rows, out / "curves.png")
    _plot_budget(table, out / "label_budget.png")

    def headline(row: str) -> dict[str, Any]:
        return {task: {"iqm": t[row]["iqm"], "per_seed": dict(zip(t[row]["seeds"],
                                                                   t[row]["returns"],
                                                                   strict=True))}
                for task, t in table.items() if row in t}

    ppo_wall = [r["wall_s"] for r in runs if r["row"] == "true" and r["task"] == "run"]
    online_wall = [r["wall_s"] for r in runs if r["row"] == "online-pr-1000"
                   and r["task"] == "run"]
    summary = {
        "bench": "online", "table": table, "normaliser": norms,
        "true_reward_return": headline("true"), "online_return": headline("online-pr-1000"),
        "offline_return": headline("offline-initial-1000"),
        "normalised_online": {task: t["online-pr-1000"]["normalised_iqm"]
                              for task, t in table.items() if "online-pr-1000" in t},
        "labels": 1000,
        "online_wall_s": float(np.mean(online_wall)) if online_wall else None,
        "ppo_wall_s": float(np.mean(ppo_wall)) if ppo_wall else None,
        "wall_ratio": (float(np.mean(online_wall) / np.mean(ppo_wall))
                       if online_wall and ppo_wall else None),
        "runs": len(runs),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    if headline_regret_row is not None:
        versus = {}
        for task, t in table.items():
            if headline_regret_row in t and PR_HEADLINE in t:
                a, b = t[headline_regret_row], t[PR_HEADLINE]
                point, low, high = difference_ci(a["returns"], b["returns"])
                ratio = (None if a["normalised_iqm"] is None or not b["normalised_iqm"]
                         else a["normalised_iqm"] / b["normalised_iqm"])
                versus[task] = {"difference": point, "difference_ci95": [low, high],
                                "normalised_ratio": ratio}
        summary.update(headline_regret_row=headline_regret_row, headline_vs_pr=versus)
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """Markdown: one line per (task, row), IQM [95 % CI], normalised IQM, per-seed returns."""
    lines = ["| task | row | seeds | true return IQM [95 % CI] | normalised | per seed | wall s |",
             "|---|---|---|---|---|---|---|"]
    for task, rows in summary["table"].items():
        order = [r for r in ROWS.get(task, ()) if r in rows] + sorted(set(rows) - set(ROWS[task]))
        for row in order:
            r = rows[row]
            per_seed = ", ".join(f"{x:.0f}" for x in r["returns"])
            norm = "—" if r["normalised_iqm"] is None else f"{r['normalised_iqm']:.2f}"
            lines.append(f"| {task} | {row} | {len(r['seeds'])} | {r['iqm']:.0f} "
                         f"[{r['ci95'][0]:.0f}, {r['ci95'][1]:.0f}] | {norm} | "
                         f"{per_seed} | {r['mean_wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def _plot(rows: dict[str, dict[str, list]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(rows)
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for row, rs in sorted(rows[task].items()):
            steps = np.array([s for s, _ in rs[0]["curve"]])
            ret = np.array([[v for _, v in r["curve"]] for r in rs
                            if len(r["curve"]) == len(steps)])
            mean = ret.mean(0)
            ax.plot(steps / 1e6, mean, label=f"{row} (n={len(ret)})")
            if len(ret) > 1:
                ax.fill_between(steps / 1e6, ret.min(0), ret.max(0), alpha=0.15)
        ax.set_title(task)
        ax.set_xlabel("env steps (M)")
        ax.set_ylabel("true return (8 episodes)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_budget(table: dict[str, dict[str, Any]], path: Path) -> None:
    """Final true return against the label budget (Christiano et al. 2017, Fig. 2 analogue)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table.get("run", {})
    points = sorted((int(name.rsplit("-", 1)[1]), row) for name, row in rows.items()
                    if re.fullmatch(r"online-pr-\d+", name))
    if not points:
        return
    fig, ax = plt.subplots(figsize=(5, 3.6))
    budgets = [b for b, _ in points]
    iqm = np.array([r["iqm"] for _, r in points])
    ci = np.array([r["ci95"] for _, r in points])
    ax.errorbar(budgets, iqm, yerr=[iqm - ci[:, 0], ci[:, 1] - iqm], marker="o", capsize=3,
                label="online, partial-return labels")
    for name, style in (("true", "k--"), ("offline-initial-1000", "r:"),
                        ("offline-snapshot-1000", "m-.")):
        if name in rows:
            ax.axhline(rows[name]["iqm"], linestyle=style[1:], color=style[0], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("labels")
    ax.set_ylabel("final true return (IQM, 95 % CI)")
    ax.set_title("run, 1 M env steps")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from prefrl.io import atomic_write_json

    p = argparse.ArgumentParser(prog="prefrl bench online", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS),
                   help="task keys (run-backward and target-speed-v3 are held out from tuning)")
    p.add_argument("--total-steps", type=positive_int, default=1_000_000)
    p.add_argument("--out", default=str(RESULTS), help="results folder (resumable)")
    p.add_argument("--max-runs", type=positive_int, default=None,
                   help="stop after this many new runs")
    p.add_argument("--only", nargs="*", default=None, help="rows to run (default: all)")
    p.add_argument("--rows", nargs="*", default=None,
                   help="instead of the plan: these rows (any of the scheme "
                        "online-{labels}-{value}-{learner}-{budget}, see parse_row) on --seeds")
    p.add_argument("--seeds", nargs="*", type=int, default=None,
                   help="with --rows: the seeds (tuning seeds are 10 and 11)")
    p.add_argument("--grid", choices=("regret",), default=None,
                   help="instead of the plan: the regret grid (regret_grid_plan) on "
                        "run, target-speed and run-backward; needs --headline-regret-row")
    p.add_argument("--headline-regret-row", default=None,
                   help="the regret row chosen on tuning seeds 10-11 (recorded in summary.json)")
    p.add_argument("--best", nargs="*", default=(), metavar="VALUE=LEARNER",
                   help="with --grid: each regret oracle's best learner on tuning seeds, e.g. "
                        "mc=adv critic=rhat (its noisy and budget rows)")
    p.add_argument("--summary-only", action="store_true", help="only summarise existing runs")
    p.add_argument("--wall-pairs", type=int, default=0, metavar="N",
                   help="instead: N interleaved (true, online-pr-1000) pairs on run (seeds "
                        "0..N-1), the wall-clock ratio measured in this one process "
                        "(written to --out/wall_pairs.json)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.wall_pairs:
        return _wall_pairs(args.wall_pairs, args.total_steps, out)
    done = 0
    if not args.summary_only:
        if args.rows:
            for row in args.rows:
                if row.count("-") >= 4:
                    parse_row(row)  # a bad row name is refused before anything runs
        if args.grid and not args.headline_regret_row:
            p.error("--grid regret needs --headline-regret-row (chosen on tuning seeds 10-11)")
        if args.rows:
            todo = [(t, r, s) for t in args.tasks for r in args.rows
                    for s in (args.seeds or OTHER_SEEDS)]
        elif args.grid:
            best = dict(item.split("=", 1) for item in args.best)
            tasks = [t for t in args.tasks if t in REGRET_GRID_TASKS]
            todo = regret_grid_plan(tasks, args.headline_regret_row, best)
        else:
            todo = plan(args.tasks)
        for task, row, seed in todo:
            if args.only and row not in args.only:
                continue
            path = out / "runs" / task / row / f"seed{seed}.json"
            if path.exists():
                continue
            if args.max_runs is not None and done >= args.max_runs:
                break
            record = run_one(task, row, seed, args.total_steps)
            record.update(task=task, row=row, seed=seed, total_steps=args.total_steps,
                          commit=_commit(), machine=platform.node())
            atomic_write_json(path, record)
            done += 1
            print(json.dumps({k: record[k] for k in ("task", "row", "seed", "final_return",
                                                     "wall_s")}), flush=True)
    summary = summarize(load_runs(out), out, args.headline_regret_row)
    atomic_write_json(out / "summary.json", summary)
    from prefrl.io import atomic_write_text

    atomic_write_text(out / "summary.md", format_table(summary))
    line = {k: summary[k] for k in ("bench", "true_reward_return", "online_return",
                                    "offline_return", "normalised_online", "labels",
                                    "online_wall_s", "ppo_wall_s", "wall_ratio", "runs")}
    # The regret grid's comparison (its rows are not the plan's, so the fields above are empty).
    line.update({k: summary[k] for k in ("headline_regret_row", "headline_vs_pr") if k in summary})
    print(json.dumps(line))
    return 0


def _wall_pairs(pairs: int, total_steps: int, out: Path) -> int:
    """``pairs`` interleaved true/online runs on ``run``: the online row's wall-clock over
    true-reward PPO's, each ratio from a pair run back to back (machine load shared)."""
    from prefrl.io import atomic_write_json

    if pairs < 1:
        raise SystemExit("--wall-pairs must be >= 1")
    load_before = os.getloadavg()[0]
    # A first short pair compiles everything, so no measured run pays a compile.
    run_one("run", "true", 0, 8192)
    run_one("run", "online-pr-1000", 0, 8192)
    records = []
    for seed in range(pairs):
        true = run_one("run", "true", seed, total_steps)
        online = run_one("run", "online-pr-1000", seed, total_steps)
        records.append({"seed": seed, "true_wall_s": true["wall_s"],
                        "online_wall_s": online["wall_s"],
                        "ratio": online["wall_s"] / true["wall_s"],
                        "online_fit_s": online["timing"]["fit_s"],
                        "true_return": true["final_return"],
                        "online_return": online["final_return"]})
        print(json.dumps(records[-1]), flush=True)
    ratios = np.array([r["ratio"] for r in records])
    result = {"bench": "online_wall_pairs", "pairs": records,
              "wall_ratio": float(np.mean(ratios)),
              "wall_ratio_min": float(ratios.min()), "wall_ratio_max": float(ratios.max()),
              "ratio_of_means": float(np.mean([r["online_wall_s"] for r in records])
                                      / np.mean([r["true_wall_s"] for r in records])),
              "total_steps": total_steps, "commit": _commit(), "machine": platform.node(),
              "load_before": load_before, "load_after": os.getloadavg()[0]}
    atomic_write_json(out / "wall_pairs.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "pairs"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
