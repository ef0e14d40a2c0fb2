"""Generalised policy improvement over a policy library (Barreto et al. 2017).

``V̂*(s) = max_π w·ψ^π(s)`` over successor features ψ^π of a library Π, or
its soft form ``τ logsumexp_π(w·ψ^π(s)/τ)``, with the temperature τ as an array
that can anneal from soft to hard without recompiling (:class:`GPISchedule`).
Used by the regret-model learner :mod:`prefrl.learners.regret_sf`, whose loss
is not convex in w with the hard max (docs/design.md §4).
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

Array = jax.Array


class GPISchedule(NamedTuple):
    """The GPI temperature over updates, as scalar arrays (so it anneals without recompiling
    and can be vmapped over runs).

    ``τ(t) = end + (start − end) · max(0, 1 − t / steps)``; ``steps = 0``: τ = ``end``.
    """

    start: Array  # float []
    end: Array  # float []
    steps: Array  # float []


def gpi_temperature_at(schedule: GPISchedule, step: Array | int) -> Array:
    """τ at update ``step``: linear from ``start`` to ``end`` over ``steps``, then ``end``."""
    frac = jnp.clip(1.0 - jnp.asarray(step, schedule.steps.dtype)
                    / jnp.maximum(schedule.steps, 1.0), 0.0, 1.0)
    return schedule.end + (schedule.start - schedule.end) * jnp.where(schedule.steps > 0, frac,
                                                                      0.0)


def gpi_value(w: Array, psi: Array, *, temperature: float | Array = 0.0) -> Array:
    """GPI value ``V̂*(s) = max_π w·ψ^π(s)``, or ``τ logsumexp_π(w·ψ^π(s)/τ)`` for τ > 0.

    Args:
      w: ``[d]`` reward weights.
      psi: ``[..., Π, d]`` successor features of each library policy at a state.
      temperature: τ ≥ 0: a Python float picks the code path; an array (traced,
        e.g. annealed) selects hard max where τ = 0 and the soft form elsewhere,
        with finite gradients either way.

    Returns:
      ``[...]``. With τ = 0 a lower bound on V*_r̂, exact when π*_r̂ ∈ Π
      (Barreto et al. 2017); the soft form exceeds the max by at most τ log|Π|.
    """
    chex.assert_rank(w, 1)
    q = jnp.einsum("...pd,d->...p", psi, w)
    if isinstance(temperature, (int, float)):
        if temperature == 0:
            return jnp.max(q, axis=-1)
        return temperature * jax.nn.logsumexp(q / temperature, axis=-1)
    tau = jnp.asarray(temperature, q.dtype)
    # τ = 0 must not divide: the soft branch sees τ = 1 there, and its gradient is 0 · softmax.
    safe = jnp.where(tau > 0, tau, 1.0)
    soft = tau * jax.nn.logsumexp(q / safe, axis=-1)
    return jnp.where(tau > 0, soft, jnp.max(q, axis=-1))


__all__ = ["GPISchedule", "gpi_temperature_at", "gpi_value"]
