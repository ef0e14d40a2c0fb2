"""Where PEBBLE loses against true-reward SAC (issue #25): short runs of its variants.

``prefrl bench online_sac``'s ``pebble-1000`` trails true-reward SAC on ``run``
(seed 0, at 100 k env steps: 1226 with 536 labels against 5559). Each variant
here changes one thing of the ``pebble-1000`` row and runs the online core for
``--steps`` env steps (default 100 k), evaluating every 5 000:

* ``default``: the bench row as it is;
* ``task``: SAC on the environment's reward, everything else unchanged (the
  pipeline's ceiling: warm-up, state-entropy pre-training, critic reset, the
  rollout/update rhythm; labels are still drawn and fitted, unused);
* ``task-nopre``: ``task`` without pre-training (5 000 random steps, as
  ``prefrl train sac``);
* ``task-noreset``: ``task`` without the critic reset after pre-training;
* ``task-resetall``: ``task`` with the actor and α re-initialised too after
  pre-training (pre-training then only explores);
* ``task-t10``: ``task`` with rollouts of 10 steps (40 transitions, then 40
  updates; segments of 10 steps), nearer ``prefrl train sac``'s rhythm;
* ``fit``: the reward refit nearer B-Pref's (up to 50 epochs a round) — more
  updates a round (``--fit-steps``, default 400, against the loop's 40; 1000 for
  the first labels, against 300);
* ``noreset``: no critic reset after pre-training;
* ``resetall`` / ``resetall-fit``: the actor and α re-initialised after
  pre-training, with the loop's refits / with ``fit``'s.

Runs are resumable (checkpoints under ``runs/pebble_diagnostic``); a finished run
writes ``OUT/VARIANT/seedS.json`` and is skipped later. Ends with one JSON line:
the return at each evaluation per variant and seed.

    python experiments/bench/pebble_diagnostic.py --variants task default --seeds 0
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any

RESULTS = Path("experiments/bench/results/pebble_diagnostic")
WORK = Path("runs/pebble_diagnostic")
#: variant -> (SAC on the task's reward, PEBBLEConfig overrides, B-Pref-sized refits,
#: OnlineConfig overrides)
VARIANTS: dict[str, tuple[bool, dict[str, Any], bool, dict[str, Any]]] = {
    "default": (False, {}, False, {}),
    "task": (True, {}, False, {}),
    "task-nopre": (True, {"warmup_steps": 5000, "unsup_steps": 0}, False, {}),
    "task-noreset": (True, {"reset_critic": False}, False, {}),
    "task-resetall": (True, {"reset_actor": True}, False, {}),
    "task-t10": (True, {}, False, {"rollout_steps": 10, "segment_length": 10,
                                   "segment_stride": 10, "refit_every": 125,
                                   "eval_every": 125, "checkpoint_every": 125}),
    "fit": (False, {}, True, {"initial_fit_steps": 1000}),
    "noreset": (False, {"reset_critic": False}, False, {}),
    "resetall": (False, {"reset_actor": True}, False, {}),
    "resetall-fit": (False, {"reset_actor": True}, True, {"initial_fit_steps": 1000}),
}


def run_variant(variant: str, seed: int, steps: int, budget: int, fit_steps: int,
                work: Path, num_threads: int | None) -> dict[str, Any]:
    from prefrl.bench.online_sac import pebble_online_config
    from prefrl.learners import pebble
    from prefrl.loops import online
    from prefrl.loops.online import pebble as online_pebble
    from prefrl.loops.online import registry
    from prefrl.loops.online.config import default_reward_config

    if "pebble_task" not in registry.POLICY_LEARNERS:
        registry.register_policy_learner(
            "pebble_task", functools.partial(online_pebble.make, task_reward=True),
            "PEBBLE on the environment's reward (diagnostic)", config=pebble.PEBBLEConfig,
            label_from=online_pebble.label_from_step)
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; use one of {list(VARIANTS)}")
    task_reward, overrides, big_fit, loop = VARIANTS[variant]
    pc = dataclasses.replace(pebble.PEBBLEConfig(), **overrides)
    learner = "pebble_task" if task_reward else "pebble"
    reward_config = (default_reward_config(num_steps=fit_steps, eval_every=fit_steps)
                     if big_fit else None)
    # The bench's PEBBLE row, with B-Pref's first fit unless the variant says otherwise.
    first_fit = {f.name: f.default for f in dataclasses.fields(online.OnlineConfig)}
    config = pebble_online_config(
        "run", budget, seed, total_steps=steps, out_dir=str(work / variant / f"seed{seed}"),
        num_threads=num_threads, policy_learner=learner,
        **{"eval_every": 25, "checkpoint_every": 25,
           "initial_fit_steps": first_fit["initial_fit_steps"], **loop})
    t0, c0 = time.perf_counter(), time.process_time()
    result = online.train(config, reward_config=reward_config, policy_config=pc)
    return {"variant": variant, "seed": seed, "steps": steps, "label_budget": budget,
            "fit_steps": fit_steps if big_fit else 40, "pebble": overrides, "loop": loop,
            "curve": [(int(e["env_steps"]), float(e["mean_return"]))
                      for e in result["evaluations"]],
            "final_return": float(result["final"]["mean_return"]),
            "labels_used": result["labels_used"], "timing": result["timing"],
            "rounds": [{k: r.get(k) for k in ("round", "env_steps", "labels_used",
                                                "reward_pearson", "valid_accuracy")}
                       for r in result["rounds"]],
            "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def main(argv: list[str] | None = None) -> int:
    from prefrl.bench.online import _commit
    from prefrl.io import atomic_write_json

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--label-budget", type=int, default=1000)
    p.add_argument("--fit-steps", type=int, default=400)
    p.add_argument("--num-threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--work", default=str(WORK))
    args = p.parse_args(argv)
    out, summary = Path(args.out), {}
    for variant in args.variants:
        for seed in args.seeds:
            path = out / variant / f"seed{seed}.json"
            if not path.exists():
                record = run_variant(variant, seed, args.steps, args.label_budget,
                                     args.fit_steps, Path(args.work), args.num_threads)
                record["commit"] = _commit()
                atomic_write_json(path, record)
            record = json.loads(path.read_text())
            summary[f"{variant}/seed{seed}"] = [round(r) for _, r in record["curve"]]
    print(json.dumps({"bench": "pebble_diagnostic", "curves": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
