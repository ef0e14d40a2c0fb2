"""Preference-dataset files: exact round trip, atomic write, one test per malformed input."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from prefrl.data import dataset as ds
from prefrl.io import FileFormatError, save_npz
from prefrl.types import PreferenceDataset, Segments


def make_dataset(n=6, k=4, q=5, seed=0):
    rng = np.random.default_rng(seed)
    f32 = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
    obs = f32(n, k + 1, 3)
    segs = Segments(
        obs=obs[:, :-1],
        action=f32(n, k, 2),
        reward=f32(n, k),
        next_obs=obs[:, 1:],
        mask=jnp.ones((n, k), jnp.float32),
        x_velocity=f32(n, k),
        qpos=f32(n, k, 4),
        qvel=f32(n, k, 3),
        source=jnp.asarray(rng.integers(0, 10, size=(n, 2)), jnp.int32),
    )
    first = jnp.asarray(rng.integers(0, n, size=q), jnp.int32)
    second = jnp.asarray((np.asarray(first) + 1) % n, jnp.int32)
    labels = {
        "partial_return": jnp.asarray(rng.choice([0.0, 0.5, 1.0], size=q), jnp.float32),
        "regret": jnp.asarray(rng.choice([0.0, 1.0], size=q), jnp.float32),
    }
    mask = {"partial_return": jnp.ones(q, bool), "regret": jnp.asarray(np.arange(q) != 2)}
    return PreferenceDataset(segs, first, second, labels, mask)


HEADER = dict(
    task="run",
    oracles={"partial_return": {"model": "partial_return"}, "regret": {"model": "regret"}},
    seeds={"partial_return": 1, "regret": 2},
    meta={"trajectory": "t.npz"},
)


def assert_same(a: PreferenceDataset, b: PreferenceDataset):
    for field in ds.SEGMENT_FIELDS:
        x, y = np.asarray(getattr(a.segments, field)), np.asarray(getattr(b.segments, field))
        assert x.dtype == y.dtype, field
        np.testing.assert_array_equal(x, y, err_msg=field)
    np.testing.assert_array_equal(np.asarray(a.first), np.asarray(b.first))
    np.testing.assert_array_equal(np.asarray(a.second), np.asarray(b.second))
    assert a.labels.keys() == b.labels.keys()
    for name in a.labels:
        np.testing.assert_array_equal(np.asarray(a.labels[name]), np.asarray(b.labels[name]))
        np.testing.assert_array_equal(
            np.asarray(a.label_mask[name]), np.asarray(b.label_mask[name])
        )


def test_round_trip_is_exact(tmp_path):
    data = make_dataset()
    path = ds.save(tmp_path / "d.npz", data, **HEADER)
    loaded, header = ds.load(path)
    assert_same(data, loaded)
    assert header["task"] == "run"
    assert header["schema_version"] == ds.SCHEMA_VERSION
    assert header["segment_length"] == 4
    assert header["num_queries"] == 5
    assert header["labels"] == ["partial_return", "regret"]
    assert header["oracles"]["regret"] == {"model": "regret"}
    assert header["seeds"] == {"partial_return": 1, "regret": 2}
    # Atomic write: no temporary file is left beside the result.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]


def raw_arrays(data=None):
    return ds._to_arrays(data or make_dataset())


def raw_header(**overrides):
    header = {
        "kind": ds.KIND,
        "schema_version": ds.SCHEMA_VERSION,
        "task": "run",
        "labels": ["partial_return", "regret"],
    }
    header.update(overrides)
    return header


def write_raw(path, arrays, header=None):
    save_npz(path, arrays, header or raw_header())
    return path


def test_missing_array(tmp_path):
    arrays = raw_arrays()
    del arrays["second"]
    path = write_raw(tmp_path / "d.npz", arrays)
    with pytest.raises(FileFormatError, match=r"missing array\(s\) \['second'\]"):
        ds.load(path)


def test_missing_label_array(tmp_path):
    arrays = raw_arrays()
    del arrays["label.regret"]
    path = write_raw(tmp_path / "d.npz", arrays)
    with pytest.raises(FileFormatError, match="missing array 'label.regret'"):
        ds.load(path)


def test_first_second_shape_mismatch(tmp_path):
    arrays = raw_arrays()
    arrays["second"] = arrays["second"][:-1]
    path = write_raw(tmp_path / "d.npz", arrays)
    with pytest.raises(FileFormatError, match="first and second must be equal-length"):
        ds.load(path)


def test_segment_field_shape_mismatch(tmp_path):
    arrays = raw_arrays()
    arrays["segments.reward"] = arrays["segments.reward"][:, :-1]
    path = write_raw(tmp_path / "d.npz", arrays)
    with pytest.raises(FileFormatError, match="segments.reward has leading shape"):
        ds.load(path)


def test_label_shape_mismatch(tmp_path):
    arrays = raw_arrays()
    arrays["label.regret"] = arrays["label.regret"][:-1]
    path = write_raw(tmp_path / "d.npz", arrays)
    with pytest.raises(FileFormatError, match=r"label.regret has shape \(4,\), expected \[5\]"):
        ds.load(path)


def test_nan_in_segments(tmp_path):
    arrays = raw_arrays()
    arrays["segments.obs"] = arrays["segments.obs"].copy()
    arrays["segments.obs"][1, 2, 0] = np.nan
    path = write_raw(tmp_path / "d.npz", arrays)
    with pytest.raises(FileFormatError, match="segments.obs contains NaN or inf"):
        ds.load(path)


def test_inf_in_labels(tmp_path):
    arrays = raw_arrays()
    arrays["label.regret"] = arrays["label.regret"].copy()
    arrays["label.regret"][0] = np.inf
    path = write_raw(tmp_path / "d.npz", arrays)
    with pytest.raises(FileFormatError, match="label.regret contains NaN or inf"):
        ds.load(path)


def test_label_outside_allowed_values(tmp_path):
    arrays = raw_arrays()
    arrays["label.partial_return"] = arrays["label.partial_return"].copy()
    arrays["label.partial_return"][3] = 0.3
    path = write_raw(tmp_path / "d.npz", arrays)
    with pytest.raises(FileFormatError, match=r"label.partial_return holds 0.3.*0.5 \(tie\)"):
        ds.load(path)


@pytest.mark.parametrize("bad", [-1, 6])
def test_segment_index_out_of_range(tmp_path, bad):
    arrays = raw_arrays()
    arrays["first"] = arrays["first"].copy()
    arrays["first"][2] = bad
    path = write_raw(tmp_path / "d.npz", arrays)
    with pytest.raises(FileFormatError, match=rf"first holds segment index {bad} out of range"):
        ds.load(path)


def test_unknown_schema_version(tmp_path):
    path = write_raw(tmp_path / "d.npz", raw_arrays(), raw_header(schema_version=99))
    with pytest.raises(FileFormatError, match="unknown schema_version 99"):
        ds.load(path)


def test_wrong_kind(tmp_path):
    path = write_raw(tmp_path / "d.npz", raw_arrays(), raw_header(kind="trajectory"))
    with pytest.raises(FileFormatError, match="expected a 'preference_dataset' file"):
        ds.load(path)


def test_truncated_file(tmp_path):
    path = ds.save(tmp_path / "d.npz", make_dataset(), **HEADER)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="not a readable .npz file"):
        ds.load(path)


def test_not_an_npz_file(tmp_path):
    path = tmp_path / "d.npz"
    path.write_text("obs_1,obs_2,label\n1,2,0\n")
    with pytest.raises(FileFormatError, match="not a readable .npz file"):
        ds.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        ds.load(tmp_path / "absent.npz")


def test_save_refuses_invalid_labels(tmp_path):
    data = make_dataset()
    bad = PreferenceDataset(
        data.segments, data.first, data.second,
        {**data.labels, "regret": data.labels["regret"].at[0].set(0.7)}, data.label_mask,
    )
    with pytest.raises(FileFormatError, match="label.regret holds 0.7"):
        ds.save(tmp_path / "d.npz", bad, **HEADER)
    assert not (tmp_path / "d.npz").exists()


def test_header_is_json_with_oracle_config(tmp_path):
    path = ds.save(tmp_path / "d.npz", make_dataset(), **HEADER)
    with np.load(path, allow_pickle=False) as npz:
        header = json.loads(npz["__header__"].tobytes().decode())
    assert header["kind"] == "preference_dataset"
    assert set(header) >= {"task", "segment_length", "oracles", "seeds", "schema_version"}


# --- flat (CPL / CS234) format ---------------------------------------------------------------


def test_to_flat_flips_the_label_convention():
    data = make_dataset()
    flat = ds.to_flat(data, "partial_return")
    # Ours: 1 = first preferred. Flat: 1 = second preferred.
    np.testing.assert_array_equal(flat["label"], 1.0 - np.asarray(data.labels["partial_return"]))
    # k + 1 rows: s_0 … s_k, so the last obs row is the final state.
    q0 = int(data.first[0])
    np.testing.assert_array_equal(flat["obs_1"][0, -1], np.asarray(data.segments.final_obs[q0]))
    assert flat["action_1"].shape == (5, 5, 2)
    np.testing.assert_array_equal(flat["action_1"][:, -1], 0.0)


def test_to_flat_drops_skipped_queries():
    data = make_dataset()
    flat = ds.to_flat(data, "regret")  # query 2 was skipped by this oracle
    assert flat["label"].shape == (4,)


def test_flat_round_trip(tmp_path):
    data = make_dataset()
    path = ds.export_flat(tmp_path / "flat.npz", data, "partial_return")
    back = ds.import_flat(path)
    np.testing.assert_array_equal(
        np.asarray(back.labels["label"]), np.asarray(data.labels["partial_return"])
    )
    first = np.asarray(data.first)
    for field in ("obs", "action", "reward", "next_obs"):
        got = np.asarray(getattr(back.segments, field))[np.asarray(back.first)]
        want = np.asarray(getattr(data.segments, field))[first]
        np.testing.assert_array_equal(got, want, err_msg=field)


def test_import_cs234_style_file(tmp_path):
    """CS234's prefs-hopper layout: no rewards, label 0 = first preferred (ours: 1)."""
    rng = np.random.default_rng(0)
    arrays = {
        "obs_1": rng.normal(size=(3, 5, 11)),
        "obs_2": rng.normal(size=(3, 5, 11)),
        "action_1": rng.normal(size=(3, 5, 3)),
        "action_2": rng.normal(size=(3, 5, 3)),
        "label": np.array([0.0, 1.0, 0.5]),
    }
    np.savez(tmp_path / "prefs.npz", **arrays)
    data = ds.import_flat(tmp_path / "prefs.npz")
    np.testing.assert_array_equal(np.asarray(data.labels["label"]), [1.0, 0.0, 0.5])
    assert data.segments.obs.shape == (6, 4, 11)
    np.testing.assert_allclose(
        np.asarray(data.segments.obs[data.second[1]]), arrays["obs_2"][1, :-1], rtol=1e-6
    )
    # The imported dataset is a valid native file.
    ds.save(tmp_path / "native.npz", data, task="hopper")
    ds.load(tmp_path / "native.npz")


