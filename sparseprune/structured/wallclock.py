"""How the structured planner measures latency: one module alone, a whole model with its
submodules' shares (forward hooks), and two models against each other, interleaved."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from .._modules import eval_mode

__all__ = ["WallClock", "median_known", "time_call"]


def time_call(fn, repeats: int = 3) -> float:
    """Best of ``repeats`` wall times of ``fn()`` in seconds, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


class WallClock:
    """How latency is measured (tests substitute a deterministic clock).

    ``layer`` times one module alone (best of ``repeats`` after a warm-up). ``ratio`` times two
    models interleaved (A, B, A, B, ...) so that drift hits both alike, and returns the median of
    the per-pair ratios; it runs at least ``min_rounds`` pairs and ``min_time`` seconds, then
    stops once that median is known to ``rel_error`` (its standard error, relative) or after
    ``max_time`` seconds (and after 200 pairs at most): on a shared VM single runs of a model
    scatter by ~10 %, so a ratio within a few % needs tens of pairs.
    """

    def __init__(self, repeats: int = 3, min_time: float = 1.0, min_rounds: int = 5,
                 rel_error: float = 0.01, max_time: float = 30.0) -> None:
        self.repeats = repeats
        self.min_time = min_time
        self.min_rounds = min_rounds
        self.rel_error = rel_error
        self.max_time = max_time

    def layer(self, module: nn.Module, inputs: tuple) -> float:
        with torch.no_grad():
            return time_call(lambda: module(*inputs), self.repeats)

    def split(self, model: nn.Module, inputs: tuple, names: list[str]
              ) -> tuple[float, dict[str, float]]:
        """Seconds per call of ``model`` and of each named submodule inside it (all its calls
        in one forward, by forward hooks), from the fastest of ``repeats`` runs after a warm-up:
        the submodules' times come from that same run, so the whole minus its parts (what
        the submodules leave over) is measured, not a difference of minima taken from
        different runs."""
        spent: dict[str, float] = {}
        start: dict[str, list[float]] = {}

        def pre(module, args, name):
            start.setdefault(name, []).append(time.perf_counter())

        def post(module, args, out, name):
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - start[name].pop()

        hooks = []
        for name in names:
            m = model.get_submodule(name)
            hooks.append(m.register_forward_pre_hook(lambda mod, a, n=name: pre(mod, a, n)))
            hooks.append(m.register_forward_hook(lambda mod, a, o, n=name: post(mod, a, o, n)))
        best: dict[str, float] = {}
        total = float("inf")
        try:
            with torch.no_grad():
                model(*inputs)
                for _ in range(self.repeats):
                    spent.clear()
                    t0 = time.perf_counter()
                    model(*inputs)
                    took = time.perf_counter() - t0
                    if took < total:
                        total, best = took, dict(spent)
        finally:
            for h in hooks:
                h.remove()
        return total, best

    def ratio(self, small: nn.Module, big: nn.Module, inputs: tuple) -> float:
        """Median over interleaved pairs of ``time(small) / time(big)``, both in eval mode."""
        ts, tb = self._pairs(small, big, inputs, precise=True)
        return float(np.median(np.array(ts) / np.array(tb)))

    def times(self, small: nn.Module, big: nn.Module, inputs: tuple) -> tuple[float, float]:
        """Median seconds per call of ``small`` and ``big``, timed interleaved, eval mode."""
        ts, tb = self._pairs(small, big, inputs, precise=False)
        return float(np.median(ts)), float(np.median(tb))

    def _pairs(self, small: nn.Module, big: nn.Module, inputs: tuple,
               precise: bool) -> tuple[list[float], list[float]]:
        with eval_mode(small), eval_mode(big), torch.no_grad():
            small(*inputs), big(*inputs)
            ts: list[float] = []
            tb: list[float] = []
            while len(ts) < 200:
                t0 = time.perf_counter()
                small(*inputs)
                t1 = time.perf_counter()
                big(*inputs)
                tb.append(time.perf_counter() - t1)
                ts.append(t1 - t0)
                spent = sum(ts) + sum(tb)
                if len(ts) < self.min_rounds or spent < self.min_time:
                    continue
                if not precise or spent >= self.max_time:
                    break
                if len(ts) < 2:
                    continue  # a spread needs two pairs
                if median_known(np.array(ts) / np.array(tb), self.rel_error):
                    break
        return ts, tb


def median_known(ratios, rel_error: float) -> bool:
    """Whether the median of ``ratios`` is known to ``rel_error``: the standard error of a
    median, sqrt(pi / 2) * sd / sqrt(n), relative to it (two values at least)."""
    r = np.asarray(ratios, dtype=np.float64)
    return r.size > 1 and 1.2533 * float(r.std(ddof=1)) / np.sqrt(r.size) <= rel_error * abs(
        float(np.median(r)))
