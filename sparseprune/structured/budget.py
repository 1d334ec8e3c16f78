"""Costs of a model at given widths: channels, MACs, parameters (and latency via ``latency.py``).

``count_macs`` and ``count_params`` measure a real model. ``CostModel`` predicts the cost of the
pruned model from a keep vector (one bool per unit of every group) without building it: each
layer's cost scales with the kept fraction of each of its pruned dims.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .._modules import eval_mode
from .flops import mac_counter
from .graph import DependencyGraph

__all__ = ["CostModel", "count_macs", "count_params"]


def count_macs(model: nn.Module, example_inputs: tuple | torch.Tensor) -> int:
    """Multiply-accumulates of one forward on ``example_inputs`` (convs, matmuls, einsum,
    attention: ``nn.MultiheadAttention`` and ``F.scaled_dot_product_attention`` included).

    Counted with ``torch.utils.flop_counter`` (FLOPs / 2), in eval mode without gradients, with
    ``nn.MultiheadAttention``'s fused path off (see ``flops.py``).
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    with eval_mode(model), torch.no_grad(), mac_counter() as counter:
        model(*example_inputs)
    return int(counter.get_total_flops() // 2)


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (buffers such as BatchNorm statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


class CostModel:
    """Predicts costs from a keep vector ``keep: bool [n_units + 1]`` (last entry: always True).

    Units are numbered group by group, in ``graph.groups`` order.
    """

    def __init__(self, graph: DependencyGraph, total_macs: int | None = None) -> None:
        self.graph = graph
        roots = graph.roots if graph.roots is not None else graph.atoms.all_roots()
        offsets = np.cumsum([0] + [len(g) for g in graph.groups])
        self.n_units = int(offsets[-1])
        self.offsets = offsets
        pos = np.full(len(roots), self.n_units, dtype=np.int64)
        for g, off in zip(graph.groups, offsets[:-1], strict=False):
            pos[g.classes] = off + np.arange(len(g))
        self._pos = pos[roots]  # atom id -> unit position (n_units when never removed)

        self.macs_items = [(it.base, [self.index(d) for d in it.dims]) for it in graph.macs_items]
        # MACs of ops the trace does not model (functional convs, einsum): pass the measured
        # total (count_macs) to account for them as a constant.
        traced = sum(b for b, _ in self.macs_items)
        self.macs_const = 0.0 if total_macs is None else max(0.0, total_macs - traced)

        dims: dict[str, list[np.ndarray]] = {}
        for att in graph.attachments.values():
            dims.setdefault(att.tensor, []).append(self.index(att.atoms))
        self.param_items = []
        self.params_const = 0
        for name, p in graph.model.named_parameters():
            if name in dims:
                self.param_items.append((p.numel(), dims[name]))
            else:
                self.params_const += p.numel()

        self.channel_items = []
        for _owner, atoms in graph.producers:
            if atoms.size == 0 or int(atoms[0]) in graph._param_atoms:
                continue
            idx = self.index(atoms)
            self.channel_items.append(idx[idx < self.n_units])

    def index(self, atoms: np.ndarray) -> np.ndarray:
        """Unit position of each atom (``n_units`` for atoms that are never removed)."""
        return self._pos[np.asarray(atoms, dtype=np.int64)]

    def full(self) -> np.ndarray:
        return np.ones(self.n_units + 1, dtype=bool)

    @staticmethod
    def _scaled(items, keep: np.ndarray) -> float:
        total = 0.0
        for base, dims in items:
            f = base
            for idx in dims:
                f *= keep[idx].mean() if idx.size else 1.0
            total += f
        return total

    def macs(self, keep: np.ndarray) -> float:
        return self.macs_const + self._scaled(self.macs_items, keep)

    def params(self, keep: np.ndarray) -> float:
        return self.params_const + self._scaled(self.param_items, keep)

    def channels(self, keep: np.ndarray) -> float:
        """Output channels of all prunable layers (the denominator of ``amount``)."""
        return float(sum(keep[idx].sum() for idx in self.channel_items))

    def metric(self, name: str) -> Callable[[np.ndarray], float]:
        return {"macs": self.macs, "params": self.params, "channels": self.channels}[name]