def test_import_flat_side_shape_mismatch(tmp_path):
    arrays = {
        "obs_1": np.zeros((3, 5, 2)), "obs_2": np.zeros((3, 4, 2)),
        "action_1": np.zeros((3, 5, 1)), "action_2": np.zeros((3, 5, 1)),
        "label": np.zeros(3),
    }
    with pytest.raises(FileFormatError, match=r"obs_1 shape \(3, 5, 2\) != obs_2 shape"):
        ds.from_flat(arrays)


def test_import_flat_missing_label():
    arrays = {k: np.zeros((3, 5, 2)) for k in ("obs_1", "obs_2", "action_1", "action_2")}
    with pytest.raises(FileFormatError, match=r"missing array\(s\) \['label'\]"):
        ds.from_flat(arrays)


def test_import_flat_bad_label_value():
    arrays = {k: np.zeros((3, 5, 2)) for k in ("obs_1", "obs_2", "action_1", "action_2")}
    arrays["label"] = np.array([0.0, 0.2, 1.0])
    with pytest.raises(FileFormatError, match="label holds 0.2"):
        ds.from_flat(arrays)


# --- `prefrl label` end to end -----------------------------------------------------------------


def write_tiny_trajectory(path, num_steps=30, num_envs=2, seed=0):
    from prefrl.data.trajectories import save_trajectory
    from prefrl.types import Trajectory

    rng = np.random.default_rng(seed)
    t, b = num_steps, num_envs
    obs = rng.normal(size=(t + 1, b, 17)).astype(np.float32)
    truncated = np.zeros((t, b), bool)
    truncated[14, 1] = True  # column 1 resets after step 14
    traj = Trajectory(
        obs=obs[:-1],
        action=rng.uniform(-1, 1, size=(t, b, 6)).astype(np.float32),
        reward=rng.normal(size=(t, b)).astype(np.float32),
        next_obs=obs[1:],
        terminated=np.zeros((t, b), bool),
        truncated=truncated,
        x_velocity=rng.normal(size=(t, b)).astype(np.float32),
        qpos=rng.normal(size=(t, b, 9)).astype(np.float32),
        qvel=rng.normal(size=(t, b, 9)).astype(np.float32),
    )
    save_trajectory(path, traj, task="run")
    return traj


