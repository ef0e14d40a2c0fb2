"""Label schedules: exact budgets, largest-remainder rounding, the shapes of the rates."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefrl.loops.schedule import label_schedule, largest_remainder


@settings(max_examples=200, deadline=None)
@given(
    budget=st.integers(1, 5000),
    rounds=st.integers(0, 60),
    kind=st.sampled_from(["constant", "hyperbolic"]),
    initial=st.floats(0.0, 1.0),
    tau=st.floats(1.0, 1e7),
)
def test_schedule_spends_exactly_the_budget_and_never_more(budget, rounds, kind, initial, tau):
    steps = np.arange(1, rounds + 1) * 4096
    counts = label_schedule(budget, steps, kind=kind, initial_fraction=initial, tau=tau)
    assert counts.shape == (rounds + 1,)
    assert counts.sum() == budget
    assert np.all(counts >= 0)
    assert np.all(np.cumsum(counts) <= budget)


def test_known_answers():
    # 100 labels, 25 % first, 3 equal rounds: 25 then 75 = 25 + 25 + 25.
    np.testing.assert_array_equal(
        label_schedule(100, [10, 20, 30], kind="constant", initial_fraction=0.25),
        [25, 25, 25, 25])
    # Hyperbolic with τ = t_1: rates 1/2, 1/3, 1/4 (sum 13/12) of 13 labels -> 6, 4, 3.
    np.testing.assert_array_equal(
        label_schedule(13, [100, 200, 300], kind="hyperbolic", initial_fraction=0.0, tau=100),
        [0, 6, 4, 3])
    # Largest remainder: 10 · (1/3, 1/3, 1/3) -> 4, 3, 3 (the tie goes to the first).
    np.testing.assert_array_equal(largest_remainder([1, 1, 1], 10), [4, 3, 3])


def test_constant_rounds_differ_by_at_most_one_and_hyperbolic_decays():
    c = label_schedule(1000, np.arange(1, 31) * 32768, kind="constant")
    assert c[1:].max() - c[1:].min() <= 1
    h = label_schedule(1000, np.arange(1, 31) * 32768, kind="hyperbolic", tau=250_000)
    assert np.all(np.diff(h[1:]) <= 1)  # non-increasing up to rounding
    assert h[1] > 2 * h[-1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budget": 0}, "budget"),
        ({"kind": "linear"}, "schedule"),
        ({"initial_fraction": -0.1}, "initial_fraction"),
        ({"tau": 0.0}, "tau"),
    ],
)
def test_bad_schedules_are_refused(kwargs, message):
    args = {"budget": 10, "round_steps": [1, 2], **kwargs}
    with pytest.raises(ValueError, match=message):
        label_schedule(args.pop("budget"), args.pop("round_steps"), **args)
