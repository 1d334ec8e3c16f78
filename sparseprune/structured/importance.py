"""Importance of each unit of a group: ``(graph, group) -> scores [len(group)] float64``.

Higher means more important (kept first). Every criterion sums, per unit, a reduction over all
parameter slices attached to that unit (the producing layers' output rows, the consumers' input
columns, ...). ``IMPORTANCE`` maps names to criteria; any callable with the same signature works.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .graph import Attachment, DependencyGraph, Group

__all__ = ["IMPORTANCE", "BNScale", "Importance", "LpNorm", "Random", "Taylor", "get_importance"]

Importance = Callable[[DependencyGraph, Group], np.ndarray]


def _per_unit(
    graph: DependencyGraph,
    group: Group,
    kinds: tuple[str, ...],
    reduce: Callable[[torch.Tensor, Attachment], torch.Tensor],
) -> tuple[np.ndarray, int]:
    """Sum ``reduce(rows, attachment)`` (rows: ``[size, rest]``, one per index) into the units.

    Returns the scores and how many slices contributed.
    """
    scores = np.zeros(len(group.classes), dtype=np.float64)
    used = 0
    for att in graph.attachments.values():
        if att.kind not in kinds:
            continue
        roots = graph.roots[att.atoms]
        hit = np.isin(roots, group.classes)
        if not hit.any():
            continue
        t = graph.tensor(att.tensor).detach()
        rows = t.movedim(att.dim, 0).reshape(t.shape[att.dim], -1)
        vals = reduce(rows, att).double().numpy()
        np.add.at(scores, np.searchsorted(group.classes, roots[hit]), vals[hit])
        used += 1
    return scores, used


@dataclass(frozen=True)
class LpNorm:
    """Sum over attached weight slices of ``||w||_p^p``, then the p-th root (p = 1 or 2)."""

    p: int = 2

    def __call__(self, graph: DependencyGraph, group: Group) -> np.ndarray:
        s, _ = _per_unit(graph, group, ("weight",), lambda r, _n: r.abs().pow(self.p).sum(1))
        return s ** (1.0 / self.p)


@dataclass(frozen=True)
class BNScale:
    """|gamma| of the normalisation layers in the group (network slimming, Liu et al. 2017).

    Falls back to ``fallback`` with a warning when the group has no BatchNorm/GroupNorm, or when
    all its gammas are equal (e.g. freshly initialised), which would make the ranking arbitrary.
    """

    fallback: Importance = LpNorm(2)

    def __call__(self, graph: DependencyGraph, group: Group) -> np.ndarray:
        s, used = _per_unit(graph, group, ("norm",), lambda r, _n: r.abs().sum(1))
        if used == 0:
            warnings.warn(
                f"importance 'bn': group {group.name} has no BatchNorm/GroupNorm; using the "
                "fallback criterion",
                stacklevel=4,
            )
            return self.fallback(graph, group)
        if np.ptp(s) == 0:
            warnings.warn(
                f"importance 'bn': all BatchNorm gammas in group {group.name} are equal "
                f"({s[0]:.4g}), a tie; using the fallback criterion",
                stacklevel=4,
            )
            return self.fallback(graph, group)
        return s


@dataclass(frozen=True)
class Taylor:
    """First-order Taylor ``|sum(w * dL/dw)|`` per unit (Molchanov et al. 2019).

    Needs gradients: run ``loss.backward()`` on calibration data before planning.
    """

    def __call__(self, graph: DependencyGraph, group: Group) -> np.ndarray:
        missing: list[str] = []

        def reduce(rows: torch.Tensor, att: Attachment) -> torch.Tensor:
            t = graph.tensor(att.tensor)
            if t.grad is None:
                missing.append(att.tensor)
                return torch.zeros(rows.shape[0])
            g = t.grad.detach().movedim(att.dim, 0).reshape(rows.shape[0], -1)
            return (rows * g).sum(1)

        s, _ = _per_unit(graph, group, ("weight", "bias"), reduce)
        if missing:
            raise ValueError(
                f"importance 'taylor' needs gradients, but {missing[0]} has .grad None "
                f"({len(missing)} tensor(s) in group {group.name}); run loss.backward() on "
                "calibration data before planning"
            )
        return np.abs(s)


@dataclass(frozen=True)
class Random:
    """Uniform random scores: a control for the other criteria."""

    seed: int = 0

    def __call__(self, graph: DependencyGraph, group: Group) -> np.ndarray:
        rng = np.random.default_rng(self.seed + group.index)
        return rng.random(len(group.classes))


IMPORTANCE: dict[str, Importance] = {
    "l1": LpNorm(1),
    "l2": LpNorm(2),
    "bn": BNScale(),
    "taylor": Taylor(),
    "random": Random(),
}


def get_importance(importance: str | Importance) -> Importance:
    if callable(importance):
        return importance
    try:
        return IMPORTANCE[importance]
    except KeyError:
        raise ValueError(
            f"unknown importance {importance!r}; choose one of {sorted(IMPORTANCE)} or pass a "
            "callable (graph, group) -> scores"
        ) from None
