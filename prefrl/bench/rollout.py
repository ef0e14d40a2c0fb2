"""``prefrl bench rollout``: closed-loop env-steps/s of the batched CPU stepper.

Measures in one run, for each batch size B in ``--num-envs`` (default 64 and
256), with the same jitted 2×64 tanh-Gaussian policy
(``prefrl.networks.GaussianPolicy`` through ``policy_from_params``), one call
per control step for the batch on float32 observations and pre-drawn Gaussian
noise (``Actor.act_with_noise``, as ``BatchedEnv.rollout`` acts):

- prefrl: ``BatchedEnv("run", num_envs=B).rollout`` (records the whole
  ``Trajectory``);
- EnvPool ``HalfCheetah-v5`` (when ``envpool`` is installed: the ``bench``
  extra), sync (``num_envs = batch_size = B``, ``step``) and async
  (``num_envs = B``, ``batch_size = B/2``, ``send``/``recv``: the policy sees
  half the batch per call, the other half steps meanwhile); the same number of
  env-steps, on the same number of threads;
- raw ``mujoco.rollout`` (no policy, no Python per step): B open-loop control
  sequences of the same length from the initial state, sampled from the
  initial policy's action distribution ``tanh(N(0, e^{-0.5}))`` so the
  contact regime is comparable;

and once, Gymnasium ``make_vec("HalfCheetah-v5", num_envs=16, "sync")``.
Every timed run of prefrl and of EnvPool sync starts from fresh resets (not
timed), as raw's starts from the initial state: the physics' cost depends on
the regime (after thousands of random steps many cheetahs lie on their backs,
with more contacts). EnvPool async keeps its pipeline running across runs.

``--backend mjx`` measures MJX rollouts instead (``prefrl.bench._mjx``): the
same policy in one jitted ``lax.scan`` over B environments on
``jax.devices()[0]``, and in the same run ``BatchedEnv`` on the CPU cores at
the same B for the ratio; writes ``rollout_mjx.json``.

Each is timed ``--repeats`` times after a warm-up and the median wall time is
used; all times are stored. The machine may be shared, so the load average
before and after and the env-steps per process CPU-second (less sensitive to
other users' load) are recorded too. Writes
``experiments/bench/results/rollout.json`` and prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from prefrl.config import parse_seed, positive_int
from prefrl.io import atomic_write_json
from prefrl.jax_setup import jax_settings

DEFAULT_OUT = os.path.join("experiments", "bench", "results", "rollout.json")
# The targets of issue #16 on an idle 2-core box.
TARGET_VS_ENVPOOL = 1.0
TARGET_VS_RAW = 0.85


def time_runs(fn: Callable[[], Any], repeats: int,
              setup: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Median wall time of ``repeats`` runs of ``fn``, all wall times, median CPU time.

    ``setup`` runs before each run, untimed. Process CPU time (all threads) is
    recorded because the machine may be shared: env-steps per CPU-second is less
    sensitive to other users' load than wall time.
    """
    wall, cpu = [], []
    for _ in range(repeats):
        if setup is not None:
            setup()
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"wall": statistics.median(wall), "times": wall, "cpu": statistics.median(cpu)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="prefrl bench rollout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--num-envs", type=int, nargs="+", default=[64, 256], help="batch sizes B to measure"
    )
    p.add_argument("--steps", type=positive_int, default=500, help="control steps per timed run")
    p.add_argument("--gym-envs", type=positive_int, default=16,
                   help="Gymnasium sync vector env size")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="timed repeats (median is reported)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="physics threads (default: all)")
    p.add_argument(
        "--envpool",
        choices=("auto", "off"),
        default="auto",
        help="auto: measure EnvPool when it is installed; off: skip it",
    )
    p.add_argument("--gym", choices=("on", "off"), default="on", help="measure Gymnasium")
    p.add_argument("--seed", type=parse_seed, default=0)
    p.add_argument("--out", default=None, help="result JSON path (default: "
                   f"{DEFAULT_OUT}, or rollout_mjx.json beside it for --backend mjx)")
    p.add_argument("--backend", choices=("cpu", "mjx"), default="cpu",
                   help="cpu: BatchedEnv against EnvPool and raw MuJoCo; mjx: MJX on the "
                        "default JAX device against BatchedEnv")
    p.add_argument("--mjx-solver", choices=("gpu", "c"), default="gpu",
                   help="MJX solver options: gpu (prefrl.envs.mjx_options.GPU) or MuJoCo C's")
    p.add_argument("--cpu-steps", type=positive_int, default=100,
                   help="--backend mjx: control steps per timed C-engine run (the ratio)")
    args = p.parse_args(argv)
    if args.out is None:
        name = "rollout_mjx.json" if args.backend == "mjx" else "rollout.json"
        args.out = os.path.join(os.path.dirname(DEFAULT_OUT), name)
    for name in ("steps", "gym_envs", "repeats", "cpu_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if any(b < 1 for b in args.num_envs):
        raise ValueError("--num-envs must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads must be >= 1")
    return args


def _envpool_task_id(envpool: Any) -> str:
    ids = [e for e in envpool.list_all_envs() if e.startswith("HalfCheetah-v")]
    if not ids:
        raise ValueError("this EnvPool has no HalfCheetah environment")
    return max(ids, key=lambda e: int(e.rsplit("v", 1)[1]))


def bench_batched_env(
    policy: Any, B: int, T: int, threads: int, repeats: int, seed: int
) -> dict[str, Any]:
    """``BatchedEnv("run", B).rollout(policy, T, key)`` from fresh resets, a fresh key per run.

    Each timed run starts from reset states (the reset is not timed), as the raw
    ``mujoco.rollout`` runs start from the initial state: the physics' cost
    depends on the regime (a cheetah on its back after thousands of random
    steps has more contacts), so both must start alike.
    """
    from prefrl.rollout import BatchedEnv

    with BatchedEnv("run", num_envs=B, seed=seed, num_threads=threads) as env:
        env.rollout(policy, T, jax.random.key(1))  # compile (T's noise blocks) + warm caches
        keys = iter(jax.random.split(jax.random.key(2), repeats))
        return time_runs(lambda: env.rollout(policy, T, next(keys)), repeats, setup=env.reset)


def _bench_envpool(
    envpool: Any, policy: Any, B: int, T: int, threads: int, repeats: int, seed: int
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(task id, sync timing, async timing)``: ``B * T`` env-steps per timed run."""
    task_id = _envpool_task_id(envpool)
    # The same per-step call as BatchedEnv's: the network on pre-drawn noise (made
    # outside the timing), so only the stepping differs.
    steps = max(T, 20)
    noise = np.asarray(jax.random.normal(jax.random.key(seed + 5), (steps, B, 6)))

    def act(obs: np.ndarray, i: int) -> np.ndarray:
        draws = noise[i % steps, : len(obs)]
        return np.asarray(policy.act_with_noise(obs.astype(np.float32), draws))

    env = envpool.make(
        task_id, env_type="gymnasium", num_envs=B, batch_size=B, num_threads=threads, seed=seed
    )
    state = {"obs": env.reset()[0]}

    def sync_run(n: int) -> None:
        obs = state["obs"]
        for t in range(n):
            obs = env.step(act(obs, t))[0]
        state["obs"] = obs

    def reset() -> None:
        state["obs"] = env.reset()[0]

    sync_run(20)
    t_sync = time_runs(lambda: sync_run(T), repeats, setup=reset)  # from resets, as prefrl
    env.close()

    half = max(1, B // 2)
    env = envpool.make(
        task_id,
        env_type="gymnasium",
        num_envs=B,
        batch_size=half,
        num_threads=threads,
        seed=seed,
    )
    env.async_reset()

    def async_run(env_steps: int) -> None:
        done, i = 0, 0
        while done < env_steps:
            obs, _, _, _, info = env.recv()
            env.send(act(obs, i), info["env_id"])
            done += len(info["env_id"])
            i += 1

    async_run(20 * B)
    t_async = time_runs(lambda: async_run(B * T), repeats)
    env.close()
    return task_id, t_sync, t_async


def _bench_raw(B: int, T: int, threads: int, repeats: int, seed: int) -> dict[str, Any]:
    """Open-loop ``mujoco.rollout`` of B × (T · frame_skip) physics steps."""
    import mujoco
    import mujoco.rollout

    from prefrl.envs.tasks import FRAME_SKIP, model_path

    model = mujoco.MjModel.from_xml_path(model_path())
    rng = np.random.default_rng(seed)
    sigma = float(np.exp(-0.5))  # GaussianPolicy's init_log_std
    ctrl = np.tanh(sigma * rng.standard_normal((B, T, model.nu)))
    control = np.repeat(ctrl, FRAME_SKIP, axis=1)  # hold each action for frame_skip steps
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    init = np.empty(mujoco.mj_stateSize(model, spec))
    mujoco.mj_getState(model, data, init, spec)
    initial = np.tile(init, (B, 1))
    datas = [mujoco.MjData(model) for _ in range(threads)]
    out_state = np.empty((B, T * FRAME_SKIP, init.size))
    with mujoco.rollout.Rollout(nthread=threads if threads > 1 else 0) as ro:
        ro.rollout(model, datas, initial, control[:, :20], state=out_state[:, :20])
        return time_runs(lambda: ro.rollout(model, datas, initial, control, state=out_state),
                         repeats)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.backend == "mjx":
        from prefrl.bench import _mjx

        return _mjx.rollout_main(args)
    import mujoco

    from prefrl.networks import GaussianPolicy
    from prefrl.rollout import policy_from_params

    envpool = None
    if args.envpool == "auto":
        try:
            import envpool
        except ImportError:
            envpool = None

    load_before = os.getloadavg()
    net = GaussianPolicy(action_dim=6, hidden=(64, 64))
    params = net.init(jax.random.key(args.seed), np.zeros((1, 17), np.float32))
    policy = policy_from_params(net.apply, params)
    T, R = args.steps, args.repeats
    threads = args.threads or os.cpu_count() or 1

    results = []
    for B in args.num_envs:
        row: dict[str, Any] = {"num_envs": B}
        timings: dict[str, dict[str, Any]] = {}
        timings["prefrl"] = bench_batched_env(policy, B, T, threads, R, args.seed)
        if envpool is not None:
            task_id, t_sync, t_async = _bench_envpool(envpool, policy, B, T, threads, R, args.seed)
            timings["envpool_sync"], timings["envpool_async"] = t_sync, t_async
            row["envpool_task"] = task_id
            row["envpool_async_batch_size"] = max(1, B // 2)
        timings["raw_mujoco"] = _bench_raw(B, T, threads, R, args.seed)

        sps = {name: B * T / t["wall"] for name, t in timings.items()}
        for name, value in sps.items():
            row[f"{name}_env_steps_per_s"] = round(value, 1)
        if envpool is not None:
            best = max(sps["envpool_sync"], sps["envpool_async"])
            row["ratio_vs_envpool_sync"] = round(sps["prefrl"] / sps["envpool_sync"], 3)
            row["ratio_vs_envpool_async"] = round(sps["prefrl"] / sps["envpool_async"], 3)
            row["ratio_vs_envpool_best"] = round(sps["prefrl"] / best, 3)
        row["ratio_vs_raw_mujoco"] = round(sps["prefrl"] / sps["raw_mujoco"], 3)
        row["env_steps_per_cpu_s"] = {
            name: round(B * T / t["cpu"], 1) for name, t in timings.items()
        }
        row["times_s"] = {name: [round(x, 4) for x in t["times"]] for name, t in timings.items()}
        results.append(row)

    result: dict[str, Any] = {"results": results}
    for row in results:  # flat summaries, keyed "…@B"
        B = row["num_envs"]
        for key in (
            "prefrl_env_steps_per_s",
            "envpool_sync_env_steps_per_s",
            "envpool_async_env_steps_per_s",
            "raw_mujoco_env_steps_per_s",
            "ratio_vs_envpool_best",
            "ratio_vs_raw_mujoco",
        ):
            if key in row:
                result[f"{key}@{B}"] = row[key]

    if args.gym == "on":
        import gymnasium

        G = args.gym_envs
        venv = gymnasium.make_vec("HalfCheetah-v5", num_envs=G, vectorization_mode="sync")
        gym_state = {"obs": venv.reset(seed=args.seed)[0]}
        gym_keys = list(jax.random.split(jax.random.key(3), T + 20))

        def gym_run(n: int) -> None:
            for t in range(n):
                action = np.asarray(policy(gym_state["obs"].astype(np.float32), gym_keys[t]))
                gym_state["obs"] = venv.step(action)[0]

        gym_run(20)
        t_gym = time_runs(lambda: gym_run(T), R)
        venv.close()
        result["gymnasium_env_steps_per_s"] = round(G * T / t_gym["wall"], 1)
        result["gymnasium"] = {
            "num_envs": G,
            "steps": T,
            "times_s": [round(x, 4) for x in t_gym["times"]],
        }

    if envpool is not None:
        result["meets_targets"] = {
            str(row["num_envs"]): bool(
                row["ratio_vs_envpool_best"] >= TARGET_VS_ENVPOOL
                and row["ratio_vs_raw_mujoco"] >= TARGET_VS_RAW
            )
            for row in results
        }
    result.update(
        {
            "targets": {"vs_envpool_best": TARGET_VS_ENVPOOL, "vs_raw_mujoco": TARGET_VS_RAW},
            "envpool": getattr(envpool, "__version__", None),
            "steps": T,
            "threads": threads,
            "repeats": R,
            "statistic": "median wall time",
            "policy": "GaussianPolicy hidden=(64, 64), jitted, one call per step for the batch "
                      "on pre-drawn noise",
            "machine": {
                "cpu_count": os.cpu_count(),
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "python": platform.python_version(),
                "jax": jax.__version__,
                "mujoco": mujoco.__version__,
                "jax_settings": jax_settings(),
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            },
        }
    )
    atomic_write_json(args.out, result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
