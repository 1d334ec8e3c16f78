"""Schedules: endpoints, monotonicity, formulas, validation, registry."""

from __future__ import annotations

import math

import pytest

from sparseprune.pruning.schedules import (
    SCHEDULES,
    Cubic,
    Geometric,
    Linear,
    OneShot,
    Schedule,
    make_schedule,
)

ALL = [
    OneShot(0.9),
    OneShot(0.8, steps=3, initial=0.1),
    Geometric(0.9, 5),
    Geometric(0.95, 7, initial=0.5),
    Linear(0.9, 4),
    Cubic(0.9, 10),
    Cubic(0.8, 3, initial=0.2),
]


@pytest.mark.parametrize("schedule", ALL, ids=repr)
def test_endpoints_exact_and_monotone(schedule):
    assert isinstance(schedule, Schedule)
    values = [schedule.sparsity_at(t) for t in range(schedule.steps + 3)]
    assert values[0] == schedule.initial
    assert values[schedule.steps] == schedule.final  # exact, not approximately
    assert all(v == schedule.final for v in values[schedule.steps:])  # holds after the end
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))


def test_geometric_prunes_the_same_fraction_of_the_remaining_each_round():
    sched = Geometric(0.9, 5)
    remaining = [1 - sched.sparsity_at(t) for t in range(6)]
    ratios = [b / a for a, b in zip(remaining, remaining[1:], strict=False)]
    assert ratios == pytest.approx([0.1 ** (1 / 5)] * 5)


def test_geometric_from_rate_is_the_seeds_20_percent_rule():
    sched = Geometric.from_rate(0.9, rate=0.2)
    assert sched.steps == math.ceil(math.log(0.1) / math.log(0.8)) == 11
    assert 1 - sched.sparsity_at(1) >= 0.8  # never more than 20 % of the remaining per round
    assert Geometric.from_rate(0.36, rate=0.2).steps == 2  # 0.8**2 = 0.64 exactly: no 3rd round
    assert Geometric.from_rate(0.36, rate=0.2).sparsity_at(1) == pytest.approx(0.2)


def test_cubic_matches_zhu_gupta_formula():
    sched = Cubic(0.9, 10, initial=0.1)
    for t in range(11):
        assert sched.sparsity_at(t) == pytest.approx(0.9 + (0.1 - 0.9) * (1 - t / 10) ** 3)


def test_linear_and_oneshot_values():
    assert [Linear(0.8, 4).sparsity_at(t) for t in range(5)] == pytest.approx(
        [0.0, 0.2, 0.4, 0.6, 0.8])
    assert [OneShot(0.7, steps=2).sparsity_at(t) for t in range(4)] == [0.0, 0.0, 0.7, 0.7]


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: Geometric(1.0, 5), r"final sparsity must be in \[0, 1\), got 1.0"),
        (lambda: Linear(-0.1, 5), r"final sparsity must be in \[0, 1\)"),
        (lambda: Cubic(0.5, 0), "steps must be an int >= 1, got 0"),
        (lambda: Cubic(0.5, 2.5), "steps must be an int >= 1"),
        (lambda: Linear(0.5, 3, initial=0.6), "initial sparsity 0.6 exceeds final"),
        (lambda: Geometric.from_rate(0.9, rate=0.0), r"rate must be in \(0, 1\)"),
        (lambda: Linear(0.5, 3).sparsity_at(-1), "step must be an int >= 0"),
    ],
)
def test_invalid_arguments_raise_with_the_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_registry_and_make_schedule():
    assert set(SCHEDULES) == {"oneshot", "geometric", "linear", "cubic"}
    for name, cls in SCHEDULES.items():
        sched = make_schedule(name, 0.8, 4)
        assert isinstance(sched, cls) and sched.final == 0.8
    assert make_schedule("One-Shot", 0.5, 1) == OneShot(0.5)
    custom = Cubic(0.5, 3)
    assert make_schedule(custom, 0.9, 9) is custom
    with pytest.raises(ValueError, match="unknown schedule 'exp'; valid schedules: cubic, geo"):
        make_schedule("exp", 0.5, 3)
