"""Schedules: the target sparsity at round (or step) ``t``.

Every schedule is a frozen dataclass with ``final`` (the sparsity it ends at), ``steps`` (``n``, the
round at which it reaches ``final``) and ``initial`` (``s_i``, the sparsity at ``t = 0``, before
any pruning). ``sparsity_at(t)`` is ``initial`` at ``t = 0``, exactly ``final`` for ``t >= n``, and
non-decreasing in between. :class:`sparseprune.Pruner` calls it with ``t = 1, 2, ..., n``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ._checks import check_rate, unknown_name

__all__ = ["SCHEDULES", "Cubic", "Geometric", "Linear", "OneShot", "Schedule", "make_schedule"]


@runtime_checkable
class Schedule(Protocol):
    """A sparsity schedule: ``sparsity_at(t)`` for rounds ``t = 0 .. steps``."""

    final: float
    steps: int

    def sparsity_at(self, step: int) -> float:
        """Target sparsity after round ``step``."""
        ...


def _validate(final: float, steps: int, initial: float, name: str) -> None:
    check_rate(final, f"{name} final sparsity")
    check_rate(initial, f"{name} initial sparsity")
    if initial > final:
        raise ValueError(f"{name}: initial sparsity {initial} exceeds final sparsity {final}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{name}: steps must be an int >= 1, got {steps!r}")


def _progress(step: int, steps: int) -> float:
    """t/n clipped to [0, 1]; a negative or non-int step is a bug in the caller's loop."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    return min(step, steps) / steps


@dataclass(frozen=True)
class OneShot:
    """Prune to ``final`` in one go, at round ``steps`` (default 1).

    ``s_t = s_i`` for ``t < n``, ``s_t = s_f`` for ``t >= n``. The baseline of Han et al., "Learning
    both Weights and Connections for Efficient Neural Networks" (NeurIPS 2015), without iteration.
    """

    final: float
    steps: int = 1
    initial: float = 0.0

    def __post_init__(self) -> None:
        _validate(self.final, self.steps, self.initial, "OneShot")

    def sparsity_at(self, step: int) -> float:
        return self.final if _progress(step, self.steps) >= 1.0 else self.initial


@dataclass(frozen=True)
class Geometric:
    """Prune the same fraction of the remaining weights each round.

    ``1 - s_t = (1 - s_i) * ((1 - s_f) / (1 - s_i)) ** (t / n)``: every round keeps the same
    fraction of what survived the last one, landing exactly on ``s_f`` at ``t = n``. This is the
    iterative magnitude pruning of Han et al. (NeurIPS 2015) and Frankle & Carbin, "The Lottery
    Ticket Hypothesis" (ICLR 2019); use :meth:`from_rate` for "prune 20 % of the remaining weights
    each round until the target".
    """

    final: float
    steps: int
    initial: float = 0.0

    def __post_init__(self) -> None:
        _validate(self.final, self.steps, self.initial, "Geometric")

    @classmethod
    def from_rate(cls, final: float, rate: float = 0.2, initial: float = 0.0) -> Geometric:
        """The fewest rounds that prune at most ``rate`` of the remaining weights each.

        The per-round fraction is then ``1 - ((1 - s_f) / (1 - s_i)) ** (1 / n) <= rate``, so the
        last round ends exactly on ``final`` (e.g. final 0.9, rate 0.2 -> 11 rounds of ~18.9 %).
        """
        check_rate(final, "Geometric final sparsity")
        check_rate(initial, "Geometric initial sparsity")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate < 1.0:
            raise ValueError(f"Geometric rate must be in (0, 1), got {rate!r}")
        if initial >= final:
            return cls(final, 1, min(initial, final))
        rounds = math.log((1.0 - final) / (1.0 - initial)) / math.log(1.0 - rate)
        # The epsilon keeps an exact count (e.g. 0.36 at rate 0.2 = 2 rounds) from rounding up.
        return cls(final, max(1, math.ceil(rounds - 1e-9)), initial)

    def sparsity_at(self, step: int) -> float:
        p = _progress(step, self.steps)
        if p <= 0.0 or p >= 1.0:
            # Exact endpoints, not 1 - (1 - s_f) recomputed in floating point.
            return self.initial if p <= 0.0 else self.final
        return 1.0 - (1.0 - self.initial) * ((1.0 - self.final) / (1.0 - self.initial)) ** p


@dataclass(frozen=True)
class Linear:
    """Sparsity grows by the same amount each round: ``s_t = s_i + (s_f - s_i) * t / n``."""

    final: float
    steps: int
    initial: float = 0.0

    def __post_init__(self) -> None:
        _validate(self.final, self.steps, self.initial, "Linear")

    def sparsity_at(self, step: int) -> float:
        p = _progress(step, self.steps)
        if p <= 0.0 or p >= 1.0:
            return self.initial if p <= 0.0 else self.final
        return self.initial + (self.final - self.initial) * p


@dataclass(frozen=True)
class Cubic:
    """Fast early, gentle late: ``s_t = s_f + (s_i - s_f) * (1 - t / n) ** 3``.

    Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
    compression" (ICLR workshop 2018), eq. 1, with ``t`` counted in pruning rounds (the paper's
    ``t0`` and ``Δt`` are the caller's choice of when to call :meth:`Pruner.step`).
    """

    final: float
    steps: int
    initial: float = 0.0

    def __post_init__(self) -> None:
        _validate(self.final, self.steps, self.initial, "Cubic")

    def sparsity_at(self, step: int) -> float:
        p = _progress(step, self.steps)
        if p <= 0.0 or p >= 1.0:
            return self.initial if p <= 0.0 else self.final
        return self.final + (self.initial - self.final) * (1 - p) ** 3


SCHEDULES: dict[str, type] = {
    "oneshot": OneShot,
    "geometric": Geometric,
    "linear": Linear,
    "cubic": Cubic,
}


def make_schedule(spec: str | Schedule, final: float, steps: int) -> Schedule:
    """A schedule from a registry name, or ``spec`` itself if it is already a schedule.

    Args:
        spec: a key of :data:`SCHEDULES` (``"oneshot"``, ``"geometric"``, ``"linear"``,
            ``"cubic"``) or a schedule object.
        final: final sparsity, used for a name.
        steps: number of rounds, used for a name.
    """
    if isinstance(spec, str):
        key = spec.strip().lower().replace("-", "").replace("_", "")
        if key not in SCHEDULES:
            raise unknown_name("schedule", spec, SCHEDULES)
        return SCHEDULES[key](final=final, steps=steps)
    if not isinstance(spec, Schedule):
        raise TypeError(f"schedule must be a name ({', '.join(SCHEDULES)}) or an object with "
                        f"final, steps and sparsity_at(step); got {type(spec).__name__}")
    return spec
