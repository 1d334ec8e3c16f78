"""The record of one pruning round: what each layer was asked for, what it got, and why."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

__all__ = ["PLAN_ATTR", "LayerReport", "PruneReport", "planned", "record_plan"]

#: Plain attribute set on every module a round planned: ``{param: (target rate, reason)}`` of
#: its last round (reason as in :attr:`LayerReport.reason`). Not a buffer, so ``state_dict``
#: and the ``torch.nn.utils.prune`` reparametrization are untouched; ``convert`` reads it to
#: say why a layer it keeps dense is not sparser (e.g. "protected (last linear, x0.5)").
PLAN_ATTR = "_sparseprune_plan"


def record_plan(module: nn.Module, param: str, target: float, reason: str) -> None:
    """Records ``module.<param>``'s rate and reason of this round (see :data:`PLAN_ATTR`)."""
    # A new dict each time: a deep copy made between rounds must not see later rounds.
    plans = dict(getattr(module, PLAN_ATTR, None) or {})
    plans[param] = (float(target), str(reason))
    setattr(module, PLAN_ATTR, plans)


def planned(module: nn.Module, param: str = "weight") -> tuple[float, str] | None:
    """``(target rate, reason)`` of the last prune round that planned ``module.<param>``."""
    plans = getattr(module, PLAN_ATTR, None)
    entry = plans.get(param) if isinstance(plans, dict) else None
    if (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], float)
            and isinstance(entry[1], str)):
        return entry
    return None  # absent, or set by someone else: only a hint, never trusted blindly


@dataclass(frozen=True)
class LayerReport:
    """One pruned (or deliberately spared) tensor after a round.

    Attributes:
        name: qualified module name.
        param: parameter name.
        type: module class name.
        shape: parameter shape.
        numel: number of elements.
        target: the rate this tensor was asked for (the pool's target for pooled tensors, whose
            own share may differ under a global scope).
        pruned: masked-out elements after the round.
        reason: ``"pool"``, ``"layer_sparsity"``, ``"protected (...)"`` or ``"skipped: ..."``.
    """

    name: str
    param: str
    type: str
    shape: tuple[int, ...]
    numel: int
    target: float
    pruned: int
    reason: str

    @property
    def sparsity(self) -> float:
        return self.pruned / self.numel if self.numel else 0.0


@dataclass(frozen=True)
class PruneReport:
    """Returned by :func:`sparseprune.prune` and :meth:`sparseprune.Pruner.step`.

    Attributes:
        sparsity: the target of the round (for the pool).
        pattern: pattern label, e.g. ``"2:4"``.
        criterion: criterion name.
        scope: ``"global"`` or ``"layer"``.
        step: the schedule round, or None for a one-off :func:`prune`.
        layers: one entry per target tensor, in model order.
        ignored: ``(name, why)`` of modules an ``include`` name covered but that were not
            pruned (LayerNorms, embeddings under a glob).
    """

    sparsity: float
    pattern: str
    criterion: str
    scope: str
    step: int | None
    layers: tuple[LayerReport, ...]
    ignored: tuple[tuple[str, str], ...] = ()

    @property
    def numel(self) -> int:
        return sum(r.numel for r in self.layers)

    @property
    def pruned(self) -> int:
        return sum(r.pruned for r in self.layers)

    @property
    def total_sparsity(self) -> float:
        """Pruned / total over all target tensors, protected and skipped ones included."""
        return self.pruned / self.numel if self.numel else 0.0

    @property
    def pool_sparsity(self) -> float:
        """Pruned / total over the pooled tensors only (what the global threshold controls)."""
        pool = [r for r in self.layers if r.reason == "pool"]
        total = sum(r.numel for r in pool)
        return sum(r.pruned for r in pool) / total if total else 0.0

    @property
    def protected(self) -> list[str]:
        """Names of the layers spared by the :class:`Protect` defaults."""
        return [r.name for r in self.layers if r.reason.startswith("protected")]

    @property
    def skipped(self) -> list[str]:
        """Names of the layers left dense because the pattern does not tile them."""
        return [r.name for r in self.layers if r.reason.startswith("skipped")]

    def to_dicts(self) -> list[dict[str, object]]:
        """One plain dict per layer (with its ``sparsity``), for programs and JSON."""
        return [{**asdict(r), "shape": list(r.shape), "sparsity": r.sparsity} for r in self.layers]

    def __str__(self) -> str:
        head = ("layer", "type", "shape", "target", "sparsity", "reason")
        rows = [
            (f"{r.name}.{r.param}" if r.name else r.param, r.type, "x".join(map(str, r.shape)),
             f"{r.target:.3f}", f"{r.sparsity:.3f}", r.reason)
            for r in self.layers
        ]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        step = "" if self.step is None else f" step {self.step}"
        lines = [f"prune{step}: {self.pattern}, {self.criterion}, {self.scope} scope, target "
                 f"{self.sparsity:.3f}", fmt.format(*head)]
        lines += [fmt.format(*row) for row in rows]
        lines.append(f"total sparsity {self.total_sparsity:.4f} ({self.pruned}/{self.numel}), "
                     f"pool {self.pool_sparsity:.4f}")
        if self.protected:
            lines.append(f"protected: {', '.join(n or '<model>' for n in self.protected)}")
        if self.skipped:
            lines.append(f"skipped: {', '.join(n or '<model>' for n in self.skipped)}")
        # Modules an include glob covered by type are listed by name; anything left out for
        # another reason (attention under a data-aware criterion) with its reason.
        by_type = [n for n, why in self.ignored if "is not a Linear/Conv layer" in why]
        if by_type:
            shown = ", ".join(by_type[:8]) + (f", ... ({len(by_type)} in all)"
                                              if len(by_type) > 8 else "")
            lines.append(f"not pruned (matched by include, not a Linear/Conv layer): {shown}")
        lines += [f"not pruned: {n} ({why})" for n, why in self.ignored
                  if "is not a Linear/Conv layer" not in why]
        return "\n".join(line.rstrip() for line in lines)
