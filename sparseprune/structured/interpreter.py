"""The fx interpreter that runs the traced graph and labels every node's result.

``LabelInterpreter`` looks up each node's rule in the registries of ``rules/`` (by module type
along the MRO, by function object, by method name), records what the rules pin or couple on the
``DependencyGraph``, and charges the tensors each op writes as memory items.
``graph.trace`` drives it; the rules know nothing of it.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from .records import _CostItem
from .rules import FUNCTION_RULES, METHOD_RULES, MODULE_RULES
from .rules.core import _Ctx, _flat, _int_arith, _none_labels, _unknown

if TYPE_CHECKING:  # type hints only: the graph imports this module
    from .graph import DependencyGraph

__all__ = ["LabelInterpreter"]


# ---- driver -------------------------------------------------------------------------------------


_INPLACE_OPS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


class LabelInterpreter(fx.Interpreter):
    """Runs the traced graph on real inputs and labels every node's result."""

    def __init__(self, gm: fx.GraphModule, graph: DependencyGraph, *, protect_output: bool):
        super().__init__(gm)
        self.dep = graph
        self.protect_output = protect_output
        self.node_labels: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        ctx = _Ctx(n, self.dep, self.env, self.node_labels, result)
        macs_before = len(self.dep.macs_items)
        labels = self._label(ctx)
        self.node_labels[n] = labels
        if len(self.dep.macs_items) == macs_before:  # MAC ops are costed by their MACs
            self._memory_item(ctx, labels)
        return result

    def _memory_item(self, ctx: _Ctx, labels: Any) -> None:
        """Record a tensor this op writes (not a view, not the input handed back)."""
        n, out = ctx.node, ctx.result
        if n.op not in ("call_module", "call_function", "call_method"):
            return
        if not isinstance(out, torch.Tensor) or not isinstance(labels, tuple) or (
            len(labels) != out.dim()
        ):
            return
        inputs = [t for t in _flat(ctx.val(n.args)) if isinstance(t, torch.Tensor)]
        mod = self.dep.model.get_submodule(str(n.target)) if n.op == "call_module" else None
        fname = str(n.target) if n.op == "call_method" else getattr(n.target, "__name__", "")
        inplace = bool(getattr(mod, "inplace", False) or n.kwargs.get("inplace")) or (
            n.op != "call_module" and fname.endswith("_") and not fname.endswith("__")
            or fname in ("__iadd__", "__isub__", "__imul__", "__itruediv__")
            or n.target in _INPLACE_OPS
        )
        try:
            ptr = out.untyped_storage().data_ptr()
            shared = any(t.untyped_storage().data_ptr() == ptr for t in inputs)
        except (RuntimeError, NotImplementedError):  # sparse / opaque tensors: no storage
            return
        if not inplace and shared:
            return  # a view or the input itself: no memory traffic
        self.dep.memory_items.append(
            _CostItem(float(out.numel()), [lab for lab in labels if lab is not None],
                      ctx.module_name)
        )

    def _label(self, ctx: _Ctx) -> Any:
        n = ctx.node
        if n.op == "placeholder":
            return _none_labels(ctx.result)
        if n.op == "get_attr":
            return self._param_labels(str(n.target), ctx.result)
        if n.op == "output":
            shapes = [tuple(t.shape) for t in _flat(ctx.result) if isinstance(t, torch.Tensor)]
            self.dep.output_shapes = shapes
            if self.protect_output:
                ctx.fix(ctx.lab(n.args[0]), "model output (protect_output=True)")
            return None
        if n.op == "call_module":
            mod = self.dep.model.get_submodule(str(n.target))
            for t in type(mod).__mro__:
                if t in MODULE_RULES:
                    return MODULE_RULES[t](ctx)
            return _unknown(ctx, f"module {type(mod).__name__} is not supported")
        if n.op == "call_function":
            rule = FUNCTION_RULES.get(n.target)
            if rule is None and not _has_tensor(ctx.result) and not _has_tensor(ctx.val(n.args)):
                return _int_arith(ctx)
        else:
            rule = METHOD_RULES.get(str(n.target))
        if rule is None:
            return _unknown(ctx)
        return rule(ctx)

    def _param_labels(self, name: str, value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return None
        labels = []
        for d, size in enumerate(value.shape):
            if size <= 1:
                labels.append(None)
                continue
            atoms = self.dep.new_block(size, name, param=True)
            self.dep.attach(name, d, atoms, "weight")
            labels.append(atoms)
        return tuple(labels)


def _has_tensor(x: Any) -> bool:
    return any(isinstance(v, torch.Tensor) for v in _flat(x if isinstance(x, (tuple, list))
                                                            else [x]))
