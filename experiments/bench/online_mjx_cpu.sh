#!/bin/bash
# The online preference loop on MJX to 1 M env steps on `run`, seeds 0-2, with the
# settings of `prefrl bench online`'s online-pr-1000 row (1000 partial-return labels,
# every other option at its default), then one summary JSON. Resumable: each run
# continues from its last.npz, a finished run (result.json) is skipped.
#
#   bash experiments/bench/online_mjx_cpu.sh   # ~10 min a seed on the 2-core CPU
set -euo pipefail
ROOT=${ROOT:-runs/online-mjx-run}
OUT=${OUT:-experiments/bench/results/online_mjx.json}
for seed in 0 1 2; do
  dir="$ROOT/seed-$seed"
  [ -f "$dir/result.json" ] && continue
  prefrl train online --backend mjx --task run --label-budget 1000 --total-steps 1000000 \
    --seed "$seed" --progress false --out-dir "$dir" > "$ROOT.seed-$seed.log" 2>&1
done
python3 - "$ROOT" "$OUT" <<'PY'
import json, sys
from pathlib import Path
from prefrl.jax_setup import configure_jax
configure_jax(mjx=True)  # record the settings the runs had (the prefrl command's)
from prefrl.evaluation import bootstrap_ci
from prefrl.io import atomic_write_json
from prefrl.bench._mjx import device_info
root, out = Path(sys.argv[1]), sys.argv[2]
runs = []
for seed in (0, 1, 2):
    r = json.loads((root / f"seed-{seed}" / "result.json").read_text())
    rounds = r["rounds"]
    runs.append({"seed": seed, "final_return": round(r["final"]["mean_return"], 1),
                 "labels_used": r["labels_used"], "env_steps": r["env_steps"],
                 "wall_s": round(r["wall_s"], 1),
                 "last_reward_pearson": round(rounds[-1].get("reward_pearson", float("nan")), 3)})
iqm, low, high = bootstrap_ci([x["final_return"] for x in runs], seed=0)
atomic_write_json(out, {
    "bench": "online", "backend": "mjx", "task": "run", "row": "online-pr-1000",
    "command": "bash experiments/bench/online_mjx_cpu.sh", "runs": runs,
    "iqm_final_return": round(float(iqm), 1), "iqm_ci95": [round(float(low), 1),
                                                           round(float(high), 1)],
    "machine": device_info(), "note": "2-core CPU, no GPU lent; the summary process "
    "records the machine and the command's JAX settings, the runs' logs lie beside them"})
print(json.dumps({"iqm_final_return": round(float(iqm), 1), "runs": runs}))
PY
