"""Validation helpers shared by the pruning modules (private)."""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["check_fraction", "check_rate", "prune_count", "unknown_name"]


def check_rate(value: object, what: str = "sparsity") -> float:
    """Return ``value`` as a float in [0, 1), or raise naming ``what``.

    A sparsity of exactly 1 is refused: it would delete a whole layer, which is structured
    pruning's job (and makes every later score a tie).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a float in [0, 1), got {type(value).__name__} {value!r}")
    rate = float(value)
    if not (0.0 <= rate < 1.0) or math.isnan(rate):
        raise ValueError(f"{what} must be in [0, 1), got {value!r}")
    return rate


def check_fraction(value: object, what: str) -> float:
    """Return ``value`` as a float in [0, 1] (both ends allowed), or raise naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a float in [0, 1], got {type(value).__name__} {value!r}")
    frac = float(value)
    if not (0.0 <= frac <= 1.0):
        raise ValueError(f"{what} must be in [0, 1], got {value!r}")
    return frac


def prune_count(n: int, sparsity: float) -> int:
    """Number of units to prune out of ``n`` at ``sparsity``: ``round(sparsity * n)``.

    Python's ``round`` (half to even), the same rule as ``torch.nn.utils.prune``, so a count made
    here and one made there agree.
    """
    return round(sparsity * n)


def unknown_name(kind: str, name: object, valid: Iterable[str]) -> ValueError:
    """A ValueError for an unknown registry name that lists the valid ones."""
    return ValueError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(sorted(valid))}")
