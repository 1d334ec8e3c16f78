"""Latency budget: a per-layer latency table by width, measured once on this CPU and cached.

Every conv / linear layer is timed alone at input and output widths {1/4, 1/2, 1} of its own (9
points, each timed as a ratio to the full-width layer, interleaved) and interpolated bilinearly
in between. A self-attention ``nn.MultiheadAttention`` is timed whole (projections, scores,
softmax, weighted sum, out_proj) at {1/4, 1/2, 1} of its heads by {1/4, 1/2, 1} of its embedding
width, as the surgery leaves it, and interpolated bilinearly: its time is not proportional to
its MACs (softmax and the per-head matmuls are small and memory-bound, the projections are
GEMMs). Other ops with MACs that are not timed alone (attention matmuls written out
functionally, einsum) are charged the timed layers' seconds per MAC, scaled by their kept MACs.
A LayerNorm whose width may shrink is timed at 1/4, 1/2, all but one and all of its width as
the surgery leaves it (a PrunedLayerNorm, which pads back to the full width). The rest of the
measured full model (other norms, activations, adds, pooling) is charged as memory
traffic: a fixed per-op cost plus a share proportional to the elements each op writes, scaled by
the kept fraction of that tensor's channels.

Tables are cached in ``$SPARSEPRUNE_CACHE_DIR`` (default ``~/.cache/sparseprune``, beside
convert's choices) by CPU, torch version, thread count, layer shape and memory layout. Each plan
then levels every table by that layer's own time inside the whole model (forward hooks, best of
three runs of the unpruned model), so that the curve comes from the table and the level from the
model as it runs now, and the remainder above is measured in the same runs. Timing grid points
as ratios to the full-width module (``_curve``) keeps the curve from drifting with the machine
while it is measured. The table only predicts; ``plan`` then measures the pruned model against
the unpruned one (``WallClock.ratio``, interleaved runs) and re-plans until the measured ratio is
within the tolerance of the budget.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._cache import cache_dir
from .._modules import eval_mode
from .budget import CostModel
from .graph import DependencyGraph
from .latency_curves import GRID, TABLE_VERSION, _bilinear, _curve, _valid_table
from .latency_norms import NORM_SHAPE, _measure_norm, _norm_seconds, _shrinkable_layer_norms
from .wallclock import WallClock, time_call

# The clock lives in wallclock.py, the grid timing in latency_curves.py, norms in latency_norms.py
__all__ = ["LatencyModel", "WallClock", "time_call"]


def channels_last(model: nn.Module) -> bool:
    """Whether ``model``'s 4-d weights are in ``torch.channels_last`` memory format."""
    return any(p.dim() == 4 and not p.is_contiguous()
               and p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters())


