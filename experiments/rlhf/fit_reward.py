"""RLHF stage, step 1: preference data from the mixed-quality PPO snapshots → a learned r̂.

    python experiments/rlhf/fit_reward.py --task target-speed --out experiments/rlhf/target-speed

Rolls out every snapshot in ``experiments/experts/<task>/snapshots`` (stochastic
policy, ``--envs`` environments × ``--steps`` steps each), cuts segments of
``--length`` steps, pairs them uniformly, labels them with the deterministic
partial-return oracle on the true reward, fits a reward-model ensemble
(``prefrl.learners.reward_model``) and saves it as ``rm.npz``. Prints one JSON
line (held-out accuracy, correlation of r̂ with the true reward).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from prefrl import checkpoints, oracles
from prefrl.data import pairs
from prefrl.data.queries import uniform_pairs
from prefrl.data.segments import segment
from prefrl.evaluation import pearson
from prefrl.learners import reward_model
from prefrl.loops import fit as reward_fit
from prefrl.rollout import BatchedEnv, stack_trajectories


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--task", default="target-speed")
    p.add_argument("--out", required=True)
    p.add_argument("--envs", type=int, default=8)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--length", type=int, default=50)
    p.add_argument("--queries", type=int, default=3000)
    p.add_argument("--fit-steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    snapshots = sorted(Path(f"experiments/experts/{args.task}/snapshots").glob("step_*.npz"))
    trajs = []
    for i, snap in enumerate(snapshots):
        policy_fn, _ = checkpoints.load_policy(snap, deterministic=False)
        with BatchedEnv(args.task, num_envs=args.envs, seed=args.seed * 100 + i,
                        dtype=np.float32) as env:
            env.reset()
            trajs.append(env.rollout(policy_fn, args.steps, jax.random.key(args.seed * 100 + i)))
    traj = stack_trajectories(trajs, axis=1)
    segs = segment(traj, args.length, args.length // 2)
    key = jax.random.key(args.seed)
    pair_key, label_key, fit_key = jax.random.split(key, 3)
    first, second = uniform_pairs(pair_key, segs.num_segments, args.queries)
    labels = oracles.label_queries(oracles.OracleConfig(), label_key, segs, first, second)
    first, second = np.asarray(first), np.asarray(second)
    obs, action, mask = (np.asarray(x, np.float32) for x in (segs.obs, segs.action, segs.mask))

    def batch(idx: np.ndarray) -> reward_model.PairBatch:
        return reward_model.PairBatch(
            obs_1=jnp.asarray(obs[first[idx]]), action_1=jnp.asarray(action[first[idx]]),
            mask_1=jnp.asarray(mask[first[idx]]),
            obs_2=jnp.asarray(obs[second[idx]]), action_2=jnp.asarray(action[second[idx]]),
            mask_2=jnp.asarray(mask[second[idx]]),
            label=jnp.asarray(np.asarray(labels.label)[idx], jnp.float32),
        )

    num_valid = args.queries // 10
    train, valid = batch(np.arange(num_valid, args.queries)), batch(np.arange(num_valid))
    pairs.validate(train)
    config = reward_model.RewardModelConfig(hidden=(64, 64), num_steps=args.fit_steps)
    result = reward_fit.fit(fit_key, config, train, valid)
    reward_fit.check_finite(result.metrics)
    state = result.state
    model = reward_model.model(config)
    checkpoints.save_reward_model(
        out / "rm.npz", model, state, obs_dim=int(obs.shape[-1]), act_dim=int(action.shape[-1]),
        segment_length=int(obs.shape[1]),
        extra={"task": args.task, "snapshots": [str(s) for s in snapshots]})
    r_hat = reward_model.reward_fn(model, state)
    flat_obs = jnp.asarray(np.asarray(traj.obs).reshape(-1, traj.obs.shape[-1]))
    flat_act = jnp.asarray(np.asarray(traj.action).reshape(-1, traj.action.shape[-1]))
    corr = pearson(np.asarray(r_hat(flat_obs, flat_act)), np.asarray(traj.reward).reshape(-1))
    summary = {
        "task": args.task,
        "segments": int(segs.num_segments),
        "queries": args.queries,
        "valid_accuracy": float(np.max(np.asarray(result.metrics["valid_accuracy"]).mean(-1))),
        "pearson_rhat_r": corr,
        "rm": str(out / "rm.npz"),
    }
    (out / "rm_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
