"""Running statistics and the normalisers built on them (observations, PopArt values).

Mean and variance merged batch by batch (parallel Welford; Chan et al. 1979);
PopArt (van Hasselt et al. 2016, "Learning values across many orders of
magnitude") rescales a critic's last layer so that ``V = μ + σ v_θ`` is
unchanged when the statistics move.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array
Params = Any


@struct.dataclass
class RunningStats:
    """Mean and (population) variance of a stream, merged batch by batch."""

    mean: Array  # [d] or []
    var: Array  # [d] or []
    count: Array  # [] float32


def running_stats_init(shape: tuple[int, ...] = ()) -> RunningStats:
    return RunningStats(
        mean=jnp.zeros(shape, jnp.float32),
        var=jnp.ones(shape, jnp.float32),
        count=jnp.zeros((), jnp.float32),
    )


def running_stats_update(stats: RunningStats, x: Array) -> RunningStats:
    """Merge a batch ``x [n, *shape]`` into ``stats`` (Chan et al.'s parallel algorithm).

    ``M2 = var_a n_a + var_b n_b + δ² n_a n_b / n`` with ``δ = mean_b − mean_a``;
    the result equals the statistics of the concatenated data.
    """
    x = x.astype(jnp.float32)
    n_b = jnp.asarray(x.shape[0], jnp.float32)
    mean_b = jnp.mean(x, axis=0)
    var_b = jnp.var(x, axis=0)
    n = stats.count + n_b
    delta = mean_b - stats.mean
    mean = stats.mean + delta * (n_b / n)
    m2 = stats.var * stats.count + var_b * n_b + delta**2 * (stats.count * n_b / n)
    return RunningStats(mean=mean, var=m2 / n, count=n)


def normalize(stats: RunningStats, x: Array, clip: float) -> Array:
    """``clip((x − mean) / sqrt(var + 1e-8), ±clip)`` for ``x [..., *shape]``."""
    mean = jnp.broadcast_to(stats.mean, x.shape)
    std = jnp.broadcast_to(jnp.sqrt(stats.var + 1e-8), x.shape)
    return jnp.clip((x - mean) / std, -clip, clip)


def std(stats: RunningStats) -> Array:
    """``sqrt(var + 1e-8)``: the standard deviation the normalisers divide by."""
    return jnp.sqrt(stats.var + 1e-8)


def _value_head(value_params: Params) -> tuple[str, str]:
    mlp = value_params["params"]["MLP_0"]
    last = max(mlp, key=lambda name: int(name.split("_")[-1]))
    return "MLP_0", last


def popart_rescale(
    value_params: Params, old: RunningStats, new: RunningStats
) -> Params:
    """Rescale the critic's last layer so ``μ + σ v_θ(s)`` is unchanged by ``old → new``.

    ``W' = W σ/σ'``, ``b' = (σ b + μ − μ') / σ'`` (van Hasselt et al. 2016).
    """
    mlp_name, last = _value_head(value_params)
    layer = value_params["params"][mlp_name][last]
    s_old, s_new = std(old), std(new)
    new_layer = {
        "kernel": layer["kernel"] * (s_old / s_new),
        "bias": (layer["bias"] * s_old + old.mean - new.mean) / s_new,
    }
    mlp = {**value_params["params"][mlp_name], last: new_layer}
    return {**value_params, "params": {**value_params["params"], mlp_name: mlp}}
