"""Preference-dataset files: exact round trip, atomic write, one test per malformed input."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from labelling_data import assert_same

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
    task="synthetic",
    oracles={"partial_return": {"model": "partial_return"}, "regret": {"model": "regret"}},
    seeds={"partial_return": 1, "regret": 2},
    meta={"trajectory": "t.npz"},
)


def test_round_trip_is_exact(tmp_path):
    data = make_dataset()
    path = ds.save(tmp_path / "d.npz", data, **HEADER)
    loaded, header = ds.load(path)
    assert_same(data, loaded)
    assert header["task"] == "synthetic"
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
        "task": "synthetic",
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
    # The imported dataset is a valid native file (of a task registered as another env's).
    from prefrl import schema

    schema.register_task_name("hopper")
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


# ---------------------------------------------------------------------------
# Meaning, not just shape: sizes vs the task, header vs arrays, self-pairs, padding.


def test_sizes_that_disagree_with_the_header_task_are_refused(tmp_path):
    data = make_dataset()  # observations of size 3, actions of size 2
    with pytest.raises(FileFormatError, match="observation size 3 disagrees with the header's "
                                              "task 'run' \\(observations of size 17\\)"):
        ds.save(tmp_path / "d.npz", data, **{**HEADER, "task": "run"})
    assert list(tmp_path.iterdir()) == []  # refused before writing
    write_raw(tmp_path / "raw.npz", raw_arrays(), raw_header(task="target-speed"))
    with pytest.raises(FileFormatError, match="observation size 3 disagrees"):
        ds.load(tmp_path / "raw.npz")


def test_header_that_disagrees_with_its_arrays(tmp_path):
    for key, value in (("num_queries", 7), ("num_segments", 2), ("segment_length", 9)):
        write_raw(tmp_path / "d.npz", raw_arrays(), raw_header(**{key: value}))
        with pytest.raises(FileFormatError, match=f"header says {key} = {value}, but the "
                                                  "arrays have"):
            ds.load(tmp_path / "d.npz")
    write_raw(tmp_path / "d.npz", raw_arrays(), raw_header(labels=["regret"]))
    with pytest.raises(FileFormatError, match=r"labels \['partial_return'\] that the header"):
        ds.load(tmp_path / "d.npz")


def test_a_query_comparing_a_segment_with_itself(tmp_path):
    data = make_dataset()
    data = data.replace(second=data.second.at[3].set(data.first[3]))
    with pytest.raises(FileFormatError, match="1 queries compare a segment with itself "
                                              "\\(query 3"):
        ds.save(tmp_path / "d.npz", data, **HEADER)
    write_raw(tmp_path / "raw.npz", raw_arrays(data))
    with pytest.raises(FileFormatError, match="compare a segment with itself"):
        ds.load(tmp_path / "raw.npz")


def test_all_padding_segments_error_when_used_and_warn_when_not(tmp_path):
    data = make_dataset()
    used = int(data.first[0])
    mask = np.ones((6, 4), np.float32)
    mask[used] = 0.0
    with pytest.raises(FileFormatError, match="a segment whose mask is all zero"):
        ds.save(tmp_path / "d.npz", data.replace(segments=data.segments.replace(mask=mask)),
                **HEADER)
    unused = sorted(set(range(6)) - set(np.asarray(data.first).tolist())
                    - set(np.asarray(data.second).tolist()))
    assert unused  # make_dataset leaves a segment out of every query
    mask = np.ones((6, 4), np.float32)
    mask[unused[0]] = 0.0
    with pytest.warns(UserWarning, match="1 segment\\(s\\) have an all-zero mask; no query"):
        ds.save(tmp_path / "d.npz", data.replace(segments=data.segments.replace(mask=mask)),
                **HEADER)
