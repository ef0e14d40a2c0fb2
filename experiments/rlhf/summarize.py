"""RLHF stage, step 3: the KL-vs-true-return frontier and proxy-vs-true curves of sweep_kl.sh.

    python experiments/rlhf/summarize.py experiments/rlhf/target-speed

Per β_KL: final true return and |v_x − v*| of the deterministic policy (last
evaluation), mean per-step log π − log π_ref (a KL estimate) and mean proxy /
true per-step reward over the last 10 updates. Writes ``frontier.json``
and prints one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main() -> int:
    root = Path(sys.argv[1])
    rows = []
    for run in sorted(root.glob("kl_*/"), key=lambda p: float(p.name[3:])):
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        evals = [json.loads(x) for x in (run / "evals.jsonl").read_text().splitlines()]
        tail = metrics[-10:]
        rows.append({
            "beta_kl": float(run.name[3:]),
            "true_return": evals[-1]["mean_return"],
            "mean_speed_error": evals[-1].get("mean_speed_error"),
            "mean_speed": evals[-1]["mean_speed"],
            "kl_to_ref_per_step": float(np.mean([m["ref_kl"] for m in tail])),
            "proxy_reward_per_step": float(np.mean([m["proxy_reward"] for m in tail])),
            "true_reward_per_step": float(np.mean([m["true_reward"] for m in tail])),
            "eval_curve": [(e["update"], round(e["mean_return"], 1)) for e in evals],
            "proxy_vs_true_curve": [(m["update"], round(m["proxy_reward"], 4),
                                     round(m["true_reward"], 4)) for m in metrics[::5]],
        })
    out = {"runs": rows}
    (root / "frontier.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps([{k: v for k, v in r.items() if not k.endswith("curve")} for r in rows]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
