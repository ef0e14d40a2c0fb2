"""Tuning the online loop's reward-fit cost (issue #23's wall-clock target) on tuning seeds.

The fit's work per run is (rounds × num_steps + initial_fit_steps) minibatch steps of the
3-member ensemble. Candidates cut it; each is run on tuning seeds 10 and 11 (never the
benchmark's seeds 0-4) on `run` and `target-speed` at the benchmark's settings (1 M steps,
1000 partial-return labels), one JSON per run (resumable: runs on disk are skipped).

    python experiments/bench/online_fit_cost_tuning.py [--out DIR]

Ends with one JSON line: the final return per candidate, task and seed, and the fit's wall
seconds (a share of each run's, measured in the same process).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CANDIDATES = {
    "default": {},  # 100 steps a refit, 600 initial
    "steps40": {"num_steps": 40, "eval_every": 40, "initial_fit_steps": 300},
    "steps25": {"num_steps": 25, "eval_every": 25, "initial_fit_steps": 200},
}
TASKS = ("run", "target-speed")
SEEDS = (10, 11)


def run_one(candidate: str, task: str, seed: int) -> dict:
    import time

    from prefrl.learners import ppo
    from prefrl.loops import online

    changes = dict(CANDIDATES[candidate])
    initial = changes.pop("initial_fit_steps", 600)
    config = online.OnlineConfig(task=task, seed=seed, label_budget=1000, progress=False,
                                 initial_fit_steps=initial,
                                 expert=f"experiments/experts/{task}/final.npz")
    t0 = time.perf_counter()
    result = online.train(config, ppo.PPOConfig(), online.default_reward_config(**changes))
    return {"candidate": candidate, "task": task, "seed": seed,
            "final_return": result["final"]["mean_return"], "wall_s": time.perf_counter() - t0,
            "timing": result["timing"],
            "heldout_acc_partial_return": result["rounds"][-1].get("heldout_acc_partial_return")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="experiments/bench/results/online_fit_cost_tuning")
    parser.add_argument("--candidates", nargs="*", default=list(CANDIDATES))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from prefrl.io import atomic_write_json
    from prefrl.jax_setup import configure_jax

    configure_jax()
    records = []
    for candidate in args.candidates:
        for task in TASKS:
            for seed in SEEDS:
                path = out / f"{candidate}_{task}_seed{seed}.json"
                if not path.exists():
                    atomic_write_json(path, run_one(candidate, task, seed))
                records.append(json.loads(path.read_text()))
    print(json.dumps({"bench": "online_fit_cost_tuning", "runs": [
        {k: r[k] for k in ("candidate", "task", "seed", "final_return", "wall_s")}
        | {"fit_s": r["timing"]["fit_s"]} for r in records]}))


if __name__ == "__main__":
    main()