def _cpu_name() -> str:
    """The CPU as the cache key sees it: model name, family / model / stepping and a hash of
    the feature flags (a VM may call both Zen 3 and Zen 4 "AMD EPYC")."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "stepping", "flags", "Features",
                       "CPU part") and key not in fields:
                fields[key] = value.strip()
            elif not line.strip() and fields:
                break  # the first processor is enough
    except OSError:
        pass
    if not fields:
        return platform.processor() or platform.machine()
    flags = fields.pop("flags", fields.pop("Features", ""))
    digest = hashlib.sha1(flags.encode()).hexdigest()[:8]
    return "|".join(fields.values()) + f"|flags {digest}"


def _cache_path() -> Path:
    root = Path(cache_dir())
    key = f"{_cpu_name()}|{torch.__version__}|{torch.get_num_threads()}"
    return root / f"latency-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"


def _scaled_layer(m: nn.Module, fin: float, fout: float) -> tuple[nn.Module, int]:
    """A fresh layer like ``m`` with widths scaled; returns it and its input width."""
    if isinstance(m, nn.Linear):
        cin, cout = max(1, round(m.in_features * fin)), max(1, round(m.out_features * fout))
        return nn.Linear(cin, cout, bias=m.bias is not None), cin
    cin, cout = max(1, round(m.in_channels * fin)), max(1, round(m.out_channels * fout))
    groups = m.groups
    if groups > 1 and groups == m.in_channels:  # depthwise: groups follow the width
        groups = cin
        cout = cin * (m.out_channels // m.in_channels)
    elif groups > 1:
        cin, cout = max(groups, cin // groups * groups), max(groups, cout // groups * groups)
    layer = type(m)(cin, cout, m.kernel_size, m.stride, m.padding, dilation=m.dilation,
                    groups=groups, bias=m.bias is not None)
    return layer, cin


class LatencyModel:
    """Predicted latency (seconds) of the pruned model from a keep vector."""

    def __init__(self, graph: DependencyGraph, costs: CostModel,
                 timer: WallClock | None = None, progress: bool = False,
                 fold_bn: bool = False, leaf_modules: tuple[type, ...] = ()) -> None:
        """Build (or load) the table for ``graph``'s model.

        With ``fold_bn`` the unpruned reference is the model with BatchNorm folded into its
        convs (``self.reference``), and the folded BatchNorms cost nothing.
        """
        timer = timer or WallClock()
        devices = {p.device.type for p in graph.model.parameters()}
        if devices - {"cpu"}:
            raise ValueError(f"latency budgets time the model on this CPU; the model has "
                             f"parameters on {sorted(devices)}: move it to the CPU first")
        self.costs = costs
        path = _cache_path()
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}
        self.items = []
        # (times by heads x embedding width, head atoms, embedding atoms, the fractions of
        # heads and of width timed)
        self.head_items: list[tuple[np.ndarray, np.ndarray, list[np.ndarray], tuple,
                                    tuple]] = []
        timed, untimed = [], []
        attention: dict[str, list] = {}  # a timed-by-heads module's MAC items, all of them
        for it in graph.macs_items:
            name = it.module
            m = graph.model.get_submodule(name) if name is not None else None
            if (name in graph.layer_inputs
                    and isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))):
                timed.append((it, m))
            elif isinstance(m, nn.MultiheadAttention) and name in graph.attention_calls:
                attention.setdefault(name, []).append(it)
            else:
                untimed.append(it)
        heads = [(items, graph.model.get_submodule(name)) for name, items in attention.items()]
        self.channels_last = channels_last(graph.model)
        norms = _shrinkable_layer_norms(graph)
        todo = [(it, m) for it, m in timed
                if not _valid_table(cache.get(self._key(it.module, m, graph)))]
        todo += [(items, m) for items, m in heads
                 if not _valid_table(cache.get(self._heads_key(items[0].module, m, graph)))]
        todo += [n for n in norms if not _valid_table(cache.get(n.key), NORM_SHAPE)]
        from tqdm.auto import tqdm

        timed_macs = 0.0
        item_names: list[str] = []  # the module of each self.items entry
        head_names: list[str] = []  # the module of each self.head_items entry

        def table_of(key: str, measure, shape: tuple = (len(GRID), len(GRID))) -> np.ndarray:
            if not _valid_table(cache.get(key), shape):
                cache[key] = measure()
                bar.update()
            return np.array(cache[key], dtype=np.float64)

        with tqdm(total=len(todo), desc="latency table", unit="layer", leave=False,
                  disable=not (progress and todo)) as bar:
            for it, m in timed:
                key = self._key(it.module, m, graph)
                shape = graph.layer_inputs[it.module]
                table = table_of(key, lambda m=m, shape=shape: self._measure(
                    m, shape, timer, self.channels_last))
                dims = [costs.index(d) for d in it.dims]
                depthwise = not isinstance(m, nn.Linear) and 1 < m.groups == m.in_channels
                self.items.append((table, dims, not depthwise))
                item_names.append(it.module)
                timed_macs += it.base
            for items, m in heads:
                name = items[0].module
                key = self._heads_key(name, m, graph)
                shape, need_weights = graph.attention_calls[name]
                times = table_of(key, lambda m=m, s=shape, w=need_weights: self._measure_heads(
                    m, s, w, timer))
                # every item's first dim is the heads; a second one is the embedding width
                # (the projections of a self-attention whose embed_dim may shrink)
                embed = [costs.index(it.dims[1]) for it in items if len(it.dims) > 1]
                # the fractions actually timed (3 heads of 4 timed at "1/4" is 1 of 4 heads)
                rows = tuple(max(1, round(m.num_heads * f)) / m.num_heads for f in GRID)
                cols = tuple(max(1, round(m.embed_dim * f)) / m.embed_dim for f in GRID)
                self.head_items.append((times, costs.index(items[0].dims[0]), embed, rows, cols))
                head_names.append(name)
            # (seconds at the kept fractions NORM_GRID, the norm's atoms, the fractions timed)
            self.norm_items: list[tuple[np.ndarray, np.ndarray, tuple]] = []
            for n in norms:
                times = table_of(n.key, lambda n=n: _measure_norm(n, timer), NORM_SHAPE)
                self.norm_items.append((times, costs.index(graph.norms[n.name]), n.fractions))
        norm_names = [n.name for n in norms]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cache))
        self.reference = graph.model
        folded: set[str] = set()
        if fold_bn:
            from .fold import fold_batchnorm, folded_batchnorms

            self.reference = fold_batchnorm(graph.model, leaf_modules=leaf_modules)
            if self.channels_last:
                self.reference = self.reference.to(memory_format=torch.channels_last)
            folded = set(folded_batchnorms(self.reference))
        # Each table's level comes from the layer's own time inside the whole model (the
        # curve from the table): standalone timings miss what the model does to a layer (its
        # weights and inputs cold in cache), and the remainder below is the whole model minus
        # the layers -- measured in the same runs, it cannot go negative, and a cached table
        # from another day takes today's level.
        with eval_mode(self.reference):
            full, inside = timer.split(self.reference, graph.example_inputs,
                                       sorted(set(item_names) | set(head_names)
                                              | set(norm_names)))
        calls = {n: item_names.count(n) + head_names.count(n) for n in inside}
        total_layers = 0.0
        for entries, names in ((self.items, item_names), (self.head_items, head_names)):
            for i, name in enumerate(names):
                table = entries[i][0]
                if inside.get(name, 0) > 0:
                    table = table * (inside[name] / calls[name] / table[-1, -1])
                    entries[i] = (table,) + tuple(entries[i][1:])
                total_layers += table[-1, -1]
        norms_total = 0.0
        for i, name in enumerate(norm_names):
            table = self.norm_items[i][0]
            if inside.get(name, 0) > 0 and table[-1, 0] > 0:
                table = table * (inside[name] / table[-1, 0])
                self.norm_items[i] = (table, *self.norm_items[i][1:])
            norms_total += table[-1, 0]
        # Untimed matmuls run at the timed layers' speed, within what the layers leave over.
        untimed_macs = sum(it.base for it in untimed)
        left = max(0.0, full - total_layers - norms_total)
        spm = total_layers / timed_macs if timed_macs else 0.0
        if untimed_macs:
            spm = min(spm or left / untimed_macs, 0.9 * left / untimed_macs)
        self.mac_items = [(it.base * spm, [costs.index(d) for d in it.dims]) for it in untimed]
        left = max(0.0, left - untimed_macs * spm)
        # What is left (other norms, activations, adds, pooling) is mostly memory traffic: a fixed
        # per-op cost plus a share proportional to the elements each op writes.
        names = {it.module for it, _ in timed} | folded | set(norm_names)
        memory = [it for it in graph.memory_items if it.module not in names]
        per_op = timer.layer(nn.ReLU(), (torch.zeros(1),))
        self.rest = min(left, per_op * len(memory))
        elements = sum(it.base for it in memory)
        spe = (left - self.rest) / elements if elements else 0.0
        self.memory_items = [(it.base * spe, [costs.index(d) for d in it.dims]) for it in memory]
        if not elements:
            self.rest = left

    @staticmethod
    def _heads_key(name: str, m: nn.Module, graph: DependencyGraph) -> str:
        shape, need_weights = graph.attention_calls[name]
        return (f"MultiheadAttention|{m.embed_dim}|{m.num_heads}|{m.head_dim}|{m.batch_first}|"
                f"{m.in_proj_bias is not None}|{shape}|{need_weights}|"
                f"{next(m.parameters()).dtype}|heads-width|{TABLE_VERSION}")

    @staticmethod
    def _measure_heads(m: nn.MultiheadAttention, shape: tuple, need_weights: bool,
                       timer: WallClock) -> list[list[float]]:
        """Seconds by heads (rows) and embedding width (columns), fractions ``GRID``; the
        width stays whole for a module whose in-projection is not packed."""
        from .mha import keep_heads, keep_width

        def point(fh: float, fw: float) -> tuple[nn.Module, tuple]:
            attn = keep_heads(m, max(1, round(m.num_heads * fh)))
            width = max(1, round(m.embed_dim * fw)) if m._qkv_same_embed_dim else m.embed_dim
            layer = _SelfAttention(keep_width(attn, width) if width < m.embed_dim else attn,
                                   need_weights)
            return layer.eval(), (torch.randn(*shape[:-1], width),)

        return _curve(point, GRID, timer)

    def _key(self, name: str, m: nn.Module, graph: DependencyGraph) -> str:
        shape = graph.layer_inputs[name]
        layout = "|channels_last" if self.channels_last and len(shape) == 4 else ""
        return (f"{type(m).__name__}|{m}|{shape}|{next(m.parameters()).dtype}{layout}|"
                f"{TABLE_VERSION}")

    @staticmethod
    def _measure(m: nn.Module, shape: tuple, timer: WallClock, nhwc: bool) -> list[list[float]]:
        """Seconds by input (rows) and output width (columns), fractions ``GRID``."""

        def point(fin: float, fout: float) -> tuple[nn.Module, tuple]:
            layer, cin = _scaled_layer(m, fin, fout)
            x = torch.randn(*shape[:-1], cin) if isinstance(m, nn.Linear) else \
                torch.randn(shape[0], cin, *shape[2:])
            if nhwc and x.dim() == 4:
                layer = layer.to(memory_format=torch.channels_last)
                x = x.to(memory_format=torch.channels_last)
            return layer, (x,)

        return _curve(point, GRID, timer)

    def latency(self, keep: np.ndarray) -> float:
        total = self.rest
        for table, dims, has_in in self.items:
            fout = keep[dims[0]].mean() if dims and dims[0].size else 1.0
            fin = keep[dims[1]].mean() if has_in and len(dims) > 1 and dims[1].size else (
                fout if not has_in else 1.0)
            total += _bilinear(table, fin, fout)
        for times, atoms, embed, rows, cols in self.head_items:
            kept = keep[atoms].mean() if atoms.size else 1.0
            widths = [keep[e].mean() for e in embed if e.size]
            width = float(np.mean(widths)) if widths else 1.0
            total += _bilinear(times, kept, width, rows, cols)
        for times, atoms, fractions in self.norm_items:
            kept = keep[atoms].mean() if atoms.size else 1.0
            total += _norm_seconds(times[:, 0], fractions, kept)
        return (total + CostModel._scaled(self.mac_items, keep)
                + CostModel._scaled(self.memory_items, keep))


class _SelfAttention(nn.Module):
    """``attn(x, x, x, need_weights=...)``: how the model calls it, for the timer."""

    def __init__(self, attn: nn.MultiheadAttention, need_weights: bool) -> None:
        super().__init__()
        self.attn, self.need_weights = attn, need_weights

    def forward(self, x: torch.Tensor) -> tuple:
        return self.attn(x, x, x, need_weights=self.need_weights)
