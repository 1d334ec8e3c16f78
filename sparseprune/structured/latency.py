"""Latency budget: a per-layer latency table by width, measured once on this CPU and cached.

Every conv / linear layer is timed alone at input and output widths {1/4, 1/2, 1} of its own
(9 points, tiny timing loops: one warm-up, best of three) and interpolated bilinearly in between.
The rest of the model (pooling, activations, ...) is a constant: the measured full model minus the
layers. Tables are cached in ``$SPARSEPRUNE_CACHE`` (default ``~/.cache/sparseprune``) by CPU,
torch version, thread count and layer shape.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .budget import CostModel
from .graph import DependencyGraph

__all__ = ["LatencyModel", "time_call"]

GRID = (0.25, 0.5, 1.0)


def time_call(fn, repeats: int = 3) -> float:
    """Best of ``repeats`` wall times of ``fn()`` in seconds, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_path() -> Path:
    root = Path(os.environ.get("SPARSEPRUNE_CACHE", Path.home() / ".cache" / "sparseprune"))
    key = f"{_cpu_name()}|{torch.__version__}|{torch.get_num_threads()}"
    return root / f"latency-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"


def _scaled_layer(m: nn.Module, fin: float, fout: float) -> tuple[nn.Module, int]:
    """A fresh layer like ``m`` with widths scaled; returns it and its input width."""
    if isinstance(m, nn.Linear):
        cin, cout = max(1, round(m.in_features * fin)), max(1, round(m.out_features * fout))
        return nn.Linear(cin, cout, bias=m.bias is not None), cin
    cin, cout = max(1, round(m.in_channels * fin)), max(1, round(m.out_channels * fout))
    groups = m.groups
    if groups == m.in_channels:  # depthwise: groups follow the width
        groups = cin
        cout = cin * (m.out_channels // m.in_channels)
    elif groups > 1:
        cin, cout = max(groups, cin // groups * groups), max(groups, cout // groups * groups)
    layer = type(m)(cin, cout, m.kernel_size, m.stride, m.padding, dilation=m.dilation,
                    groups=groups, bias=m.bias is not None)
    return layer, cin


class LatencyModel:
    """Predicted latency (seconds) of the pruned model from a keep vector."""

    def __init__(self, graph: DependencyGraph, costs: CostModel, repeats: int = 3) -> None:
        self.costs = costs
        path = _cache_path()
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}
        self.items = []
        total_layers = 0.0
        for it in graph.macs_items:
            name = it.module
            if name is None or name not in graph.layer_inputs:
                continue
            m = graph.model.get_submodule(name)
            if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                continue
            shape = graph.layer_inputs[name]
            key = f"{type(m).__name__}|{m}|{shape}|{next(m.parameters()).dtype}"
            if key not in cache:
                cache[key] = self._measure(m, shape, repeats)
            table = np.array(cache[key])
            dims = [costs.index(d) for d in it.dims]
            self.items.append((table, dims, isinstance(m, nn.Linear) or m.groups != m.in_channels))
            total_layers += table[-1, -1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cache))
        inputs = graph.example_inputs
        model = graph.model
        was_training = [m.training for m in model.modules()]
        try:
            model.eval()
            with torch.no_grad():
                full = time_call(lambda: model(*inputs), repeats)
        finally:
            for m, t in zip(model.modules(), was_training, strict=True):
                m.training = t
        self.rest = max(0.0, full - total_layers)

    @staticmethod
    def _measure(m: nn.Module, shape: tuple, repeats: int) -> list[list[float]]:
        table = []
        with torch.no_grad():
            for fin in GRID:
                row = []
                for fout in GRID:
                    layer, cin = _scaled_layer(m, fin, fout)
                    x = torch.randn(*shape[:-1], cin) if isinstance(m, nn.Linear) else \
                        torch.randn(shape[0], cin, *shape[2:])
                    row.append(time_call(lambda layer=layer, x=x: layer(x), repeats))
                table.append(row)
        return table

    def latency(self, keep: np.ndarray) -> float:
        total = self.rest
        for table, dims, has_in in self.items:
            fout = keep[dims[0]].mean() if dims and dims[0].size else 1.0
            fin = keep[dims[1]].mean() if has_in and len(dims) > 1 and dims[1].size else (
                fout if not has_in else 1.0)
            total += _bilinear(table, fin, fout)
        return total


def _bilinear(table: np.ndarray, fin: float, fout: float) -> float:
    g = np.array(GRID)

    def interp(v: float) -> tuple[int, float]:
        v = float(np.clip(v, g[0], g[-1]))
        i = int(np.clip(np.searchsorted(g, v) - 1, 0, len(g) - 2))
        return i, (v - g[i]) / (g[i + 1] - g[i])

    i, a = interp(fin)
    j, b = interp(fout)
    return float(
        table[i, j] * (1 - a) * (1 - b) + table[i + 1, j] * a * (1 - b)
        + table[i, j + 1] * (1 - a) * b + table[i + 1, j + 1] * a * b
    )
