"""``prefrl bench reward``: speed of one reward-model ensemble update on CPU.

Workload (defaults): an ensemble of 3 MLPs 2×256 on (s, a) with half-cheetah
sizes (obs 17, act 6), segments of length 50, 1024 query pairs per update:
3 × 1024 × 2 × 50 = 307 200 network rows forward and backward.

Measured in the same run:

* ``pairs_per_s`` — queries per second through ``jax.jit(update)`` (state
  buffers donated), best of ``--repeats`` timed calls after a warm-up;
* ``update_gflops_per_s`` — FLOPs of the update counted **analytically** from
  the matmuls (``analytic_update_flops``: forward, weight
  gradients, input gradients of all but the first layer; elementwise work
  not counted) divided by the best time. XLA's cost analysis is reported too
  (``xla_cost_analysis_gflop``) but not used: it counts a ``lax.scan`` body
  once, not once per iteration;
* ``matmul_gflops_per_s`` — a plain ``jnp.dot`` of two float32 4096² matrices
  (2·4096³ FLOPs), best of ``--repeats``;
* ``unchunked_pairs_per_s`` — the same update without gradient chunking
  (all 1024 pairs in one pass), the straightforward formulation.

Results go to ``experiments/bench/results/reward.json``; the last stdout line
is the same JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from prefrl.config import positive_int
from prefrl.io import atomic_write_json
from prefrl.learners import reward_model as rm

RESULTS = Path("experiments/bench/results/reward.json")


def analytic_update_flops(config: rm.RewardModelConfig, in_dim: int, num_pairs: int,
                          length: int) -> float:
    """FLOPs of one :func:`make` ``update`` counted from the matmuls (2 per MAC).

    Forward: Σ_layers 2 n_in n_out per row; backward: the weight gradient of
    every layer (same count) plus the input gradient of every layer but the
    first (inputs are data). Rows = M × pairs × 2 segments × k steps.
    Elementwise work (activations, Adam) is not counted.
    """
    sizes = [in_dim, *(int(h) for h in config.hidden), 1]
    macs = [a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    per_row = 2 * sum(macs) + 2 * sum(macs) + 2 * sum(macs[1:])
    rows = int(config.ensemble_size) * num_pairs * 2 * length
    return float(per_row * rows)


def _best_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times), times


def matmul_rate(size: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of a float32 ``jnp.dot`` of two ``size``² matrices (best of ``repeats``)."""
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (size, size), jnp.float32)
    b = jax.random.normal(key_b, (size, size), jnp.float32)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))
    best, _ = _best_time(lambda: dot(a, b), repeats)
    return 2.0 * size**3 / best / 1e9


def random_batch(key: jax.Array, pairs: int, length: int, obs: int, act: int) -> rm.PairBatch:
    ks = jax.random.split(key, 5)
    return rm.PairBatch(
        jax.random.normal(ks[0], (pairs, length, obs)),
        jax.random.uniform(ks[1], (pairs, length, act), minval=-1.0, maxval=1.0),
        jnp.ones((pairs, length)),
        jax.random.normal(ks[2], (pairs, length, obs)),
        jax.random.uniform(ks[3], (pairs, length, act), minval=-1.0, maxval=1.0),
        jnp.ones((pairs, length)),
        jax.random.bernoulli(ks[4], 0.5, (pairs,)).astype(jnp.float32),
    )


def update_rate(config: rm.RewardModelConfig, batch: rm.PairBatch, repeats: int
                ) -> dict[str, float]:
    """Time ``jit(update)`` with donated state; returns seconds and rates."""
    learner = rm.make(config)
    state = learner.init(jax.random.key(0), batch)
    update = jax.jit(learner.update, donate_argnums=0)
    compiled = update.lower(state, batch).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, list):  # older jax: one dict per computation
        cost = cost[0] if cost else {}
    xla_flops = float((cost or {}).get("flops", float("nan")))
    holder = {"state": state}

    def step():
        holder["state"], metrics = compiled(holder["state"], batch)
        return metrics["loss"]

    jax.block_until_ready(step())  # warm-up
    best, times = _best_time(step, repeats)
    length, obs_dim, act_dim = batch.obs_1.shape[1], batch.obs_1.shape[2], batch.action_1.shape[2]
    flops = analytic_update_flops(config, obs_dim + act_dim, batch.size, length)
    return {
        "seconds": best,
        "times": [round(t, 4) for t in times],
        "pairs_per_s": batch.size / best,
        "gflops_per_s": flops / best / 1e9,
        "analytic_gflop": flops / 1e9,
        "xla_cost_analysis_gflop": xla_flops / 1e9,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="prefrl bench reward", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=positive_int, default=3)
    p.add_argument("--hidden", type=positive_int, nargs="*", default=[256, 256])
    p.add_argument("--length", type=positive_int, default=50, help="segment length k")
    p.add_argument("--pairs", type=positive_int, default=1024, help="query pairs per update")
    p.add_argument("--obs", type=positive_int, default=17)
    p.add_argument("--act", type=positive_int, default=6)
    p.add_argument("--chunk-pairs", type=positive_int, default=32)
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--skip-unchunked", action="store_true", help="skip the unchunked baseline")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    config = rm.RewardModelConfig(hidden=tuple(args.hidden), ensemble_size=args.members,
                                  chunk_pairs=args.chunk_pairs)
    batch = random_batch(jax.random.key(1), args.pairs, args.length, args.obs, args.act)
    matmul_before = matmul_rate(repeats=args.repeats)
    fast = update_rate(config, batch, args.repeats)
    matmul_after = matmul_rate(repeats=args.repeats)
    # The machine may be shared: take the better matmul measurement as the reference.
    matmul = max(matmul_before, matmul_after)
    result = {
        "bench": "reward",
        "members": args.members,
        "hidden": list(args.hidden),
        "segment_length": args.length,
        "pairs_per_update": args.pairs,
        "chunk_pairs": args.chunk_pairs,
        "pairs_per_s": round(fast["pairs_per_s"], 1),
        "update_gflops_per_s": round(fast["gflops_per_s"], 2),
        "matmul_gflops_per_s": round(matmul, 2),
        "matmul_gflops_per_s_before_after": [round(matmul_before, 2), round(matmul_after, 2)],
        "update_fraction_of_matmul": round(fast["gflops_per_s"] / matmul, 3),
        "update_seconds": round(fast["seconds"], 4),
        "update_times": fast["times"],
        "flop_count": "analytic (matmuls only)",
        "analytic_gflop_per_update": round(fast["analytic_gflop"], 3),
        "xla_cost_analysis_gflop": round(fast["xla_cost_analysis_gflop"], 3),
    }
    if not args.skip_unchunked:
        plain = rm.RewardModelConfig(hidden=tuple(args.hidden), ensemble_size=args.members,
                                     chunk_pairs=args.pairs)
        slow = update_rate(plain, batch, max(2, args.repeats // 2))
        result["unchunked_pairs_per_s"] = round(slow["pairs_per_s"], 1)
        result["unchunked_gflops_per_s"] = round(slow["gflops_per_s"], 2)
    result.update(
        jax_version=jax.__version__, backend=jax.default_backend(),
        cpu_count=os.cpu_count(), machine=platform.machine(),
        load_average=[round(x, 2) for x in os.getloadavg()],
        numpy_version=np.__version__,
    )
    atomic_write_json(args.out, result)
    print(json.dumps(result))
    return 0
