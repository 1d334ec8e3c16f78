"""Do a norm's removed channels reach it as exact zeros, whatever the input? A static proof.

A shrunk LayerNorm (``PrunedLayerNorm``) or RMSNorm equals the masked one only when the removed
channels of its input are zero in the masked model. :func:`nonzero_reason` walks the traced
graph back from the norm's input along the norm's channels: a producer whose removed outputs
are masked (a layer's weight rows and bias, an affine norm, an attention output projection, a
parameter) proves them zero; ops that map 0 to 0 channel by channel (ReLU/GELU/SiLU/..., shape
ops, pooling, cat, sums of such tensors, a product with such a tensor) pass the proof on to their
inputs; anything else (a sigmoid, an added constant or broadcast tensor, ``masked_fill``, an
unknown op) fails it, with the op named. ``plan`` keeps the width of a norm that fails.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .norms import PrunedLayerNorm

if TYPE_CHECKING:
    from .graph import DependencyGraph

__all__ = ["nonzero_reason"]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
           nn.ConvTranspose3d, nn.MultiheadAttention)
# f(0) = 0, channel by channel (or channels pass through unchanged)
_ZERO_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.SELU,
    nn.Mish, nn.Hardtanh, nn.PReLU, nn.Softshrink, nn.Tanhshrink, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.ChannelShuffle,
)
_ZERO_NAMES = ("StochasticDepth", "DropPath")  # identity in eval, a per-sample scale in training
_AFFINE_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm,
                 nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_ZERO_FUNCTIONS = {
    torch.relu, F.relu, F.relu6, F.gelu, F.silu, torch.tanh, F.tanh, F.hardswish, F.leaky_relu,
    F.elu, F.selu, F.mish, F.hardtanh, F.dropout, torch.neg, torch.abs, operator.neg,
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.swapaxes, torch.swapdims,
    torch.squeeze, torch.unsqueeze, torch.roll, torch.flip, torch.cat, torch.stack, torch.chunk,
    torch.split, torch.unbind, torch.narrow, operator.getitem, F.interpolate, F.avg_pool1d,
    F.avg_pool2d, F.avg_pool3d, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool2d, torch.mean, torch.sum,
    torch.clone,
}
_ZERO_METHODS = {
    "relu", "relu_", "tanh", "neg", "abs", "view", "reshape", "permute", "transpose",
    "swapaxes", "swapdims", "flatten", "unflatten", "squeeze", "unsqueeze", "expand",
    "expand_as", "repeat", "contiguous", "clone", "chunk", "split", "unbind", "narrow", "roll",
    "flip", "mean", "sum", "to", "float", "type_as", "detach", "view_as", "reshape_as",
}
_ADD = {operator.add, operator.sub, operator.iadd, operator.isub, torch.add, torch.sub}
_MUL = {operator.mul, operator.imul, torch.mul}


class _Walk:
    def __init__(self, graph: DependencyGraph, roots: set[int]) -> None:
        self.g, self.roots, self.memo = graph, roots, {}

    def carries(self, node: Any) -> bool:
        labels = self.g.node_labels.get(node) if isinstance(node, fx.Node) else None
        return _carries(labels, self.g, self.roots)

    def on_dim(self, node: fx.Node, dim: int) -> bool:
        """The channels are on dim ``dim`` of ``node``'s (tensor) result."""
        labels = self.g.node_labels.get(node)
        if isinstance(labels, tuple) and labels and isinstance(labels[0], tuple):
            labels = labels[0]  # a module returning (output, ...), e.g. attention
        if not isinstance(labels, tuple) or not labels or not -len(labels) <= dim < len(labels):
            return False
        return _carries(labels[dim], self.g, self.roots)

    def zero(self, node: fx.Node) -> str | None:
        if node not in self.memo:
            self.memo[node] = "(cycle)"
            self.memo[node] = self._zero(node)
        return self.memo[node]

    def _inputs(self, node: fx.Node, args: Any = None) -> str | None:
        """All tensor inputs that carry the channels are zero there."""
        todo = _nodes((node.args, node.kwargs)) if args is None else _nodes(args)
        for a in todo:
            if self.carries(a):
                why = self.zero(a)
                if why is not None:
                    return why
        return None

    def _zero(self, node: fx.Node) -> str | None:
        g = self.g
        if node.op == "get_attr":
            return None  # a parameter's removed slices are zeroed in the masked model
        if node.op == "placeholder":
            return f"model input {node.name}"
        if node.op == "call_module":
            m = g.model.get_submodule(str(node.target))
            rms = getattr(nn, "RMSNorm", None)
            if isinstance(m, _LAYERS) or type(m).__name__ in (
                    "ShiftedWindowAttention", "ShiftedWindowAttentionV2",
                    "RelativePositionalMultiHeadAttention"):
                # masked weight rows and bias: removed outputs are zero -- when the channels
                # are the layer's outputs, not a dim it maps over (then its bias shows there)
                out_dim = 1 if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                                              nn.ConvTranspose2d, nn.ConvTranspose3d)) else -1
                if self.on_dim(node, out_dim):
                    return None
                bias = getattr(m, "bias", None) if not isinstance(m, nn.MultiheadAttention) \
                    else None
                return self._inputs(node, (node.args[0],)) if bias is None and isinstance(
                    m, nn.Linear) else f"{node.name} ({type(m).__name__} over another dim)"
            is_norm = isinstance(m, (*_AFFINE_NORMS, PrunedLayerNorm)) or (
                rms is not None and isinstance(m, rms))
            if is_norm and getattr(m, "weight", None) is not None:
                # masked weight and bias, on the norm's own channel dim
                if isinstance(m, (nn.LayerNorm, PrunedLayerNorm)) or (
                        rms is not None and isinstance(m, rms)):
                    norm_dim = getattr(m, "channel_dim", -1)
                else:
                    norm_dim = 1
                if self.on_dim(node, norm_dim):
                    return None
                return f"{node.name} ({type(m).__name__} over another dim)"
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)):
                return self._inputs(node)  # (0 - masked mean) / std = 0
            if isinstance(m, _ZERO_MODULES) or any(
                    t.__name__ in _ZERO_NAMES for t in type(m).__mro__):
                return self._inputs(node)
            return f"{node.name} ({type(m).__name__})"
        target = node.target
        if node.op == "call_function" and target is operator.getitem and isinstance(
                node.args[0], fx.Node) and node.args[0].op == "call_module" and isinstance(
                g.model.get_submodule(str(node.args[0].target)), nn.MultiheadAttention):
            if node.args[1] == 0 and self.on_dim(node, -1):
                return None  # MHA's output: out_proj rows masked
            return f"{node.name} (attention output over another dim)"
        if node.op == "call_function" and target is F.layer_norm:
            w = node.args[2] if len(node.args) > 2 else node.kwargs.get("weight")
            if isinstance(w, fx.Node) and w.op == "get_attr" and self.on_dim(node, -1):
                return None  # a LayerNorm2d-style module's masked weight and bias
            return f"{node.name} (layer norm without weight)"
        if node.op == "call_function" and target is F.linear:
            w = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
            b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
            if isinstance(w, fx.Node) and w.op == "get_attr" and self.on_dim(node, -1):
                return None
            if b is None:
                return self._inputs(node, (node.args[0],))
            return f"{node.name} (linear with a bias over another dim)"
        if (node.op == "call_function" and (target in _ZERO_FUNCTIONS or getattr(
                target, "__name__", None) == "_patch_merging_pad")) or (
                node.op == "call_method" and target in _ZERO_METHODS):
            return self._inputs(node)  # (Swin's patch merging: checked by its rule, pads 0)
        if node.op == "call_function" and target is F.pad:
            value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", 0)
            return self._inputs(node, (node.args[0],)) if not value else \
                f"{node.name} (pad with {value})"
        is_add = (node.op == "call_function" and target in _ADD) or (
            node.op == "call_method" and target in ("add", "add_", "sub", "sub_"))
        is_mul = (node.op == "call_function" and target in _MUL) or (
            node.op == "call_method" and target in ("mul", "mul_"))
        is_div = (node.op == "call_function" and target in (operator.truediv, torch.div)) or (
            node.op == "call_method" and target in ("div", "div_"))
        operands = list(node.args[:2])
        if is_add:
            for a in operands:
                if isinstance(a, fx.Node) and self.carries(a):
                    why = self.zero(a)
                    if why is not None:
                        return why
                elif not (isinstance(a, (int, float)) and a == 0):
                    return f"{node.name} (adds {getattr(a, 'name', a)}, not zero there)"
            return None
        if is_mul:
            whys = [self.zero(a) for a in operands if isinstance(a, fx.Node) and self.carries(a)]
            return None if any(w is None for w in whys) else (
                whys[0] if whys else f"{node.name}")
        if is_div and isinstance(operands[0], fx.Node) and self.carries(operands[0]):
            return self.zero(operands[0])
        name = target if isinstance(target, str) else getattr(target, "__name__", target)
        return f"{node.name} ({name})"


