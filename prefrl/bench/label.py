"""``prefrl bench label``: oracle labelling throughput, JAX vs a plain numpy loop.

Labels ``--queries`` (100 000) uniform random queries of length ``--length``
(50) from a pool of ``--pool`` random half-cheetah-shaped segments (obs 17,
act 6) with both oracles: partial return (γ_p = 1) and regret (γ = 0.99,
V_E a randomly initialised 2×64 tanh MLP critic, the shape of the PPO
expert's). The JAX path is :func:`prefrl.oracles.label_queries` (one jitted
program: score the pool, gather, label); it is timed after a compile call,
best of ``--repeats``. The comparison, in the same run, is a per-query
numpy loop (score both segments, critic on s_0 and s_k, compare) on the
first ``--numpy-subset`` queries (best of ``--repeats`` too); its labels must
equal the JAX labels there (``label_agreement_on_subset``).

Writes ``experiments/bench/results/label.json`` (atomically) and prints one
JSON line last.
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

from prefrl import oracles
from prefrl.config import parse_seed, positive_int
from prefrl.data import queries
from prefrl.io import atomic_write_json
from prefrl.types import Segments

OBS_DIM, ACT_DIM, HIDDEN = 17, 6, 64
REGRET_DISCOUNT = 0.99


def _pool(rng: np.random.Generator, n: int, k: int) -> Segments:
    obs = rng.normal(size=(n, k + 1, OBS_DIM)).astype(np.float32)
    return Segments(
        obs=jnp.asarray(obs[:, :-1]),
        action=jnp.asarray(rng.uniform(-1, 1, size=(n, k, ACT_DIM)).astype(np.float32)),
        reward=jnp.asarray(rng.normal(size=(n, k)).astype(np.float32)),
        next_obs=jnp.asarray(obs[:, 1:]),
        mask=jnp.ones((n, k), jnp.float32),
        x_velocity=jnp.zeros((n, k), jnp.float32),
        qpos=jnp.zeros((n, k, 9), jnp.float32),
        qvel=jnp.zeros((n, k, 9), jnp.float32),
        source=jnp.zeros((n, 2), jnp.int32),
    )


def _critic_params(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    sizes = [OBS_DIM, HIDDEN, HIDDEN, 1]
    return [
        (
            (rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32),
            (0.1 * rng.normal(size=b)).astype(np.float32),
        )
        for a, b in zip(sizes[:-1], sizes[1:], strict=True)
    ]


def _make_value_fn(params):
    jparams = [(jnp.asarray(w), jnp.asarray(b)) for w, b in params]

    def value_fn(obs):
        h = obs
        for i, (w, b) in enumerate(jparams):
            h = h @ w + b
            if i < len(jparams) - 1:
                h = jnp.tanh(h)
        return h[..., 0]

    return value_fn


def _numpy_value(params, obs: np.ndarray) -> float:
    h = obs
    for i, (w, b) in enumerate(params):
        h = h @ w + b
        if i < len(params) - 1:
            h = np.tanh(h)
    return float(h[0])


def _numpy_loop(model: str, pool: dict, params, first, second, k: int) -> np.ndarray:
    """The straightforward per-query implementation (rational oracle, β = 0)."""
    gamma = 1.0 if model == "partial_return" else REGRET_DISCOUNT
    disc = gamma ** np.arange(k)
    labels = np.empty(len(first), np.float32)
    for q, (i, j) in enumerate(zip(first, second, strict=True)):
        scores = []
        for s in (i, j):
            score = float(np.dot(disc, pool["reward"][s]))
            if model == "regret":
                v0 = _numpy_value(params, pool["obs"][s, 0])
                vk = _numpy_value(params, pool["next_obs"][s, -1])
                score += gamma**k * vk - v0
            scores.append(score)
        labels[q] = 1.0 if scores[0] > scores[1] else (0.0 if scores[0] < scores[1] else 0.5)
    return labels


def _time(fn, repeats: int) -> tuple[float, float]:
    """``(best of repeats, first call incl. compilation)`` in seconds."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())  # compile + warm up
    first = time.perf_counter() - t0
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return float(best), float(first)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prefrl bench label", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=positive_int, default=100_000)
    parser.add_argument("--length", type=positive_int, default=50)
    parser.add_argument("--pool", type=positive_int, default=20_000)
    parser.add_argument("--numpy-subset", type=positive_int, default=2_000)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--seed", type=parse_seed, default=0)
    parser.add_argument("--out", default="experiments/bench/results/label.json")
    args = parser.parse_args(argv)
    if args.numpy_subset > args.queries:
        parser.error("--numpy-subset must be <= --queries")

    rng = np.random.default_rng(args.seed)
    pool = _pool(rng, args.pool, args.length)
    params = _critic_params(rng)
    value_fn = _make_value_fn(params)
    key_pairs, key_pr, key_rg = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    first, second = queries.uniform_pairs(key_pairs, args.pool, args.queries)
    configs = {
        "partial_return": (oracles.OracleConfig(), None, key_pr),
        "regret": (
            oracles.OracleConfig(model="regret", discount=REGRET_DISCOUNT), value_fn, key_rg,
        ),
    }
    noisy = oracles.OracleConfig(temperature=1.0, temperature_mode="relative",
                                 mistake_prob=0.1, equal_threshold=0.01, skip_threshold=-5.0)
    np_pool = {f: np.asarray(getattr(pool, f)) for f in ("obs", "next_obs", "reward")}
    f_np, s_np = np.asarray(first), np.asarray(second)
    sub = args.numpy_subset

    result: dict = {
        "benchmark": "label",
        "queries": args.queries,
        "segment_length": args.length,
        "pool_segments": args.pool,
        "numpy_subset": sub,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "jax_version": jax.__version__,
        "timing": f"best of {args.repeats}; JAX after one compile call; numpy loop on the subset",
    }
    for name, (cfg, vf, key) in configs.items():
        run = lambda cfg=cfg, vf=vf, key=key: oracles.label_queries(
            cfg, key, pool, first, second, vf
        )
        seconds, first_call = _time(run, args.repeats)
        jax_labels = np.asarray(run().label)
        np_seconds = np.inf
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            np_labels = _numpy_loop(name, np_pool, params, f_np[:sub], s_np[:sub], args.length)
            np_seconds = min(np_seconds, time.perf_counter() - t0)
        jax_qps = args.queries / seconds
        np_qps = sub / np_seconds
        result[name] = {
            "jax_seconds": seconds,
            "jax_first_call_seconds_incl_compile": first_call,
            "jax_queries_per_s": jax_qps,
            "numpy_loop_seconds": np_seconds,
            "numpy_loop_queries_per_s": np_qps,
            "speedup": jax_qps / np_qps,
            "label_agreement_on_subset": float(np.mean(jax_labels[:sub] == np_labels)),
        }
        print(f"{name:>15}: JAX {jax_qps:,.0f} queries/s ({seconds:.3f} s for {args.queries:,}); "
              f"first call incl. compile {first_call:.2f} s; "
              f"numpy loop {np_qps:,.0f} queries/s; speedup ×{jax_qps / np_qps:,.0f}; "
              f"agreement {result[name]['label_agreement_on_subset']:.4f}")
    noisy_run = lambda: oracles.label_queries(noisy, key_pr, pool, first, second)
    noisy_seconds, noisy_first = _time(noisy_run, args.repeats)
    result["partial_return_all_irrationalities"] = {
        "config": {"temperature": 1.0, "temperature_mode": "relative", "mistake_prob": 0.1,
                   "equal_threshold": 0.01, "skip_threshold": -5.0},
        "jax_seconds": noisy_seconds,
        "jax_first_call_seconds_incl_compile": noisy_first,
        "jax_queries_per_s": args.queries / noisy_seconds,
    }
    print(f"partial_return + all irrationalities: JAX {args.queries / noisy_seconds:,.0f} "
          "queries/s")
    atomic_write_json(Path(args.out), result)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
