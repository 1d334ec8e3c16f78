"""Timing helpers shared by the benchmark harness, convert(), the demo and the CLI.

Everything compares two things in alternating rounds, so load from other processes on a shared
machine hits both alike, and reports medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

__all__ = ["time_calls", "interleaved", "calls_for"]


def time_calls(fn: Callable[[], object], calls: int) -> float:
    """Mean seconds per call over ``calls`` back-to-back calls."""
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def calls_for(fn: Callable[[], object], budget_s: float) -> int:
    """How many calls of ``fn`` fill about ``budget_s`` seconds (at least 1), from one call."""
    return max(1, int(budget_s / max(time_calls(fn, 1), 1e-7)))


def interleaved(fn: Callable[[], object], ref: Callable[[], object], calls: int,
                rounds: int = 7, warmup: int = 3) -> tuple[float, float, float]:
    """(median seconds per call of fn, of ref, median of the per-round ref/fn ratios).

    Each round times ``calls`` calls of ``ref`` then of ``fn``.
    """
    for _ in range(warmup):
        fn()
        ref()
    t_fn, t_ref, ratios = [], [], []
    for _ in range(rounds):
        r = time_calls(ref, calls)
        f = time_calls(fn, calls)
        t_fn.append(f)
        t_ref.append(r)
        ratios.append(r / max(f, 1e-12))
    return statistics.median(t_fn), statistics.median(t_ref), statistics.median(ratios)
