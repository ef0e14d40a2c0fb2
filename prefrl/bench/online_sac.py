"""``prefrl bench online_sac``: off-policy preference RL (PEBBLE) beside SAC and the PPO loop.

Rows (``table[task][row]``, the schema of ``prefrl bench online``'s summary):

* ``true``: SAC on the task's reward (:mod:`prefrl.loops.sac`, ``prefrl train
  sac``'s defaults: 4 envs, one update per transition, 5 000 random warm-up
  steps), **300 k env steps**;
* ``pebble-100`` / ``pebble-1000``: the online core with the ``pebble`` policy
  learner (:mod:`prefrl.loops.online.pebble`; SAC on r̂ after 1 000 random and
  9 000 state-entropy steps, B-Pref's settings except :data:`PEBBLE_SETTINGS`),
  100 / 1000 partial-return labels from uniform queries of the newest segments,
  **300 k env steps**;
* ``ppo-online-100`` / ``ppo-online-1000``: today's PPO loop
  (``prefrl bench online``'s ``online-pr-N`` settings), 1 M env steps, reported
  at its evaluation nearest 300 k (update 74: 303 104 steps; ``iqm``) and at
  1 M (``iqm_1m``).

Seeds 0–4 on ``run``; 0–2 on ``target-speed`` and on the held-out
``run-backward`` (no setting here was chosen on it). The PEBBLE rows use
B-Pref's PEBBLE settings and the online loop's defaults except the two of
:data:`PEBBLE_SETTINGS`, chosen on tuning seeds 10–11 of ``run`` only
(``experiments/bench/pebble_diagnostic.py``, 100 k-step runs); nothing was
tuned on the bench's seeds.

Each run writes checkpoints under ``--work`` (default ``runs/bench/online_sac``,
git-ignored: replay buffers are large) and, when it ends, one JSON record
``--out/runs/TASK/ROW/seedS.json`` (final evaluation, curve, wall and CPU
seconds, commit): a killed benchmark resumes inside the run it was in, and
finished runs are skipped. The summary holds IQM with 95 % stratified-bootstrap
intervals, the normalised IQM (random = 0, the shipped PPO expert = 1), a
bootstrap interval on each row's IQM ratio to ``true``, and the CPU-hours per
row; it is written from whatever runs exist, with one JSON line.

Note: the field's PEBBLE numbers are on DMC cheetah-run, whose reward lies in
[0, 1] per step and whose dynamics differ; they are budgets to aim at, not
numbers to compare with these.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefrl.bench.online import TASKS as ONLINE_TASKS
from prefrl.bench.online import _commit, _strip, expert_path, load_runs, normaliser
from prefrl.config import positive_int

RESULTS = Path("experiments/bench/results/online_sac")
WORK = Path("runs/bench/online_sac")
TASKS = {key: ONLINE_TASKS[key] for key in ("run", "target-speed", "run-backward")}
HELDOUT_TASKS = ("run-backward",)
ROWS = ("true", "pebble-1000", "pebble-100", "ppo-online-1000", "ppo-online-100")
SEEDS = {"run": (0, 1, 2, 3, 4), "target-speed": (0, 1, 2), "run-backward": (0, 1, 2)}
SAC_STEPS = 300_000
PPO_STEPS = 1_000_000
#: PEBBLE's departures from B-Pref's settings (tuning seeds 10–11 of ``run``, 100 k steps;
#: ``experiments/bench/pebble_diagnostic.py``): the actor and α re-initialised with the critics
#: after pre-training (an actor kept from entropy pre-training learns even the task reward
#: slowly), and refits of B-Pref's size — 400 reward-model updates a round, 1000 for the
#: first labels — against the PPO loop's 40 / 300 (SAC relabels its whole replay with r̂).
PEBBLE_SETTINGS: dict[str, Any] = {"reset_actor": True, "fit_steps": 400,
                                   "initial_fit_steps": 1000}
PPO_EVAL_EVERY = 37  # PPO updates of 4096 steps: the 2nd evaluation is at 303 104 steps


def plan(tasks: Sequence[str], rows: Sequence[str] = ROWS) -> list[tuple[str, str, int]]:
    """``(task, row, seed)`` in run order: the cheap PPO rows first, then per task and seed
    every SAC row (so a partial benchmark compares rows on the same seeds)."""
    out = [(t, r, s) for t in tasks for r in rows if r.startswith("ppo") for s in SEEDS[t]]
    out += [(t, r, s) for t in tasks for s in SEEDS[t] for r in rows if not r.startswith("ppo")]
    return out


def _curve(evaluations: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(int(e["env_steps"]), float(e["mean_return"])) for e in evaluations]


def pebble_online_config(key: str, budget: int, seed: int, **overrides: Any) -> Any:
    """The PEBBLE rows' :class:`prefrl.loops.online.OnlineConfig` (4 envs × 50 steps a
    rollout, a round every 25 updates = 5 000 env steps, :data:`PEBBLE_SETTINGS`' first fit)
    with ``overrides``; ``experiments/bench/pebble_diagnostic.py`` varies it."""
    from prefrl.loops import online

    task, params = TASKS[key]
    settings = dict(task=task, task_param=params, seed=seed, label_budget=budget,
                    expert=expert_path(key), progress=False, total_steps=SAC_STEPS, num_envs=4,
                    rollout_steps=50, policy_learner="pebble", refit_every=25, eval_every=50,
                    checkpoint_every=50, initial_fit_steps=PEBBLE_SETTINGS["initial_fit_steps"])
    return online.OnlineConfig(**{**settings, **overrides})


def run_one(key: str, row: str, seed: int, work: Path, num_threads: int | None = None,
            sac_steps: int = SAC_STEPS, ppo_steps: int = PPO_STEPS) -> dict[str, Any]:
    """One run; returns its JSON record. Checkpoints under ``work`` (resumed if present)."""
    from prefrl.learners import pebble, ppo, sac
    from prefrl.loops import online
    from prefrl.loops import sac as sac_loop
    from prefrl.loops.online.config import default_reward_config

    task, params = TASKS[key]
    t0, c0 = time.perf_counter(), time.process_time()
    if row == "true":
        tc = sac_loop.SACTrainConfig(task=task, task_param=params, total_steps=sac_steps,
                                     seed=seed, out_dir=str(work), progress=False,
                                     num_threads=num_threads)
        result = sac_loop.train(tc, sac.SACConfig())
        evaluations = result.evaluations or _read_evals(work)
        record = {"curve": _curve(evaluations), "final": _strip(evaluations[-1]),
                  "final_return": float(evaluations[-1]["mean_return"])}
    else:
        method, budget = row.rsplit("-", 1)
        common = dict(task=task, task_param=params, seed=seed, label_budget=int(budget),
                      expert=expert_path(key), progress=False, out_dir=str(work),
                      num_threads=num_threads)
        if method == "pebble":
            fit = PEBBLE_SETTINGS["fit_steps"]
            config = pebble_online_config(key, int(budget), seed, total_steps=sac_steps,
                                          out_dir=str(work), num_threads=num_threads)
            result = online.train(
                config, reward_config=default_reward_config(num_steps=fit, eval_every=fit),
                policy_config=pebble.PEBBLEConfig(reset_actor=PEBBLE_SETTINGS["reset_actor"]))
        else:
            config = online.OnlineConfig(total_steps=ppo_steps, eval_every=PPO_EVAL_EVERY,
                                         checkpoint_every=PPO_EVAL_EVERY, **common)
            result = online.train(config, ppo.PPOConfig())
        curve = _curve(result["evaluations"])
        record = {"curve": curve, "final": _strip(result["final"]),
                  "final_return": float(result["final"]["mean_return"]),
                  "labels_used": result["labels_used"], "timing": result["timing"],
                  "rounds": [{k: r.get(k) for k in (
                      "round", "env_steps", "labels_used", "reward_pearson", "valid_accuracy",
                      "heldout_acc_partial_return", "heldout_acc_regret")}
                      for r in result["rounds"]]}
        if method == "pebble":
            record["pebble_settings"] = dict(PEBBLE_SETTINGS)
        if method == "ppo-online":
            at = min(curve, key=lambda point: abs(point[0] - sac_steps))
            record.update(final_return_1m=record["final_return"], final_return=at[1],
                          final_steps=at[0])
    record.update(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0)
    return record


def _read_evals(work: Path) -> list[dict[str, Any]]:
    # A finished SAC run trained again returns no evaluations: its files have them.
    from prefrl.loops import resume

    return resume.read_jsonl(work / "evals.jsonl")


def summarize(runs: list[dict[str, Any]], norms: dict[str, dict[str, Any]] | None = None
              ) -> dict[str, Any]:
    """IQM, 95 % intervals, normalised IQM, ratio to ``true`` with its interval, CPU-hours."""
    from prefrl.evaluation import bootstrap_ci, ratio_ci

    by: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in runs:
        by.setdefault(r["task"], {}).setdefault(r["row"], []).append(r)
    norms = {} if norms is None else norms
    table: dict[str, dict[str, Any]] = {}
    for task, rows in by.items():
        if task not in norms:
            norms[task] = dict(normaliser(task), expert_source="shipped PPO expert")
        rand, exp = norms[task]["random"], norms[task]["expert"]
        for row, rs in rows.items():
            rs = sorted(rs, key=lambda r: r["seed"])
            finals = np.array([r["final_return"] for r in rs])
            point, low, high = bootstrap_ci(finals)
            entry = {"seeds": [r["seed"] for r in rs], "returns": finals.tolist(),
                     "iqm": point, "ci95": [low, high],
                     "normalised_iqm": None if exp is None else (point - rand) / (exp - rand),
                     "env_steps": int(rs[0]["curve"][-1][0]) if rs[0]["curve"] else None,
                     "cpu_hours_per_run": float(np.mean([r["cpu_s"] for r in rs]) / 3600),
                     "wall_hours_per_run": float(np.mean([r["wall_s"] for r in rs]) / 3600)}
            if row.startswith("ppo"):
                at_1m = np.array([r["final_return_1m"] for r in rs])
                p1, l1, h1 = bootstrap_ci(at_1m)
                entry.update(reported_at_steps=int(rs[0]["final_steps"]), iqm_1m=p1,
                             ci95_1m=[l1, h1], returns_1m=at_1m.tolist())
            table.setdefault(task, {})[row] = entry
        if "true" in table[task]:
            # Raw IQM ratios (the bar on run, where returns are positive) and ratios of
            # normalised IQMs (random = 0; meaningful where returns are negative: target-speed).
            ref = np.array(table[task]["true"]["returns"])
            for row, entry in table[task].items():
                if row == "true":
                    continue
                p, lo, hi = ratio_ci(np.array(entry["returns"]), ref)
                entry["ratio_to_true"] = {"point": p, "ci95": [lo, hi]}
                if exp is not None:
                    span = exp - rand
                    p, lo, hi = ratio_ci((np.asarray(entry["returns"]) - rand) / span,
                                         (ref - rand) / span)
                    entry["normalised_ratio_to_true"] = {"point": p, "ci95": [lo, hi]}
    return {"bench": "online_sac", "table": table, "normaliser": norms,
            "heldout_tasks": list(HELDOUT_TASKS), "runs": len(runs),
            "sac_steps": sorted({int(r["sac_steps"]) for r in runs}),
            "ppo_steps": sorted({int(r["ppo_steps"]) for r in runs}),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}


def format_table(summary: dict[str, Any]) -> str:
    """Markdown: one line per (task, row)."""
    lines = ["| task | row | seeds | env steps | return IQM [95 % CI] | normalised | ratio to "
             "true [95 % CI] | normalised ratio [95 % CI] | CPU-h per run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for task, rows in summary["table"].items():
        for row in [r for r in ROWS if r in rows]:
            e = rows[row]
            norm = "—" if e["normalised_iqm"] is None else f"{e['normalised_iqm']:.2f}"
            ratio, norm_ratio = (_interval(e.get("ratio_to_true")),
                                 _interval(e.get("normalised_ratio_to_true")))
            steps = e.get("reported_at_steps", e["env_steps"])
            lines.append(f"| {task} | {row} | {len(e['seeds'])} | {steps} | {e['iqm']:.0f} "
                         f"[{e['ci95'][0]:.0f}, {e['ci95'][1]:.0f}] | {norm} | {ratio} | "
                         f"{norm_ratio} | {e['cpu_hours_per_run']:.2f} |")
            if "iqm_1m" in e:
                lines.append(f"| {task} | {row} at the end | {len(e['seeds'])} | "
                             f"{e['env_steps']} | "
                             f"{e['iqm_1m']:.0f} [{e['ci95_1m'][0]:.0f}, {e['ci95_1m'][1]:.0f}]"
                             f" | | | | |")
    return "\n".join(lines) + "\n"


def _interval(r: dict[str, Any] | None) -> str:
    return "—" if r is None else f"{r['point']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"


def main(argv: list[str] | None = None) -> int:
    from prefrl.io import atomic_write_json, atomic_write_text

    p = argparse.ArgumentParser(prog="prefrl bench online_sac", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--only", nargs="*", default=None, choices=ROWS, help="rows to run")
    p.add_argument("--out", default=str(RESULTS), help="results folder (resumable)")
    p.add_argument("--work", default=str(WORK), help="checkpoints of the runs in progress")
    p.add_argument("--max-runs", type=positive_int, default=None,
                   help="stop after this many new runs")
    p.add_argument("--num-threads", type=positive_int, default=None,
                   help="physics threads per run (default: all cores)")
    p.add_argument("--sac-steps", type=positive_int, default=SAC_STEPS,
                   help="env steps of the SAC rows (smoke tests only: the rows' steps)")
    p.add_argument("--ppo-steps", type=positive_int, default=PPO_STEPS,
                   help="env steps of the PPO rows (smoke tests only)")
    p.add_argument("--summary-only", action="store_true", help="only summarise existing runs")
    args = p.parse_args(argv)
    out, work = Path(args.out), Path(args.work)
    done = 0
    if not args.summary_only:
        for task, row, seed in plan(args.tasks, args.only or ROWS):
            path = out / "runs" / task / row / f"seed{seed}.json"
            if path.exists():
                continue
            if args.max_runs is not None and done >= args.max_runs:
                break
            run_dir = work / task / row / f"seed{seed}"
            record = run_one(task, row, seed, run_dir, args.num_threads, args.sac_steps,
                             args.ppo_steps)
            record.update(task=task, row=row, seed=seed, sac_steps=args.sac_steps,
                          ppo_steps=args.ppo_steps, commit=_commit(),
                          machine=platform.node())
            atomic_write_json(path, record)
            shutil.rmtree(run_dir, ignore_errors=True)  # the record holds what is kept
            done += 1
            print(json.dumps({k: record[k] for k in ("task", "row", "seed", "final_return",
                                                     "wall_s", "cpu_s")}), flush=True)
    summary = summarize(load_runs(out))
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", format_table(summary))
    line = {"bench": "online_sac", "runs": summary["runs"],
            "iqm": {t: {r: round(e["iqm"], 1) for r, e in rows.items()}
                    for t, rows in summary["table"].items()},
            "ratio_to_true": {t: {r: round(e["ratio_to_true"]["point"], 3)
                                  for r, e in rows.items() if "ratio_to_true" in e}
                              for t, rows in summary["table"].items()}}
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
