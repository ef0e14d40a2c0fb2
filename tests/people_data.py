"""A tiny, real half-cheetah preference dataset for the rendering and labelling tests.

Two environments, 24 random-action steps each (MuJoCo's C engine, well under a
second), cut into 6 segments of 8 steps; 5 queries with a partial-return
label (the segments' summed reward). Real ``qpos``/``qvel``, so the videos
show a real cheetah.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

SEGMENT_LENGTH = 8
NUM_QUERIES = 5


def make_people_dataset():
    from prefrl.envs import make_task

    from prefrl.data.segments import segment
    from prefrl.rollout import BatchedEnv, random_policy
    from prefrl.types import PreferenceDataset

    spec = make_task("run")
    with BatchedEnv(spec, num_envs=2, seed=0, num_threads=1) as env:
        env.reset()
        traj = env.rollout(random_policy(spec.act_dim), 3 * SEGMENT_LENGTH, jax.random.key(0))
    segs = segment(traj, SEGMENT_LENGTH, SEGMENT_LENGTH)
    n = segs.num_segments
    first = np.array([0, 1, 2, 3, 4][:NUM_QUERIES]) % n
    second = (first + 1 + np.arange(NUM_QUERIES) % (n - 1)) % n
    second = np.where(second == first, (first + 1) % n, second)
    ret = np.asarray(segs.reward).sum(1)
    label = np.where(ret[first] > ret[second], 1.0, 0.0).astype(np.float32)
    return PreferenceDataset(segments=segs, first=jnp.asarray(first, jnp.int32),
                             second=jnp.asarray(second, jnp.int32),
                             labels={"partial_return": jnp.asarray(label)},
                             label_mask={"partial_return": jnp.ones(NUM_QUERIES, bool)})


def write_people_dataset(path: Path) -> Path:
    from prefrl.data import dataset as dataset_lib

    return dataset_lib.save(path, make_people_dataset(), task="run")
