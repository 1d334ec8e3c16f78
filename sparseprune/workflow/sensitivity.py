"""Per-layer sensitivity: prune one layer alone at several rates, measure the drop, derive rates.

For each prunable layer and each rate, a copy of the model has only that layer pruned (magnitude,
no fine-tuning) and is evaluated, typically on a held-out batch. :meth:`Sensitivity.layer_rates`
then finds per-layer rates that reach a global sparsity target while pruning the least tolerant
layers less: every layer gets the largest rate whose (interpolated) drop stays within one common
allowance, and the allowance is searched so the parameter-weighted total hits the target. The
result feeds ``sparseprune.prune(model, s, layer_sparsity=result.layer_rates(s))`` directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from .._modules import deepcopy_model
from ..pruning import prune
from ..pruning.scope import select_targets
from .train import EvalFn

__all__ = ["Sensitivity", "sensitivity"]


@dataclass(frozen=True)
class Sensitivity:
    """Result of :func:`sensitivity`.

    Attributes:
        layers: layer names in model order.
        params: prunable weights per layer.
        rates: the rates tried, ascending.
        baseline: ``eval_fn`` of the unpruned model.
        scores: ``scores[i][j]``: ``eval_fn`` with layer ``i`` alone pruned at ``rates[j]``.
    """

    layers: tuple[str, ...]
    params: tuple[int, ...]
    rates: tuple[float, ...]
    baseline: float
    scores: tuple[tuple[float, ...], ...]

    def drop(self, i: int) -> list[float]:
        """Monotone drop curve of layer ``i`` (0 at rate 0), one value per rate."""
        out, worst = [], 0.0
        for s in self.scores[i]:
            worst = max(worst, self.baseline - s)
            out.append(worst)
        return out

    def _rate_within(self, i: int, allowance: float) -> float:
        """Largest rate (linear interpolation on the drop curve) with drop <= allowance."""
        xs = [0.0, *self.rates]
        ys = [0.0, *self.drop(i)]
        best = 0.0
        for k in range(1, len(xs)):
            x0, y0, x1, y1 = xs[k - 1], ys[k - 1], xs[k], ys[k]
            if y1 <= allowance:
                best = x1
                continue
            if y0 <= allowance < y1:
                best = x0 + (x1 - x0) * (allowance - y0) / (y1 - y0)
            break
        return best

    def rates_for(self, allowance: float) -> dict[str, float]:
        """Each layer's rate for one common drop ``allowance``."""
        return {n: self._rate_within(i, allowance) for i, n in enumerate(self.layers)}

    def _total(self, rates: dict[str, float]) -> float:
        return sum(rates[n] * p for n, p in zip(self.layers, self.params, strict=True)) / \
            sum(self.params)

    def layer_rates(self, target: float) -> dict[str, float]:
        """Per-layer rates whose parameter-weighted mean is ``target`` (over these layers).

        Raises:
            ValueError: ``target`` exceeds what the largest tried rate allows everywhere.
        """
        top = self.rates_for(float("inf"))
        if self._total(top) < target - 1e-9:
            raise ValueError(f"sensitivity: target {target:g} needs rates above the largest tried "
                             f"({max(self.rates):g}); add higher rates")
        lo, hi = 0.0, max(max(self.drop(i)) for i in range(len(self.layers))) + 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if self._total(self.rates_for(mid)) >= target:
                hi = mid
            else:
                lo = mid
        rates = self.rates_for(hi)
        # Trim the overshoot (plateaus make the total jump) from the layers that got the
        # highest rate, largest first: they are the most tolerant.
        excess = (self._total(rates) - target) * sum(self.params)
        order = sorted(range(len(self.layers)), key=lambda i: (-rates[self.layers[i]],
                                                               -self.params[i]))
        for i in order:
            if excess <= 0:
                break
            name = self.layers[i]
            cut = min(rates[name], excess / self.params[i])
            rates[name] -= cut
            excess -= cut * self.params[i]
        return rates

    def to_dict(self) -> dict:
        return {"layers": list(self.layers), "params": list(self.params),
                "rates": list(self.rates), "baseline": self.baseline,
                "scores": [list(s) for s in self.scores]}

    def table(self, target: float | None = None) -> str:
        """Text table: drop per layer and rate (and the derived rate for ``target``)."""
        derived = self.layer_rates(target) if target is not None else None
        width = max(len("layer"), *(len(n) for n in self.layers))
        head = f"{'layer':<{width}} {'params':>9} " + " ".join(f"{r:>6.0%}" for r in self.rates)
        if derived is not None:
            head += f"  rate@{target:.0%}"
        lines = [f"drop in accuracy when pruning one layer alone (baseline {self.baseline:.2f})",
                 head, "-" * len(head)]
        for i, n in enumerate(self.layers):
            row = f"{n:<{width}} {self.params[i]:>9,} " + " ".join(
                f"{d:>6.2f}" for d in (self.baseline - s for s in self.scores[i]))
            if derived is not None:
                row += f"  {derived[n]:>7.1%}"
            lines.append(row)
        return "\n".join(lines)

    __str__ = table

    def plot(self, path: str | os.PathLike, title: str = "") -> None:
        """PNG: accuracy drop vs rate, one line per layer."""
        from .plots import plot_sensitivity

        plot_sensitivity(self, path, title=title)


def sensitivity(
    model: nn.Module,
    eval_fn: EvalFn,
    *,
    rates: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98),
    layers: Iterable[str] | None = None,
    criterion: str = "magnitude",
    pattern: str = "unstructured",
) -> Sensitivity:
    """Prune each layer alone at each rate (no fine-tuning) and record ``eval_fn``.

    Args:
        model: a trained model; not modified (each trial prunes a copy).
        eval_fn: ``eval_fn(model) -> float`` (e.g. accuracy on a held-out batch).
        rates: sparsities to try, ascending, each in (0, 1).
        layers: layer names; default every Linear / ConvNd.
        criterion: criterion of the trial pruning.
        pattern: pattern of the trial pruning.

    Returns:
        A :class:`Sensitivity`.
    """
    rates = tuple(float(r) for r in rates)
    if not rates or any(not 0.0 < r < 1.0 for r in rates) or list(rates) != sorted(rates):
        raise ValueError(f"sensitivity: rates must be ascending, in (0, 1); got {list(rates)}")
    include = list(layers) if layers is not None else None
    targets = select_targets(model, include=include)
    baseline = float(eval_fn(model))
    scores = []
    for t in targets:
        row = []
        for r in rates:
            trial = deepcopy_model(model)
            prune(trial, r, include=[t.name], protect=None, scope="layer", criterion=criterion,
                  pattern=pattern)
            row.append(float(eval_fn(trial)))
        scores.append(tuple(row))
    return Sensitivity(layers=tuple(t.name for t in targets),
                       params=tuple(t.shape.numel() for t in targets), rates=rates,
                       baseline=baseline, scores=tuple(scores))
