"""Label schedules with an exact budget (Christiano et al. 2017; imitation).

A run has ``R + 1`` labelling rounds: round 0 labels the first policy's
segments before any RL, rounds ``1 … R`` happen at env steps ``t_1 < … < t_R``.
Round 0 gets ``round(initial_fraction · budget)`` labels; the rest is spread
over rounds ``1 … R`` in proportion to a rate:

* ``constant``: the same number each round;
* ``hyperbolic``: ``1 / (1 + t_r / τ)`` with ``t_r`` and ``τ`` in env steps
  (Christiano et al. 2017 label at a rate decaying like ``1/T``; imitation's
  ``HyperbolicSchedule`` has the same shape).

Integer counts come from largest-remainder rounding, so the counts sum to the
budget exactly and each differs from its real-valued share by less than one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SCHEDULES = ("constant", "hyperbolic")


def largest_remainder(shares: Sequence[float] | np.ndarray, total: int) -> np.ndarray:
    """Integers ``n_i ≥ 0`` with ``Σ n_i = total`` and ``|n_i − total · w_i| < 1``.

    ``w = shares / Σ shares``; each gets ``floor(total · w_i)``, and the units
    left over go to the largest fractional parts (ties to the earlier index).
    """
    w = np.asarray(shares, np.float64)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"shares must be a non-empty 1-D sequence, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("shares must be finite, >= 0 and not all 0")
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    exact = total * w / w.sum()
    base = np.floor(exact).astype(np.int64)
    left = int(total - base.sum())
    order = np.argsort(-(exact - base), kind="stable")
    base[order[:left]] += 1
    return base


def label_schedule(
    budget: int,
    round_steps: Sequence[int] | np.ndarray,
    *,
    kind: str = "hyperbolic",
    initial_fraction: float = 0.25,
    tau: float = 250_000.0,
) -> np.ndarray:
    """Labels per round ``[R + 1]`` (round 0 first), summing to ``budget`` exactly.

    Args:
      budget: total labels of the run (skipped queries count against it).
      round_steps: ``[R]`` env steps at which rounds ``1 … R`` happen.
      kind: ``"constant"`` or ``"hyperbolic"``.
      initial_fraction: share of the budget labelled in round 0.
      tau: the hyperbolic schedule's time constant, in env steps.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown label schedule {kind!r}; use one of {SCHEDULES}")
    if budget < 1:
        raise ValueError(f"label budget must be >= 1, got {budget}")
    if not 0.0 <= initial_fraction <= 1.0:
        raise ValueError(f"initial_fraction must be in [0, 1], got {initial_fraction}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0 env steps, got {tau}")
    steps = np.asarray(round_steps, np.float64).reshape(-1)
    initial = int(round(initial_fraction * budget)) if steps.size else budget
    rest = budget - initial
    if steps.size == 0:
        return np.array([budget], np.int64)
    rate = np.ones_like(steps) if kind == "constant" else 1.0 / (1.0 + steps / tau)
    return np.concatenate([[initial], largest_remainder(rate, rest)]).astype(np.int64)


__all__ = ["SCHEDULES", "label_schedule", "largest_remainder"]