def fake_value_fn(obs):
    # V_E(s) = first observation coordinate: enough to check the endpoint arithmetic.
    return jnp.asarray(obs)[..., 0]


def test_label_command_end_to_end(tmp_path, monkeypatch, capsys):
    from prefrl import checkpoints, cli

    # A stand-in critic: V(s) = obs[0], recorded with γ = 0.9.
    monkeypatch.setattr(checkpoints, "load_value_fn", lambda path, obs_dim=None: fake_value_fn)
    monkeypatch.setattr(checkpoints, "load_ppo", lambda path: (None, {"discount": 0.9}))
    write_tiny_trajectory(tmp_path / "traj.npz")
    out = tmp_path / "prefs.npz"
    rc = cli.main([
        "label", "--trajectory", str(tmp_path / "traj.npz"), "--output", str(out),
        "--segment-length", "5", "--stride", "5", "--budget", "40", "--seed", "3",
        "--oracles", "partial_return", "regret", "--expert", "expert.ckpt",
        "--regret-discount", "0.9",
    ])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["queries"] == 40
    data, header = ds.load(out)
    assert header["task"] == "run" and header["segment_length"] == 5
    assert header["oracles"]["regret"]["discount"] == 0.9
    seg = data.segments
    reward = np.asarray(seg.reward, np.float64)
    first, second = np.asarray(data.first), np.asarray(data.second)
    assert np.all(first != second)
    # Partial return (γ_p = 1, β = 0): label = 1 if Σ r¹ > Σ r², 0 if smaller.
    pr = reward.sum(1)
    np.testing.assert_array_equal(
        np.asarray(data.labels["partial_return"]), (pr[first] > pr[second]).astype(np.float32)
    )
    # Regret endpoint form: Σ 0.9^t r_t + 0.9^5 V(s_5) − V(s_0), V = obs[0].
    disc = 0.9 ** np.arange(5)
    v0 = np.asarray(seg.obs[:, 0, 0], np.float64)
    vk = np.asarray(seg.final_obs[:, 0], np.float64)
    rg = reward @ disc + 0.9**5 * vk - v0
    np.testing.assert_array_equal(
        np.asarray(data.labels["regret"]), (rg[first] > rg[second]).astype(np.float32)
    )
    # No segment crosses column 1's reset after step 14.
    assert all(
        not (b == 1 and t < 15 < t + 5) for b, t in np.asarray(seg.source).tolist()
    )


