"""Latency tables of the LayerNorms a plan may shrink.

A shrunk LayerNorm is a ``PrunedLayerNorm`` (norms.py) that normalises over the zero-padded full
width, so it costs more than the unpruned norm at every kept width below full: it is timed as
the surgery leaves it, at a few kept fractions, instead of being charged as shrinking.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .._modules import eval_mode
from .graph import DependencyGraph
from .latency_curves import TABLE_VERSION, _curve
from .wallclock import WallClock

# A norm's table: seconds at kept fractions NORM_GRID, the third being "all but one channel"
# (one column). A PrunedLayerNorm pads back to the full width, so it costs about the same at any
# kept width below full and drops at full width (ViT-B, [1, 197, 768]: 1.67x the unpruned norm
# at 192 channels, 2.07x at 691, 2.14x at 767, 1.01x at 768): a line from 1/2 to the full width
# would charge a norm missing a few channels as if it were whole.
NORM_GRID = (0.25, 0.5, None, 1.0)
NORM_SHAPE = (len(NORM_GRID), 1)


def _norm_seconds(times: np.ndarray, fractions: tuple, kept: float) -> float:
    """A norm's seconds at ``kept``: its full-width time when nothing is removed, else
    interpolated over the shrunk points only (``fractions``: those timed, ascending)."""
    if kept >= 1.0:
        return float(times[-1])
    return float(np.interp(kept, fractions[:-1], times[:-1]))


@dataclass(frozen=True)
class _NormSite:
    """A LayerNorm the plan may shrink (into a ``PrunedLayerNorm``, which normalises over the
    zero-padded full width: it costs more than the unpruned norm, norms.py), with its input."""

    name: str
    module: nn.Module
    dim: int  # the normalised dim of its input
    shape: tuple[int, ...]
    dtype: torch.dtype  # of its input (may differ from the weight's in mixed precision)
    nhwc: bool  # a 4-d input in channels_last memory format

    @property
    def widths(self) -> tuple[int, ...]:
        """The kept widths timed, one per NORM_GRID entry."""
        w = self.shape[self.dim]
        return tuple(max(1, w - 1) if f is None else max(1, round(w * f)) for f in NORM_GRID)

    @property
    def fractions(self) -> tuple[float, ...]:
        w = self.shape[self.dim]
        return tuple(k / w for k in self.widths)

    @property
    def key(self) -> str:
        m = self.module
        layout = "|channels_last" if self.nhwc else ""
        affine = f"weight {tuple(m.weight.shape)} bias {m.bias is not None}"
        return (f"{type(m).__module__}.{type(m).__qualname__}|{m}|{affine}|{self.shape}|"
                f"dim {self.dim}|{self.dtype}|weights {m.weight.dtype}{layout}|norm|"
                f"{TABLE_VERSION}")


def _shrinkable_layer_norms(graph: DependencyGraph) -> list[_NormSite]:
    """The LayerNorms of ``graph.norms`` (RMSNorm shrinks like any layer: not timed), with the
    input each gets on the example inputs (its first call)."""
    names = [n for n in graph.norms if isinstance(graph.model.get_submodule(n), nn.LayerNorm)]
    if not names:
        return []  # no forward to run
    seen: dict[str, torch.Tensor] = {}

    def first_input(name: str):
        def hook(mod, args) -> None:  # returns None: the input is left as it is
            if args:
                seen.setdefault(name, args[0])
        return hook

    hooks = [graph.model.get_submodule(n).register_forward_pre_hook(first_input(n))
             for n in names]
    try:
        with eval_mode(graph.model), torch.no_grad():
            graph.model(*graph.example_inputs)
    finally:
        for h in hooks:
            h.remove()
    sites = []
    for n in names:
        x = seen.get(n)
        if isinstance(x, torch.Tensor) and x.dim() > 0:
            nhwc = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
                memory_format=torch.channels_last)
            sites.append(_NormSite(n, graph.model.get_submodule(n), graph.norm_dims.get(n, -1),
                                   tuple(x.shape), x.dtype, nhwc))
    return sites


def _measure_norm(site: _NormSite, timer: WallClock) -> list[list[float]]:
    """Seconds of the norm at the kept widths ``site.widths``, shrunk as the surgery leaves it
    (``NORM_SHAPE``), without the user's hooks."""
    from .surgery import _shrink_norm

    width = site.shape[site.dim]

    def point(k: int, _: float) -> tuple[nn.Module, tuple]:
        mod = copy.deepcopy(site.module).eval()
        for name, hooks in vars(mod).items():  # a copy shares the user's hook functions
            if "hooks" in name and isinstance(hooks, dict):
                hooks.clear()
        if k < width:
            for pname in ("weight", "bias"):
                t = getattr(mod, pname, None)
                if isinstance(t, nn.Parameter):
                    setattr(mod, pname, nn.Parameter(t.detach()[:k].clone()))
            _shrink_norm(mod, np.arange(width) < k, site.dim)
        shape = list(site.shape)
        shape[site.dim] = k
        x = torch.randn(shape, dtype=site.dtype)
        if site.nhwc:
            x = x.to(memory_format=torch.channels_last)
        return mod, (x,)

    return _curve(point, site.widths, timer, cols=(1.0,))
