"""Fixed-capacity buffers of the online loop: a FIFO segment pool and the labelled pairs.

Both keep their arrays at full capacity from the start, so every jitted
function that reads them (ensemble scoring, oracle labels, reward fits) sees
the same shapes each round and compiles once. Rows not yet filled are never
sampled (pool) or carry weight 0 (labels).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from prefrl.types import PairBatch, Segments

SEGMENT_FIELDS = tuple(f.name for f in dataclasses.fields(Segments))


class SegmentPool:
    """A bounded FIFO pool of segments ``[capacity, k, …]`` (oldest replaced first).

    ``ages[i]`` is the ``tag`` passed with the batch that wrote row i (e.g. the
    PPO update whose rollout produced it), so callers can tell where a segment
    came from. The true rewards travel along for the oracle only.
    """

    def __init__(self, capacity: int, example: Segments):
        if capacity < 2:
            raise ValueError(f"pool capacity must be >= 2, got {capacity}")
        self.capacity = int(capacity)
        self.arrays = {
            name: np.zeros((self.capacity, *np.shape(getattr(example, name))[1:]),
                           np.asarray(getattr(example, name)).dtype)
            for name in SEGMENT_FIELDS
        }
        self.tags = np.full(self.capacity, -1, np.int64)
        self.count = 0  # rows filled (≤ capacity)
        self.head = 0  # next row to write
        self.version = 0  # bumped by every add (for caches of the contents)

    def add(self, segments: Segments, tag: int) -> np.ndarray:
        """Append ``segments`` (replacing the oldest when full); returns the rows written."""
        n = int(np.shape(segments.obs)[0])
        if n > self.capacity:  # keep the newest capacity rows
            segments = Segments(**{f: np.asarray(getattr(segments, f))[-self.capacity:]
                                   for f in SEGMENT_FIELDS})
            n = self.capacity
        rows = (self.head + np.arange(n)) % self.capacity
        for name in SEGMENT_FIELDS:
            value = np.asarray(getattr(segments, name))
            if value.shape[1:] != self.arrays[name].shape[1:]:
                raise ValueError(f"segment field {name!r} has shape {value.shape[1:]} per "
                                 f"segment, the pool holds {self.arrays[name].shape[1:]}")
            self.arrays[name][rows] = value
        self.tags[rows] = tag
        self.head = int((self.head + n) % self.capacity)
        self.count = min(self.capacity, self.count + n)
        self.version += 1
        return rows

    def segments(self) -> Segments:
        """The whole buffer (filled or not) as :class:`Segments` ``[capacity, k, …]``."""
        return Segments(**self.arrays)

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {f"pool.{k}": v for k, v in self.arrays.items()}
        out.update({"pool.tags": self.tags, "pool.count": np.asarray(self.count),
                    "pool.head": np.asarray(self.head)})
        return out

    def load_state_dict(self, arrays: dict[str, Any]) -> None:
        for k in self.arrays:
            self.arrays[k] = np.array(arrays[f"pool.{k}"])
        self.tags = np.array(arrays["pool.tags"])
        self.count, self.head = int(arrays["pool.count"]), int(arrays["pool.head"])


class LabelBuffer:
    """Every labelled query of a run, ``[capacity, k, …]`` per side, weight 0 where empty.

    A copy of both segments is stored (the pool may evict them later), with
    each segment's end state ``s_k`` (``final_obs_1/2``) for the regret model's
    endpoint value. ``split[i]`` is 0 for training rows, 1 for the held-out
    validation slice.
    """

    def __init__(self, capacity: int, length: int, obs_dim: int, act_dim: int):
        if capacity < 1:
            raise ValueError(f"label capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        z = lambda *shape: np.zeros((self.capacity, *shape), np.float32)
        self.arrays = {
            "obs_1": z(length, obs_dim), "action_1": z(length, act_dim), "mask_1": z(length),
            "obs_2": z(length, obs_dim), "action_2": z(length, act_dim), "mask_2": z(length),
            "final_obs_1": z(obs_dim), "final_obs_2": z(obs_dim),
            "label": z(), "keep": z(), "split": z(),
        }
        self.count = 0

    def add(self, pool: Segments, first: np.ndarray, second: np.ndarray, label: np.ndarray,
            keep: np.ndarray, split: np.ndarray) -> None:
        n = int(np.shape(first)[0])
        if self.count + n > self.capacity:
            raise ValueError(f"label buffer full: {self.count} + {n} > capacity {self.capacity}")
        rows = slice(self.count, self.count + n)
        for side, idx in (("1", first), ("2", second)):
            self.arrays[f"obs_{side}"][rows] = np.asarray(pool.obs)[idx]
            self.arrays[f"action_{side}"][rows] = np.asarray(pool.action)[idx]
            self.arrays[f"mask_{side}"][rows] = np.asarray(pool.mask)[idx]
            self.arrays[f"final_obs_{side}"][rows] = np.asarray(pool.next_obs)[idx, -1]
        self.arrays["label"][rows] = label
        self.arrays["keep"][rows] = keep
        self.arrays["split"][rows] = split
        self.count += n

    def batch(self, part: int) -> PairBatch:
        """All rows as a :class:`PairBatch`; weight 1 on kept rows of ``part`` (0 train/1 valid)."""
        a = self.arrays
        filled = np.arange(self.capacity) < self.count
        weight = (filled & (a["keep"] > 0) & (a["split"] == part)).astype(np.float32)
        return PairBatch(a["obs_1"], a["action_1"], a["mask_1"], a["obs_2"], a["action_2"],
                         a["mask_2"], a["label"], weight)

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {f"labels.{k}": v for k, v in self.arrays.items()}
        out["labels.count"] = np.asarray(self.count)
        return out

    def load_state_dict(self, arrays: dict[str, Any]) -> None:
        for k in self.arrays:
            self.arrays[k] = np.array(arrays[f"labels.{k}"])
        self.count = int(arrays["labels.count"])


__all__ = ["LabelBuffer", "SegmentPool"]
