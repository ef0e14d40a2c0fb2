"""Pure fixed-capacity ring buffers: ``make_ring_buffer(capacity) -> RingBuffer``.

In the style of flashbax's ``make_trajectory_buffer``: the buffer is a pair of
pure functions over a :class:`RingState` pytree, so it lives inside ``jit``,
``vmap`` (one buffer per seed) and ``lax.scan``, and a checkpoint is its
leaves. Arrays keep their full capacity from the start, so everything that
reads them compiles once; rows not yet written are never sampled.

One implementation serves the online loop's segment pool (FIFO: the oldest
segments are replaced), its label buffer (capacity = the label budget, so it
never wraps) and off-policy replay (uniform samples of transitions).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array
PRNGKey = jax.Array


@struct.dataclass
class RingState:
    """``data``: a pytree of ``[C, …]`` arrays; rows ``< count`` hold items (``head``: next row)."""

    data: Any
    count: Array  # int32 []: rows filled (≤ C)
    head: Array  # int32 []: the row the next item goes to

    @property
    def capacity(self) -> int:
        return jax.tree.leaves(self.data)[0].shape[0]


class RingBuffer(NamedTuple):
    """Pure functions of a bounded FIFO buffer (see the module docstring).

    - ``init(example) -> state``: ``example`` is one item (no leading axis);
      it fixes every array's shape and dtype.
    - ``add(state, items, num=None) -> (state, rows)``: writes the first
      ``num`` of ``items [N, …]`` (all N when None; ``num`` may be traced)
      from ``head`` on, replacing the oldest rows once full; ``rows [N]`` are
      the rows written (``capacity`` for items beyond ``num``: not written).
    - ``sample(state, key, batch_size) -> items [batch_size, …]``: uniform
      with replacement over the filled rows.
    """

    init: Callable[[Any], RingState]
    add: Callable[..., tuple[RingState, Array]]
    sample: Callable[[RingState, PRNGKey, int], Any]
    capacity: int


def make_ring_buffer(capacity: int) -> RingBuffer:
    """A :class:`RingBuffer` of ``capacity`` rows; ``ValueError`` unless ``capacity >= 1``."""
    if isinstance(capacity, bool) or int(capacity) != capacity or capacity < 1:
        raise ValueError(f"buffer capacity must be an int >= 1, got {capacity!r}")
    capacity = int(capacity)

    def init(example: Any) -> RingState:
        data = jax.tree.map(
            lambda x: jnp.zeros((capacity, *jnp.shape(x)), jnp.asarray(x).dtype), example)
        return RingState(data=data, count=jnp.zeros((), jnp.int32),
                         head=jnp.zeros((), jnp.int32))

    def add(state: RingState, items: Any, num: Array | int | None = None
            ) -> tuple[RingState, Array]:
        size = jax.tree.leaves(items)[0].shape[0]
        if size > capacity:
            raise ValueError(f"{size} items do not fit a buffer of capacity {capacity}")
        offsets = jnp.arange(size, dtype=jnp.int32)
        num = jnp.asarray(size if num is None else num, jnp.int32)
        # Items past num go to row `capacity`, which mode="drop" discards.
        rows = jnp.where(offsets < num, (state.head + offsets) % capacity, capacity)
        data = jax.tree.map(
            lambda buf, x: buf.at[rows].set(jnp.asarray(x).astype(buf.dtype), mode="drop"),
            state.data, items)
        return RingState(data=data, count=jnp.minimum(state.count + num, capacity),
                         head=(state.head + num) % capacity), rows

    def sample(state: RingState, key: PRNGKey, batch_size: int) -> Any:
        idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(state.count, 1))
        return jax.tree.map(lambda x: x[idx], state.data)

    return RingBuffer(init=init, add=add, sample=sample, capacity=capacity)


def filled(state: RingState) -> Array:
    """``[C]`` bool: the rows that hold an item."""
    return jnp.arange(state.capacity) < state.count


__all__ = ["RingBuffer", "RingState", "filled", "make_ring_buffer"]
