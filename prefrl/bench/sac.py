"""``prefrl bench sac``: what one SAC update costs, against the machine's matmul rate.

Measures, on the CPU devices the ``prefrl`` command sets up (one per core):

1. the **matmul rate**: a chain of ``[B, h] @ [h, h]`` products (the shape of
   SAC's hidden layers, B = batch, h = 256) and of a 1024³ product, in one jit
   each, GFLOP/s on one device;
2. **one SAC update** (:mod:`prefrl.learners.sac`, default config: batch 256,
   256×256 ReLU networks, obs 17, act 6) as ``--updates`` updates in one
   ``lax.scan``: ms per update, its FLOPs (XLA's cost analysis, and the
   hand count below) and the rate that implies, as a fraction of the matmul rate;
3. **seeds**: S seeds as ``jit(vmap(scan(update)))`` on one device, and with the
   seed axis sharded over the host devices (as :mod:`prefrl.loops.ppo_seeds`
   does), against S single-seed runs one after another (S × the 1-seed time);
4. the training loop's **per-control-step cost** besides the update: a sampled
   action for B environments and one C-engine step (``BatchedEnv.rollout(·, 1)``).

Hand count (forward of an MLP layer ``2·N·in·out`` FLOPs; a backward ≈ 2 forwards,
1 when only input gradients are needed): critic member
``F_Q = 2N(23·256 + 256·256 + 256)``, actor ``F_π = 2N(17·256 + 256·256 + 256·12)``;
an update = critic step (π on s': F_π; 2 target Q: 2F_Q; 2 Q forward + backward:
6F_Q) + actor step (π forward + backward: 3F_π; 2 Q forward + input backward:
4F_Q) = 4F_π + 12F_Q ≈ 0.59 GFLOP at N = 256.

All variants are timed in turns, ``--repeats`` rounds, and the minimum is kept
(on a shared machine each meets the same load; the minimum is the least
disturbed). Results go to ``experiments/bench/results/sac.json``; the last line
printed is one JSON object. Run it on an otherwise idle machine (``nice`` if shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path("experiments/bench/results/sac.json")
OBS_DIM, ACT_DIM = 17, 6


def _timings(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, float]]:
    """Seconds of each ``calls[name]()`` (results blocked on): ``min`` and ``median``.

    After one warm-up call each, the calls take turns, ``repeats`` rounds: on a
    machine shared with other work, every variant meets the same mix of load,
    and the minimum is the least disturbed run.
    """
    import jax

    for fn in calls.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: {"min": float(np.min(t)), "median": float(np.median(t))}
            for name, t in times.items()}


def hand_flops(batch: int, hidden: int = 256, obs_dim: int = OBS_DIM,
               act_dim: int = ACT_DIM) -> float:
    """FLOPs of one SAC update by the module docstring's count (two hidden layers)."""
    layer = lambda i, o: 2.0 * batch * i * o  # noqa: E731
    f_q = layer(obs_dim + act_dim, hidden) + layer(hidden, hidden) + layer(hidden, 1)
    f_pi = layer(obs_dim, hidden) + layer(hidden, hidden) + layer(hidden, 2 * act_dim)
    return 4 * f_pi + 12 * f_q


def matmul_chain(batch: int, hidden: int, steps: int) -> tuple[Callable[[], Any], float]:
    """A jitted chain of ``relu(x @ w)``, ``[batch, hidden] @ [hidden, hidden]``, and its FLOPs."""
    import jax

    k_x, k_w = jax.random.split(jax.random.key(0))
    x = jax.random.normal(k_x, (batch, hidden)) * 0.01
    w = jax.random.normal(k_w, (hidden, hidden)) / np.sqrt(hidden)

    @jax.jit
    def chain(x, w):
        # Each product depends on the last, so XLA cannot hoist or drop any.
        return jax.lax.scan(lambda h, _: (jax.nn.relu(h @ w), None), x, None, length=steps)[0]

    return (lambda: chain(x, w)), 2.0 * batch * hidden * hidden * steps


def _batches(num: int, batch: int) -> Any:
    import jax
    import jax.numpy as jnp

    from prefrl.learners import sac

    k = jax.random.split(jax.random.key(1), 4)
    return sac.Transition(
        obs=jax.random.normal(k[0], (num, batch, OBS_DIM)),
        action=jax.random.uniform(k[1], (num, batch, ACT_DIM), minval=-1, maxval=1),
        reward=jax.random.normal(k[2], (num, batch)),
        next_obs=jax.random.normal(k[3], (num, batch, OBS_DIM)),
        terminated=jnp.zeros((num, batch), bool))