def _nodes(x: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(x, out.append)
    return out


def _carries(labels: Any, g: DependencyGraph, roots: set[int]) -> bool:
    if isinstance(labels, np.ndarray):
        return bool(roots & set(g.atoms.roots(labels).ravel().tolist()))
    if isinstance(labels, (tuple, list)):
        return any(_carries(v, g, roots) for v in labels)
    return False


def _norm_inputs(graph: DependencyGraph, name: str) -> list[fx.Node]:
    """The nodes feeding norm module ``name`` (its module calls, or for a LayerNorm-like
    module whose forward calls ``F.layer_norm``, what enters that module)."""
    out = []
    for n in graph.fx_graph.nodes:
        if n.op == "call_module" and str(n.target) == name and n.args:
            out += _nodes(n.args[0])
        elif n.op == "call_function" and n.target is F.layer_norm:
            stack = n.meta.get("nn_module_stack") or {}
            if stack and list(stack.values())[-1][0] == name:
                x = n.args[0]
                while isinstance(x, fx.Node) and (x.meta.get("nn_module_stack") or {}) and \
                        list(x.meta["nn_module_stack"].values())[-1][0] == name:
                    x = x.args[0]  # the permute inside the module: back to its input
                out += _nodes(x)
    return out


def nonzero_reason(graph: DependencyGraph, name: str, atoms: np.ndarray) -> str | None:
    """None when the removed channels (``atoms``) of every input of norm ``name`` are proven
    zero in the masked model; else the first op that breaks the proof."""
    if graph.fx_graph is None:
        return "no traced graph to prove it on"
    roots = set(graph.atoms.roots(atoms).ravel().tolist())
    walk = _Walk(graph, roots)
    for x in _norm_inputs(graph, name):
        why = walk.zero(x)
        if why is not None:
            return why
    return None
