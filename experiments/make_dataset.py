"""Merge trajectory files of several behaviour policies into one (for ``prefrl label``).

``prefrl label`` reads one trajectory file; the 2×2 study's pool comes from
several checkpoints, so their ``prefrl collect`` files are joined along the
batch axis (:func:`prefrl.data.trajectories.concatenate_trajectories`). All
files must be of the same task (same reward parameters) and number of steps.
The merged header lists every source file with its header (policy, seed).

The target-speed dataset of ``experiments/results/two_by_two_target_speed.md``::

    E=experiments/experts; S=$E/target-speed/snapshots; D=/tmp/ts_data; mkdir -p $D
    i=0
    for ck in $S/step_000040960.npz $S/step_000098304.npz $S/step_000200704.npz \\
              $S/step_000499712.npz $S/step_000999424.npz $E/target-speed/final.npz \\
              $E/run/final.npz; do
      prefrl collect --task target-speed --checkpoint $ck --num-envs 8 --steps 500 --seed $i \\
          --out $D/traj_$i.npz
      i=$((i+1))
    done
    prefrl collect --task target-speed --num-envs 8 --steps 500 --seed 7 --out $D/traj_7.npz
    python experiments/make_dataset.py --out $D/merged.npz $D/traj_{0..7}.npz
    prefrl label --trajectory $D/merged.npz --output experiments/data/target-speed.npz \\
        --segment-length 50 --stride 50 --budget 10000 --seed 0 \\
        --oracles partial_return regret --expert $E/target-speed/final.npz --regret-discount 0.99

Prints one JSON line (output file, sources, shape).
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def merge(paths: list[str], out: str) -> dict:
    """Concatenate the trajectory files ``paths`` along the batch axis into ``out``."""
    from prefrl.data.trajectories import concatenate_trajectories, load_trajectory, save_trajectory

    if not paths:
        raise ValueError("give at least one trajectory file")
    loaded = [load_trajectory(p) for p in paths]
    tasks = {json.dumps({"task": h["task"], "task_params": h.get("task_params", {})},
                        sort_keys=True) for _, h in loaded}
    if len(tasks) != 1:
        raise ValueError(f"trajectory files are of different tasks: {sorted(tasks)}")
    traj = concatenate_trajectories([t for t, _ in loaded])
    header = loaded[0][1]
    sources = [{"file": p, "num_envs": int(np.shape(t.obs)[1]),
                **{k: v for k, v in h.items() if k not in ("kind", "schema_version")}}
               for p, (t, h) in zip(paths, loaded, strict=True)]
    save_trajectory(out, traj, {"task": header["task"],
                                "task_params": header.get("task_params", {}),
                                "policy": "merged", "sources": sources})
    return {"out": out, "sources": paths, "num_steps": int(np.shape(traj.obs)[0]),
            "num_envs": int(np.shape(traj.obs)[1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trajectories", nargs="+", help="trajectory files (prefrl collect)")
    parser.add_argument("--out", required=True, help="merged trajectory file (.npz)")
    args = parser.parse_args(argv)
    print(json.dumps(merge(args.trajectories, args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