def update_cost(updates: int, repeats: int, seeds: list[int]) -> dict[str, Any]:
    """The matmul rate, and ms per update: 1 seed; S seeds vmapped on one device and sharded.

    All variants are timed in turns (:func:`_timings`); rates use the minimum.
    """
    import jax

    from prefrl.learners import sac

    config = sac.SACConfig()
    learner = sac.make(config, OBS_DIM, ACT_DIM)
    batches = _batches(updates, config.batch_size)

    def train(state: Any, batches: Any) -> Any:
        return jax.lax.scan(learner.update, state, batches)[0]

    one = jax.jit(train)
    state = learner.init(jax.random.key(0))
    layer, layer_flops = matmul_chain(config.batch_size, 256, 200)
    big, big_flops = matmul_chain(1024, 1024, 20)
    calls: dict[str, Callable[[], Any]] = {"matmul_256": layer, "matmul_1024": big,
                                           "update": lambda: one(state, batches)}
    devices = jax.local_devices()
    for s in seeds:
        states = jax.vmap(learner.init)(jax.random.split(jax.random.key(0), s))
        vmapped = jax.jit(jax.vmap(train, in_axes=(0, None)))
        calls[f"{s}/one_device"] = lambda v=vmapped, st=states: v(st, batches)
        count = min(len(devices), s)
        if count > 1 and s % count == 0:
            mesh = jax.sharding.Mesh(np.array(devices[:count]), ("seeds",))
            shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("seeds"))
            replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            sharded = jax.jit(jax.vmap(train, in_axes=(0, None)),
                              in_shardings=(shard, replicated), out_shardings=shard)
            placed, on_all = jax.device_put(states, shard), jax.device_put(batches, replicated)
            calls[f"{s}/sharded"] = lambda f=sharded, st=placed, b=on_all: f(st, b)
    timed = _timings(calls, repeats)
    ms = lambda name: 1e3 * timed[name]["min"] / updates  # noqa: E731
    # One update on its own: XLA's cost analysis counts a scan's body once, not per trip.
    first = jax.tree.map(lambda x: x[0], batches)
    cost = jax.jit(learner.update).lower(state, first).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    out: dict[str, Any] = {
        "ms_per_update": ms("update"),
        "ms_per_update_median": 1e3 * timed["update"]["median"] / updates,
        "xla_flops_per_update": float(cost.get("flops", float("nan"))) if cost else float("nan"),
        "hand_flops_per_update": hand_flops(config.batch_size),
        "matmul_gflops_256": layer_flops / timed["matmul_256"]["min"] / 1e9,
        "matmul_gflops_1024": big_flops / timed["matmul_1024"]["min"] / 1e9,
        "seeds": {}}
    for s in seeds:
        row = {"one_device_ms_per_update": ms(f"{s}/one_device")}
        if f"{s}/sharded" in timed:
            row["sharded_ms_per_update"] = ms(f"{s}/sharded")
        best = min(row.values())
        row["sequential_ms_per_update"] = s * out["ms_per_update"]
        row["speedup_vs_sequential"] = row["sequential_ms_per_update"] / best
        out["seeds"][str(s)] = row
    return out


def acting_cost(num_envs: int, steps: int) -> dict[str, float]:
    """ms per control step of the loop besides the update: act (sampled) + one C-engine step."""
    import jax

    from prefrl.learners import sac
    from prefrl.policies import Policy, policy_fn
    from prefrl.rollout import BatchedEnv

    config = sac.SACConfig()
    state = sac.make(config, OBS_DIM, ACT_DIM).init(jax.random.key(0))
    actor = sac.make_networks(ACT_DIM, config.hidden).actor
    with BatchedEnv("run", num_envs=num_envs, seed=0, dtype=np.float32) as env:
        env.reset()
        act = policy_fn(Policy(actor.apply, state.actor_params))
        env.rollout(act, 1, jax.random.key(0))
        t0 = time.perf_counter()
        for i in range(steps):
            act = policy_fn(Policy(actor.apply, state.actor_params))
            env.rollout(act, 1, jax.random.fold_in(jax.random.key(1), i))
        seconds = time.perf_counter() - t0
    return {"ms_per_control_step": 1e3 * seconds / steps, "num_envs": num_envs}


def main(argv: list[str] | None = None) -> int:
    from prefrl.io import atomic_write_json
    from prefrl.jax_setup import jax_settings

    p = argparse.ArgumentParser(prog="prefrl bench sac", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--updates", type=int, default=50, help="updates per timed scan")
    p.add_argument("--repeats", type=int, default=5,
                   help="rounds of timed calls (the variants take turns; the minimum is kept)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 4, 8],
                   help="numbers of seeds S to vmap")
    p.add_argument("--num-envs", type=int, default=4, help="environments of the acting timing")
    p.add_argument("--out", default=str(RESULTS), help="results file (JSON)")
    args = p.parse_args(argv)

    load_before = os.getloadavg()[0]
    update = update_cost(args.updates, args.repeats, args.seeds)
    acting = acting_cost(args.num_envs, 500)
    ms = update["ms_per_update"]
    update_gflops = update["hand_flops_per_update"] / (ms * 1e-3) / 1e9
    best_seeds = max(update["seeds"].items(), key=lambda kv: kv[1]["speedup_vs_sequential"])
    summary = {
        "bench": "sac",
        "ms_per_update": round(ms, 3),
        "ms_per_update_median": round(update["ms_per_update_median"], 3),
        "hand_gflop_per_update": round(update["hand_flops_per_update"] / 1e9, 4),
        "xla_gflop_per_update": round(update["xla_flops_per_update"] / 1e9, 4),
        "update_gflops": round(update_gflops, 1),
        "matmul_gflops_256": round(update["matmul_gflops_256"], 1),
        "matmul_gflops_1024": round(update["matmul_gflops_1024"], 1),
        "update_fraction_of_matmul_256": round(update_gflops / update["matmul_gflops_256"], 3),
        "seeds": {s: {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
                  for s, row in update["seeds"].items()},
        "best_seeds": {"seeds": int(best_seeds[0]),
                       "speedup_vs_sequential": round(best_seeds[1]["speedup_vs_sequential"], 2)},
        "acting_ms_per_control_step": round(acting["ms_per_control_step"], 3),
        "num_envs": acting["num_envs"],
        "env_steps_per_s_at_one_update_per_step": round(
            1e3 * acting["num_envs"] / (acting["ms_per_control_step"] + acting["num_envs"] * ms),
            1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_1min_before": round(load_before, 2),
                    "load_average_1min_after": round(os.getloadavg()[0], 2),
                    "jax_settings": jax_settings()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, summary)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