def test_label_command_is_deterministic(tmp_path):
    from prefrl.commands.label import LabelCommandConfig, run_config

    write_tiny_trajectory(tmp_path / "traj.npz")
    kwargs = dict(trajectory=str(tmp_path / "traj.npz"), segment_length=4, stride=2, budget=30,
                  temperature=1.0, mistake_prob=0.1, seed=5)
    run_config(LabelCommandConfig(output=str(tmp_path / "a.npz"), **kwargs))
    run_config(LabelCommandConfig(output=str(tmp_path / "b.npz"), **kwargs))
    a, _ = ds.load(tmp_path / "a.npz")
    b, _ = ds.load(tmp_path / "b.npz")
    assert_same(a, b)


def test_label_command_regret_without_expert_is_a_clear_error(tmp_path, capsys):
    from prefrl import cli

    write_tiny_trajectory(tmp_path / "traj.npz")
    rc = cli.main([
        "label", "--trajectory", str(tmp_path / "traj.npz"), "--output",
        str(tmp_path / "o.npz"), "--oracles", "regret", "--segment-length", "5",
    ])
    assert rc == 2
    assert "regret oracle needs an expert critic: pass --expert PATH" in capsys.readouterr().err
    assert not (tmp_path / "o.npz").exists()


def test_label_config_rejects_unknown_oracle():
    from prefrl.data.labelling import LabelConfig

    with pytest.raises(ValueError, match=r"unknown oracle\(s\) \['human'\]"):
        LabelConfig(oracles=("human",))


def test_label_command_same_start_pairing(tmp_path):
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
