"""``prefrl bench rollout``: closed-loop env-steps/s of the batched CPU stepper.

Measures in one run, with the same jitted 2×64 tanh-Gaussian policy
(``prefrl.networks.GaussianPolicy``, one call per control step for the batch):

- prefrl: ``BatchedEnv("run", num_envs=B)`` (default B = 64);
- Gymnasium: ``gymnasium.make_vec("HalfCheetah-v5", num_envs=16, vectorization_mode="sync")``;
- raw ``mujoco.rollout`` (no policy, no Python per step): B open-loop control
  sequences of the same length, sampled from the initial policy's action
  distribution ``tanh(N(0, e^{-0.5}))`` so the contact regime is comparable.

Each is timed ``--repeats`` times after a warm-up and the best (least
contended) wall time is used; all times are stored. The machine is shared, so
the load average before and after and the env-steps per process CPU-second
(insensitive to other users' load) are recorded too. Writes
``experiments/bench/results/rollout.json`` and prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from prefrl.io import atomic_write_json

DEFAULT_OUT = os.path.join("experiments", "bench", "results", "rollout.json")


def _best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float], float]:
    """``(best wall time, all wall times, best process CPU time)`` over ``repeats`` runs.

    Process CPU time (all threads) is recorded because the machine is shared:
    env-steps per CPU-second is insensitive to other users' load, wall time is not.
    """
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(times), times, min(cpu)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="prefrl bench rollout", description=__doc__)
    p.add_argument("--num-envs", type=int, default=64, help="batch size B for prefrl and raw")
    p.add_argument("--steps", type=int, default=500, help="control steps per timed prefrl run")
    p.add_argument("--gym-envs", type=int, default=16, help="Gymnasium sync vector env size")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (best is reported)")
    p.add_argument("--threads", type=int, default=None, help="physics threads (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=DEFAULT_OUT, help="result JSON path")
    args = p.parse_args(argv)
    for name in ("num_envs", "steps", "gym_envs", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import gymnasium
    import mujoco
    import mujoco.rollout

    from prefrl.envs.tasks import model_path
    from prefrl.networks import GaussianPolicy
    from prefrl.rollout import BatchedEnv, policy_from_params

    load_before = os.getloadavg()
    net = GaussianPolicy(action_dim=6, hidden=(64, 64))
    params = net.init(jax.random.key(args.seed), np.zeros((1, 17), np.float32))
    policy = policy_from_params(net.apply, params)
    B, T = args.num_envs, args.steps
    threads = args.threads or os.cpu_count() or 1

    # --- prefrl BatchedEnv
    env = BatchedEnv("run", num_envs=B, seed=args.seed, num_threads=threads)
    env.rollout(policy, 20, jax.random.key(1))  # compile + warm caches
    keys = iter(jax.random.split(jax.random.key(2), args.repeats))
    t_prefrl, times_prefrl, cpu_prefrl = _best_time(
        lambda: env.rollout(policy, T, next(keys)), args.repeats
    )
    env.close()
    prefrl_sps = B * T / t_prefrl

    # --- Gymnasium sync vector env, same policy, same number of env-steps
    G = args.gym_envs
    gym_steps = max(1, B * T // G)
    venv = gymnasium.make_vec("HalfCheetah-v5", num_envs=G, vectorization_mode="sync")
    obs, _ = venv.reset(seed=args.seed)
    state = {"obs": obs, "key": jax.random.key(3)}

    def gym_run(n: int) -> None:
        for _ in range(n):
            state["key"], key = jax.random.split(state["key"])
            action = np.asarray(policy(state["obs"].astype(np.float32), key))
            state["obs"], *_ = venv.step(action)

    gym_run(20)
    t_gym, times_gym, cpu_gym = _best_time(lambda: gym_run(gym_steps), args.repeats)
    venv.close()
    gym_sps = G * gym_steps / t_gym

    # --- raw mujoco.rollout, open loop, B x (T * frame_skip) physics steps
    model = mujoco.MjModel.from_xml_path(model_path())
    frame_skip = 5
    rng = np.random.default_rng(args.seed)
    sigma = float(np.exp(-0.5))  # GaussianPolicy's init_log_std
    ctrl = np.tanh(sigma * rng.standard_normal((B, T, 6)))
    control = np.repeat(ctrl, frame_skip, axis=1)  # hold each action for frame_skip steps
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    nstate = mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_FULLPHYSICS)
    init = np.empty(nstate)
    mujoco.mj_getState(model, data, init, mujoco.mjtState.mjSTATE_FULLPHYSICS)
    initial = np.tile(init, (B, 1))
    datas = [mujoco.MjData(model) for _ in range(threads)]
    out_state = np.empty((B, T * frame_skip, nstate))
    with mujoco.rollout.Rollout(nthread=threads if threads > 1 else 0) as ro:
        ro.rollout(model, datas, initial, control[:, :20], state=out_state[:, :20])
        t_raw, times_raw, cpu_raw = _best_time(
            lambda: ro.rollout(model, datas, initial, control, state=out_state), args.repeats
        )
    raw_sps = B * T / t_raw

    result = {
        "prefrl_env_steps_per_s": round(prefrl_sps, 1),
        "gymnasium_env_steps_per_s": round(gym_sps, 1),
        "raw_mujoco_env_steps_per_s": round(raw_sps, 1),
        "ratio_vs_gymnasium": round(prefrl_sps / gym_sps, 3),
        "ratio_vs_raw_mujoco": round(prefrl_sps / raw_sps, 3),
        "env_steps_per_cpu_s": {
            "prefrl": round(B * T / cpu_prefrl, 1),
            "gymnasium": round(G * gym_steps / cpu_gym, 1),
            "raw_mujoco": round(B * T / cpu_raw, 1),
        },
        "num_envs": B,
        "steps": T,
        "gym_num_envs": G,
        "gym_steps": gym_steps,
        "threads": threads,
        "repeats": args.repeats,
        "times_s": {"prefrl": times_prefrl, "gymnasium": times_gym, "raw_mujoco": times_raw},
        "policy": "GaussianPolicy hidden=(64, 64), jitted, one call per step for the batch",
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "jax": jax.__version__,
            "mujoco": mujoco.__version__,
            "gymnasium": gymnasium.__version__,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    atomic_write_json(args.out, result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
