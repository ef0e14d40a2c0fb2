"""prefrl.data.pairs: the one gather, split and validation of labelled queries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prefrl.data import pairs
from prefrl.types import PairBatch, PreferenceDataset, Segments


def pool(n=5, k=3, obs=2, act=1):
    obs_ = np.arange(n * k * obs, dtype=np.float32).reshape(n, k, obs)
    return pairs.Pool(obs_, -obs_[..., :act], np.ones((n, k), np.float32))


def test_gather_host_and_jit_agree():
    p = pool()
    first, second, label = np.array([0, 4]), np.array([2, 1]), np.array([1.0, 0.0])
    host = pairs.gather(p, first, second, label)
    traced = jax.jit(lambda f, s, y: pairs.gather(pairs.Pool(*map(jnp.asarray, p)), f, s, y))(
        first, second, label)
    for a, b in zip(host, traced, strict=True):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(host.obs_1, p.obs[[0, 4]])
    np.testing.assert_array_equal(host.action_2, p.action[[2, 1]])
    assert host.label.dtype == jnp.float32 and host.weight is None


def test_from_dataset_weights_skipped_queries_zero():
    seg = Segments(**{f: np.zeros((4, 2, 1), np.float32) for f in ("obs", "action", "next_obs")},
                   reward=np.zeros((4, 2), np.float32), mask=np.ones((4, 2), np.float32),
                   qpos=np.zeros((4, 2, 1)), qvel=np.zeros((4, 2, 1)), x_velocity=np.zeros((4, 2)),
                   source=np.zeros((4, 2), np.int32))
    data = PreferenceDataset(segments=seg, first=np.array([0, 1, 2]), second=np.array([3, 2, 0]),
                             labels={"pr": np.array([1.0, 0.0, 0.5], np.float32)},
                             label_mask={"pr": np.array([True, False, True])})
    batch = pairs.from_dataset(data, "pr", indices=np.array([1, 2]))
    np.testing.assert_array_equal(batch.weight, [0.0, 1.0])
    np.testing.assert_array_equal(batch.label, [0.0, 0.5])
    with pytest.raises(ValueError, match="no labels named 'regret'"):
        pairs.from_dataset(data, "regret")


def test_split_is_seeded_disjoint_and_covers_everything():
    parts = pairs.split(100, {"test": 0.2, "valid": 0.1}, 3)
    # 20 test, round(0.1 · 80) = 8 valid, the rest train; every part sorted.
    assert [len(parts[k]) for k in ("test", "valid", "train")] == [20, 8, 72]
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(100))
    assert all(np.all(np.diff(v) > 0) for v in parts.values())
    again = pairs.split(100, {"test": 0.2, "valid": 0.1}, 3)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    # ordered=False keeps the permutation's order: the same sets, shuffled.
    shuffled = pairs.split(100, {"test": 0.2, "valid": 0.1}, 3, ordered=False)
    assert all(np.array_equal(np.sort(shuffled[k]), parts[k]) for k in parts)
    assert not np.array_equal(shuffled["train"], parts["train"])
    # min_part: a small part still gets one index.
    assert len(pairs.split(4, {"valid": 0.1}, 0, min_part=1)["valid"]) == 1
    with pytest.raises(ValueError, match="fewer than 2"):
        pairs.split(3, {"test": 0.5, "valid": 0.5}, 0, min_rest=2)


def test_split_by_segments_keeps_test_segments_unseen():
    rng = np.random.default_rng(0)
    first, second = rng.integers(0, 40, 2000), rng.integers(0, 40, 2000)
    train, test = pairs.split_by_segments(jax.random.key(0), 40, first, second, 100, 50)
    seen = set(first[train]) | set(second[train])
    assert not seen & (set(first[test]) | set(second[test]))
    with pytest.raises(ValueError, match="held-out segments"):
        pairs.split_by_segments(jax.random.key(0), 40, first, second, 100, 10_000)


def test_validate_checks_shapes_and_values():
    p = pool()
    good = pairs.gather(p, np.array([0, 1]), np.array([2, 3]), np.array([1.0, 0.0]))
    pairs.validate(good)
    assert pairs.dims(good) == (3, 2, 1)
    with pytest.raises(ValueError, match="single-class"):
        pairs.validate(good._replace(label=jnp.ones(2)))
    with pytest.raises(ValueError, match="label must be"):
        pairs.validate(good._replace(label=jnp.ones(3)))
    bad = PairBatch(*good[:6], good.label, weight=jnp.zeros(2))
    with pytest.raises(ValueError, match="weight 0"):
        pairs.validate(bad)
