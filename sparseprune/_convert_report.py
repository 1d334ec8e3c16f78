"""What ``convert`` reports: one row per layer (converted, or kept dense and why) and, when
nothing was converted, one line that says why (below ``min_sparsity`` because ``prune``
protected the layer, measured no faster, no packed form)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ConvertReport", "LayerReport", "plan_note"]


@dataclass(frozen=True)
class LayerReport:
    """What ``convert`` did with one layer: ``format`` is set when replaced, else ``reason``.

    ``speedup`` is the measured ratio vs dense of the chosen format (worst over the batch sizes),
    ``how`` says where the choice came from ("measured", "cached", "cost model"), ``nbytes`` /
    ``dense_bytes`` are the run-time bytes of the packed and the dense weight.
    """

    name: str
    type: str
    shape: tuple[int, ...]
    sparsity: float
    format: str | None
    reason: str = ""
    speedup: float | None = None
    how: str = ""
    nbytes: int = 0
    dense_bytes: int = 0
    measured: tuple[tuple[str, float], ...] = ()
    folded: str = ""  # the BatchNorm folded into this layer's packed weight, if any
    # What the last prune round planned for it ("protected (last linear, x0.5)", "pool", ...).
    plan: str = ""


@dataclass(frozen=True)
class ConvertReport:
    """Per-layer outcome of ``convert``, printable as a table.

    ``layers`` has one row per candidate layer and one per pruned tensor that has no packed form
    (attention projections, Linear subclasses, Conv1d, BatchNorm, ...); ``folded_masks`` names
    the ``torch.nn.utils.prune`` masks made permanent in the returned model.
    """

    layers: tuple[LayerReport, ...]
    folded_masks: tuple[str, ...] = ()
    min_sparsity: float = 0.5
    native_pools: tuple[str, ...] = ()  # nn.MaxPool2d modules now run by sparseprune's kernel

    @property
    def converted(self) -> list[LayerReport]:
        return [r for r in self.layers if r.format is not None]

    @property
    def skipped(self) -> list[LayerReport]:
        return [r for r in self.layers if r.format is None]

    def __str__(self) -> str:
        head = (f"{'layer':<28} {'type':<8} {'shape':<12} {'sparsity':>8} {'bytes':>9} "
                f"{'of dense':>8} {'speed':>6}  result")
        lines = [head, "-" * len(head)]
        for r in self.layers:
            shape = "x".join(str(s) for s in r.shape)
            result = r.format if r.format is not None else f"dense: {r.reason}"
            if r.how:
                result += f" ({r.how})"
            if r.folded:
                result += f" + {r.folded} folded"
            speed = f"{r.speedup:.2f}x" if r.speedup is not None else "-"
            frac = f"{r.nbytes / r.dense_bytes:.1%}" if r.format and r.dense_bytes else "-"
            nbytes = f"{r.nbytes:,}" if r.format else f"{r.dense_bytes:,}"
            lines.append(f"{r.name or '(root)':<28} {r.type:<8} {shape:<12} {r.sparsity:>8.3f} "
                         f"{nbytes:>9} {frac:>8} {speed:>6}  {result}")
        lines.append(self.headline)
        if self.folded_masks:
            n = len(self.folded_masks)
            lines.append(f"prune masks folded into plain weights: {n} tensor"
                         f"{'s' if n != 1 else ''} (no prune hooks left)")
        if self.native_pools:
            names = ", ".join(n or "(root)" for n in self.native_pools[:4])
            more = f" and {len(self.native_pools) - 4} more" if len(self.native_pools) > 4 else ""
            lines.append(f"max pools on sparseprune's NCHW kernel (same results; torch's is "
                         f"several times slower): {names}{more}")
        return "\n".join(lines)

    @property
    def headline(self) -> str:
        """One line: how many layers were converted, or, when none was, why not."""
        if self.converted or not self.layers:
            return (f"{len(self.converted)} converted, {len(self.skipped)} kept dense"
                    if self.layers else "nothing converted: no Linear or Conv2d layer")
        return _why_nothing(self.layers, self.min_sparsity)


def _percent(x: float) -> str:
    return f"{100 * x:.1f} %"


def _why_nothing(rows: Iterable[LayerReport], min_sparsity: float) -> str:
    """"nothing converted: 3 layers: 'fc' at 45.0 % sparsity is below min_sparsity 0.5 (prune
    protected it: ...); 2 measured no faster than dense (best 0.91x)"."""
    rows = list(rows)
    # Protected layers first: that prune kept them dense on purpose is the news.
    below = sorted((r for r in rows if r.reason.startswith("sparsity ")),
                   key=lambda r: not r.plan.startswith("protected"))
    parts = []
    for r in below[:3]:
        what = (f"{r.name or '(root)'!r} at {_percent(r.sparsity)} sparsity is below "
                f"min_sparsity {min_sparsity:g}")
        note = plan_note(r.plan)
        if note and r.plan.startswith("protected") and r.sparsity > 0:
            # Rounded down with a margin: the cost model recomputes the sparsity in float.
            lower = math.floor(100 * r.sparsity - 1e-6) / 100
            note += (f"; convert(min_sparsity={lower:g}) or "
                     "prune(protect=None) would make it a candidate")
        parts.append(what + (f" ({note})" if note else ""))
    if len(below) > 3:
        parts.append(f"{len(below) - 3} more below min_sparsity {min_sparsity:g}")
    measured = [r for r in rows if r.reason.startswith("measured")]
    if measured:
        best = max((r.speedup for r in measured if r.speedup is not None), default=None)
        parts.append(f"{len(measured)} measured no faster than dense"
                     + (f" (best {best:.2f}x)" if best is not None else ""))
    cost = [r for r in rows if r.reason.startswith("cost model")]
    if cost:
        parts.append(f"{len(cost)} kept dense by the cost model")
    told = {id(r) for r in below + measured + cost}
    others: dict[str, int] = {}
    for r in rows:
        if id(r) not in told:
            key = r.reason.split(" (")[0]  # the kind of reason, without per-layer detail
            others[key] = others.get(key, 0) + 1
    parts += [f"{n} kept dense ({why})" for why, n in others.items()]
    n = len(rows)
    return f"nothing converted: {n} layer{'s' if n != 1 else ''}: " + "; ".join(parts)


def plan_note(plan: str, rate: float | None = None) -> str:
    """What prune's plan for a layer says about its sparsity, for convert's reasons."""
    if plan.startswith("protected (") and plan.endswith(")"):
        return "prune protected it: " + plan[len("protected ("):-1]
    if plan.startswith("skipped"):
        return "prune " + plan
    if plan == "layer_sparsity":
        return "prune's layer_sparsity" + (f" gave it {rate:g}" if rate is not None else "")
    return ""
