"""prefrl.data.labelling: queries drawn from a pool, labelled by every configured oracle."""

import numpy as np
import pytest
from labelling_data import write_tiny_trajectory


def test_label_config_rejects_unknown_oracle():
    from prefrl.data.labelling import LabelConfig

    with pytest.raises(ValueError, match=r"unknown oracle\(s\) \['human'\]"):
        LabelConfig(oracles=("human",))

def test_same_start_pairing(tmp_path):
    from prefrl.data.labelling import LabelConfig, label_pool
    from prefrl.data.segments import segment

    traj = write_tiny_trajectory(tmp_path / "traj.npz")
    # Column 1 replays column 0's physics states (as if branched from the same resets).
    qpos = np.asarray(traj.qpos).copy()
    qvel = np.asarray(traj.qvel).copy()
    qpos[:, 1], qvel[:, 1] = qpos[:, 0], qvel[:, 0]
    traj = traj.replace(qpos=qpos, qvel=qvel)
    pool = segment(traj, 5, 5)
    config = LabelConfig(budget=50, pairing="same_start", segment_length=5, stride=5)
    data, _ = label_pool(config, pool)
    seg = data.segments
    first, second = np.asarray(data.first), np.asarray(data.second)
    np.testing.assert_array_equal(np.asarray(seg.qpos)[first, 0], np.asarray(seg.qpos)[second, 0])
    src = np.asarray(seg.source)
    # Matching starts come from the two columns at the same start time.
    assert np.all(src[first, 1] == src[second, 1]) and np.all(src[first, 0] != src[second, 0])
    # Starts in both columns: 0, 5, 10, 15, 20, 25 (column 1's reset after step 14 ends the
    # segment at 10 exactly and restarts the grid at 15), so 6 matching pairs.
    assert len(first) == 6
