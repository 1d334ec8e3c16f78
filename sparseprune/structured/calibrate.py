"""Latency calibration: measure the planned model against the unpruned one and re-plan with
the predicted target moved by the miss (regula falsi between the closest plans under and over
the budget), until the measured ratio is within the tolerance or the rounds run out.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

from .latency import channels_last
from .search import _floor_keep, _search

if TYPE_CHECKING:
    from .planner import Plan


def _next_target(tried: list, budget: float, base: float, bisect: bool = False) -> float:
    """Predicted-seconds target for the next round: interpolate between the closest plans
    measured under and over the budget (regula falsi; ``bisect``: their midpoint), else scale
    the last one by its miss."""
    under = [(p, r) for p, r, _ in tried if r < budget]
    over = [(p, r) for p, r, _ in tried if r > budget]
    if under and over:
        (p0, r0), (p1, r1) = max(under, key=lambda t: t[1]), min(over, key=lambda t: t[1])
        if bisect:
            return (p0 + p1) / 2
        return p0 + (budget - r0) * (p1 - p0) / (r1 - r0)
    p, r, _ = tried[-1]
    return min(base, p * budget / r)


def _calibrate(result: Plan, states, cost, timer, progress: bool) -> None:
    """Measure the planned model, re-plan with the predicted target scaled by the miss."""
    from tqdm.auto import tqdm

    config, graph = result.config, result.graph
    budget, tol = config.latency, config.tolerance
    base = result.before["latency_s"]
    layout = channels_last(graph.model)
    pred, keep = result.target, result.keep
    tried: list[tuple[float, float, np.ndarray]] = []
    floor = _floor_keep(states, result.costs)
    with tqdm(total=config.calibrate, desc="latency calibration", unit="round", leave=False,
              disable=not progress) as bar:
        _rounds(result, states, cost, timer, bar, tried, layout, pred, keep, floor)
    ok = [t for t in tried if t[1] <= budget * (1 + tol)]
    if not ok and any(np.array_equal(k, floor) for _, _, k in tried):
        raise ValueError(
            f"latency budget {budget:.1%} is unreachable: the smallest plan the floors allow "
            f"(min_ratio={config.min_ratio}, min_channels={config.min_channels}) measured "
            f"{min(r for _, r, _ in tried):.1%} of the unpruned model; lower the floors or "
            "raise the budget"
        )
    pred, ratio, keep = max(ok, key=lambda t: t[1]) if ok else min(tried, key=lambda t: t[1])
    if not ok:
        warnings.warn(
            f"latency budget {budget:.1%} not met by measurement: the best plan measured "
            f"{ratio:.1%} of the unpruned model after {len(tried)} rounds (floors "
            f"min_ratio={config.min_ratio}, min_channels={config.min_channels} may stop it)",
            stacklevel=3,
        )
    result.keep, result.target = keep, pred
    result.measured = {"ratio": ratio, "rounds": [(p / base, r) for p, r, _ in tried]}


def _rounds(result: Plan, states, cost, timer, bar, tried: list, layout: bool, pred: float,
            keep: np.ndarray, floor: np.ndarray) -> None:
    """Measure, re-plan, repeat; appends ``(predicted target, measured ratio, keep)``."""
    from .surgery import apply_plan

    config, graph = result.config, result.graph
    budget, tol = config.latency, config.tolerance
    base = result.before["latency_s"]
    reference = result.latency_table.reference
    for _ in range(config.calibrate):
        result.keep = keep
        small = apply_plan(result, channels_last=layout, fold_bn=config.fold_bn)
        ratio = timer.ratio(small, reference, graph.example_inputs)
        if not ratio > 0:
            raise ValueError(f"the timer measured a latency ratio of {ratio}; expected > 0")
        tried.append((pred, ratio, keep))
        bar.update()
        bar.set_postfix(measured=f"{ratio:.1%}")
        if abs(ratio - budget) <= tol * budget:
            break
        keep = None
        for bisect in (False, True):  # a repeated plan: halve the bracket instead
            pred = _next_target(tried, budget, base, bisect)
            try:
                keep = _search(states, result.costs, cost, pred, config)
            except ValueError:  # the table says the floors stop it: measure the floor plan
                keep = None
                if not any(np.array_equal(floor, k) for _, _, k in tried):
                    keep, pred = floor, cost(floor)
                break
            if not any(np.array_equal(keep, k) for _, _, k in tried):
                break
            keep = None
        if keep is None:
            break
