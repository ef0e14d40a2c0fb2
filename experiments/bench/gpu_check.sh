#!/bin/bash
# The GPU checks of issue #15 as one command: MJX rollouts and MJX PPO against the
# C engine on the same machine's CPU cores, then a short online preference loop on
# MJX. Each stage has its own time limit, so a slow stage still leaves the others'
# results. $OUT gets five files (the device tool returns at most 8): log.txt,
# rollout_mjx.json, ppo_mjx.json, online_result.json, online_rounds.jsonl.
#
#   bash experiments/bench/gpu_check.sh smoke   # tiny sizes: check it on a CPU first
#   bash experiments/bench/gpu_check.sh gpu     # the benchmark sizes (~6 min on a GPU)
#
# The device machines have jax (CUDA) but not mujoco, mujoco-mjx, gymnasium or
# prefrl. Fetch their cp312 wheels here once (33 MB; the tree is ~27 MB, the carry
# limit 64 MiB; `.whl/` is git-ignored), then carry `.whl`:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     mujoco==4.0.0 mujoco-core==4.0.0 mujoco-studio==4.0.0 mujoco-mjx==3.17.0 \
#     gymnasium==1.4.0 farama-notifications trimesh glfw pyopengl
#
# With `.whl` present the script installs them and prefrl (no index, no network)
# into /tmp/site first.
set -uo pipefail
PRESET=${1:-gpu}
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ]; then  # NO_WHEELS=1: use the installed ones
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
    --target /tmp/site . || exit 1
fi

case "$PRESET" in
  smoke)
    ROLLOUT=(--num-envs 8 16 --steps 10 --cpu-steps 10 --repeats 1)
    PPO=(--num-envs 16 --rollout-steps 8 --num-minibatches 2 --num-epochs 1
         --total-steps 1024 --seeds 0 1 --cpu-steps 1024 --eval-episodes 2)
    ONLINE=(--num-envs 8 --rollout-steps 8 --total-steps 256 --refit-every 2
            --segment-length 4 --segment-stride 4 --pool-capacity 32 --label-budget 12
            --initial-fit-steps 10 --heldout-queries 8 --eval-episodes 2
            --ppo-num-epochs 1 --ppo-num-minibatches 2 --reward-batch-size 8
            --reward-num-steps 5)
    LIMIT=300 ;;
  gpu)
    ROLLOUT=(--num-envs 1024 4096 16384 --steps 200 --cpu-steps 100)
    PPO=(--num-envs 2048 --rollout-steps 32 --num-minibatches 32 --num-epochs 4
         --total-steps 20000000 --seeds 0 1 2)
    ONLINE=(--num-envs 2048 --rollout-steps 32 --total-steps 5000000 --label-budget 1000)
    LIMIT=150 ;;
  *) echo "usage: $0 smoke|gpu" >&2; exit 2 ;;
esac

LOG="$OUT/log.txt"
: > "$LOG"
$PY - <<'EOF' 2>&1 | tee -a "$LOG"
import platform, jax, mujoco
print("python", platform.python_version(), "jax", jax.__version__, "mujoco", mujoco.__version__)
print("devices", jax.devices())
from mujoco import mjx  # noqa: F401
import prefrl
print("prefrl", prefrl.__file__)
EOF

stage() {  # stage NAME SECONDS COMMAND...: run with a limit, output appended to log.txt
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)" | tee -a "$LOG"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  echo "== $name: exit $?" | tee -a "$LOG"
}

ONLINE_DIR=$(mktemp -d)/online_mjx  # a fresh run every time
stage rollout_mjx "$LIMIT" $PY -m prefrl.cli bench rollout --backend mjx "${ROLLOUT[@]}" \
  --out "$OUT/rollout_mjx.json"
stage ppo_mjx $((LIMIT * 2)) $PY -m prefrl.cli bench ppo --backend mjx "${PPO[@]}" \
  --out "$OUT/ppo_mjx.json"
stage online_mjx "$LIMIT" $PY -m prefrl.cli train online --backend mjx --task run \
  "${ONLINE[@]}" --out-dir "$ONLINE_DIR"
cp "$ONLINE_DIR/result.json" "$OUT/online_result.json" 2>/dev/null
cp "$ONLINE_DIR/rounds.jsonl" "$OUT/online_rounds.jsonl" 2>/dev/null
ls -la "$OUT"
