"""Labelled queries as pair batches: the one gather, the one split, the one validation.

A query is a pair of indices into a segment pool ``[N, k, …]``; learners
consume :class:`prefrl.types.PairBatch` (two stacks of segments plus labels).
Every place that turns a pool and indices into a batch, splits queries into
train/validation/test, or checks labelled pairs on the host calls this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from prefrl.types import PairBatch, PreferenceDataset

Array = jax.Array


class Pool(NamedTuple):
    """The arrays of a segment pool that :func:`gather` reads (any object with them will do)."""

    obs: Any  # [N, k, obs]
    action: Any  # [N, k, act]
    mask: Any  # [N, k]


def gather(
    segments: Any,
    first: Any,
    second: Any,
    label: Any,
    weight: Any | None = None,
) -> PairBatch:
    """``PairBatch`` of queries ``(segments[first[q]], segments[second[q]])``.

    ``segments`` needs ``obs [N, k, obs]``, ``action [N, k, act]`` and
    ``mask [N, k]`` (a :class:`prefrl.types.Segments`, or any object with
    them); ``first``/``second``/``label`` are ``[Q]``. Works on NumPy arrays
    (host) and on traced arrays inside ``jit`` alike; the result is float32.
    """
    xp = jnp if any(isinstance(x, jax.Array) for x in (first, second, segments.obs)) else np
    obs = xp.asarray(segments.obs, np.float32)
    action = xp.asarray(segments.action, np.float32)
    mask = xp.asarray(segments.mask, np.float32)
    first, second = xp.asarray(first), xp.asarray(second)
    final = None  # s_k of each segment, where the pool keeps next states
    if getattr(segments, "next_obs", None) is not None:
        final = xp.asarray(segments.next_obs[:, -1], np.float32)
    return PairBatch(
        obs_1=jnp.asarray(obs[first]), action_1=jnp.asarray(action[first]),
        mask_1=jnp.asarray(mask[first]),
        obs_2=jnp.asarray(obs[second]), action_2=jnp.asarray(action[second]),
        mask_2=jnp.asarray(mask[second]),
        label=jnp.asarray(xp.asarray(label, np.float32)),
        weight=None if weight is None else jnp.asarray(xp.asarray(weight, np.float32)),
        final_obs_1=None if final is None else jnp.asarray(final[first]),
        final_obs_2=None if final is None else jnp.asarray(final[second]),
    )


def from_dataset(
    dataset: PreferenceDataset, label: str, indices: Any | None = None
) -> PairBatch:
    """A :class:`PairBatch` of a dataset's queries under one oracle's labels.

    ``indices`` (optional ``[B]``) selects queries; queries the oracle skipped
    (``label_mask`` False) get weight 0, every other query weight 1.
    """
    if label not in dataset.labels:
        raise ValueError(f"dataset has no labels named {label!r}; it has {sorted(dataset.labels)}")
    first, second = np.asarray(dataset.first), np.asarray(dataset.second)
    labels = np.asarray(dataset.labels[label], np.float32)
    mask = dataset.label_mask.get(label) if dataset.label_mask else None
    weight = np.ones_like(labels) if mask is None else np.asarray(mask, np.float32)
    if indices is not None:
        idx = np.asarray(indices)
        first, second, labels, weight = first[idx], second[idx], labels[idx], weight[idx]
    return gather(dataset.segments, first, second, labels, weight)


def take(batch: PairBatch, indices: Array) -> PairBatch:
    """Rows ``indices`` of a batch (a ``[M, B]`` weight is indexed on its last axis)."""
    weight = None if batch.weight is None else jnp.take(batch.weight, indices, axis=-1)
    rows = map_rows(batch, lambda x: jnp.take(x, indices, axis=0))
    return rows._replace(weight=weight)


def map_rows(batch: PairBatch, fn: Any) -> PairBatch:
    """``fn`` applied to every per-query field that is set (not ``weight``: it may be [M, B])."""
    fields = {f: fn(getattr(batch, f)) for f in PairBatch._fields
              if f != "weight" and getattr(batch, f) is not None}
    return batch._replace(**fields)


def member_weights(batch: PairBatch, num_members: int) -> jax.Array:
    """``[M, B]`` per-member query weights (1 where ``weight`` is None; ``[B]`` broadcast)."""
    if batch.weight is None:
        return jnp.ones((num_members, batch.size), jnp.float32)
    w = batch.weight.astype(jnp.float32)
    return jnp.broadcast_to(w[None, :] if w.ndim == 1 else w, (num_members, batch.size))


def chunked(batch: PairBatch, w_mb: jax.Array, chunk: int) -> tuple[PairBatch, jax.Array]:
    """Pad to a multiple of ``chunk`` and split: rows ``[C, chunk, …]``, weights ``[C, M, chunk]``.

    Padding rows are zeros with weight 0, so they change neither a weighted loss
    nor its gradient; the returned batch's ``weight`` is None (use ``w``).
    """
    chunk = min(chunk, batch.size)
    pad = (-batch.size) % chunk
    if pad:
        grow = lambda x: jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
        batch = map_rows(batch, grow)
        w_mb = jnp.concatenate([w_mb, jnp.zeros((w_mb.shape[0], pad), w_mb.dtype)], axis=1)
    num = batch.size // chunk
    split = lambda x: x.reshape(num, chunk, *x.shape[1:])
    w_c = jnp.moveaxis(w_mb.reshape(w_mb.shape[0], num, chunk), 1, 0)
    return map_rows(batch, split)._replace(weight=None), w_c


def subset(dataset: PreferenceDataset, indices: Any) -> PreferenceDataset:
    """The queries ``indices`` of ``dataset`` over the same segment pool."""
    idx = np.asarray(indices)
    return PreferenceDataset(
        segments=dataset.segments,
        first=np.asarray(dataset.first)[idx],
        second=np.asarray(dataset.second)[idx],
        labels={k: np.asarray(v)[idx] for k, v in dataset.labels.items()},
        label_mask={k: np.asarray(v)[idx] for k, v in (dataset.label_mask or {}).items()},
    )


def split(
    num: int, fractions: Mapping[str, float], seed: int, *, rest: str = "train",
    min_rest: int = 1, min_part: int = 0, ordered: bool = True,
) -> dict[str, np.ndarray]:
    """A seeded permutation of ``range(num)`` cut into named parts.

    Parts are cut in the order given: part ``name`` gets
    ``round(fraction · remaining)`` indices of what earlier parts left (at
    least ``min_part`` when its fraction is > 0), and ``rest`` keeps the
    remainder (at least ``min_rest``). Each part is sorted, or with
    ``ordered=False`` keeps the permutation's (shuffled) order.
    ``split(100, {"test": 0.2, "valid": 0.1}, 0)`` gives 20 test, 8 valid, 72 train.
    """
    if num < 1:
        raise ValueError(f"cannot split {num} queries")
    order = np.random.default_rng(seed).permutation(num)
    out: dict[str, np.ndarray] = {}
    start = 0
    for name, fraction in fractions.items():
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"fraction of {name!r} must be in [0, 1), got {fraction}")
        count = int(round(fraction * (num - start)))
        if fraction > 0:
            count = max(count, min_part)
        out[name] = order[start:start + count]
        start += count
    if num - start < min_rest:
        sizes = {k: len(v) for k, v in out.items()}
        raise ValueError(f"{num} queries leave {num - start} (fewer than {min_rest}) for "
                         f"{rest!r} after {sizes}")
    out[rest] = order[start:]
    return {k: np.sort(v) for k, v in out.items()} if ordered else out


def split_by_segments(key: Array, num_segments: int, first: np.ndarray, second: np.ndarray,
                      num_train: int, num_test: int) -> tuple[np.ndarray, np.ndarray]:
    """Query indices ``(train [num_train], test [num_test])`` on disjoint segments.

    Unlike :func:`split`, which splits *queries*, this splits the *segment
    pool*: a seeded random half of the segments is the test half; a training
    query has both segments outside it, a test query both inside (queries
    that mix the halves are dropped), so held-out accuracy is measured on
    segments no model saw. Raises ``ValueError`` when either side has too few
    queries.
    """
    key_seg, key_q = jax.random.split(key)
    is_test = np.zeros(num_segments, bool)
    is_test[np.asarray(jax.random.permutation(key_seg, num_segments))[: num_segments // 2]] = True
    first, second = np.asarray(first), np.asarray(second)
    order = np.asarray(jax.random.permutation(key_q, first.shape[0]))
    tr = order[~is_test[first[order]] & ~is_test[second[order]]]
    te = order[is_test[first[order]] & is_test[second[order]]]
    if tr.shape[0] < num_train or te.shape[0] < num_test:
        raise ValueError(
            f"{first.shape[0]} queries give {tr.shape[0]} on training segments and {te.shape[0]} "
            f"on held-out segments; {num_train} and {num_test} were asked for (label more "
            "queries, or lower --num-train/--num-test)")
    return tr[:num_train], te[:num_test]


def validate(batch: PairBatch, *, what: str = "dataset") -> None:
    """Host-side shape (:func:`dims`) and value checks where data enters (not jittable).

    Raises ``ValueError`` for mis-shaped arrays, an empty set, non-finite observations/actions,
    labels outside [0, 1], or a single-class label set (every label equal:
    the BT model has no finite optimum and learns nothing about the reward).
    """
    dims(batch)
    if batch.size == 0:
        raise ValueError(f"{what}: no labelled queries (empty label set)")
    label = np.asarray(batch.label, np.float64)
    if batch.weight is not None:
        keep = np.asarray(batch.weight).reshape(-1, batch.size).max(axis=0) > 0
        label = label[keep]
        if label.size == 0:
            raise ValueError(f"{what}: every query has weight 0 (empty label set)")
    if not np.all(np.isfinite(label)) or label.min() < 0 or label.max() > 1:
        raise ValueError(f"{what}: labels must be finite values in [0, 1] (P(first ≻ second))")
    if np.unique(label).size < 2:
        raise ValueError(
            f"{what}: single-class label set (all {label.size} labels are {label[0]:g}); "
            "preferences need at least two different labels"
        )
    for name in ("obs_1", "action_1", "obs_2", "action_2", "offset", "final_obs_1",
                 "final_obs_2"):
        if getattr(batch, name) is None:
            continue
        if not np.all(np.isfinite(np.asarray(getattr(batch, name)))):
            raise ValueError(f"{what}: {name} contains NaN or inf")


def dims(batch: PairBatch) -> tuple[int, int, int]:
    """``(segment length, obs_dim, act_dim)`` of a batch; shape errors are ``ValueError`` s."""
    if batch.obs_1.ndim != 3 or batch.obs_2.ndim != 3:
        raise ValueError(
            f"obs_1/obs_2 must be [B, k, obs_dim], got {batch.obs_1.shape} and {batch.obs_2.shape}"
        )
    if batch.obs_1.shape != batch.obs_2.shape:
        raise ValueError(f"obs_1 {batch.obs_1.shape} and obs_2 {batch.obs_2.shape} differ")
    if batch.action_1.shape != batch.action_2.shape or batch.action_1.ndim != 3:
        raise ValueError(
            f"action_1/action_2 must be equal [B, k, act_dim], got {batch.action_1.shape} "
            f"and {batch.action_2.shape}"
        )
    size, length, obs_dim = batch.obs_1.shape
    if batch.action_1.shape[:2] != (size, length):
        raise ValueError(
            f"actions {batch.action_1.shape} do not match observations {batch.obs_1.shape}"
        )
    for name in ("mask_1", "mask_2"):
        if getattr(batch, name).shape != (size, length):
            raise ValueError(f"{name} must be [B, k] = {(size, length)}, got "
                             f"{getattr(batch, name).shape}")
    if batch.label.shape != (size,):
        raise ValueError(f"label must be [B] = ({size},), got {batch.label.shape}")
    if batch.weight is not None and batch.weight.shape[-1:] != (size,):
        raise ValueError(f"weight must be [B] or [M, B] with B = {size}, got {batch.weight.shape}")
    if batch.offset is not None and batch.offset.shape != (size,):
        raise ValueError(f"offset must be [B] = ({size},), got {batch.offset.shape}")
    for name in ("final_obs_1", "final_obs_2"):
        if getattr(batch, name) is not None and getattr(batch, name).shape != (size, obs_dim):
            raise ValueError(f"{name} must be [B, obs_dim] = {(size, obs_dim)}, got "
                             f"{getattr(batch, name).shape}")
    return length, obs_dim, batch.action_1.shape[2]


__all__ = ["Pool", "chunked", "dims", "from_dataset", "gather", "map_rows", "member_weights",
           "split", "split_by_segments", "subset", "take", "validate"]
