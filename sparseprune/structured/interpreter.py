"""The fx interpreter that runs the traced graph and labels every node's result.

``LabelInterpreter`` looks up each node's rule in the registries of ``rules/`` (by module type
along the MRO, by function object, by method name), records what the rules pin or couple on the
``DependencyGraph``, and charges the tensors each op writes as memory items.
``graph.trace`` drives it; the rules know nothing of it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx as fx

from .labels import FIXED
from .records import _CostItem
from .rules import (
    FUNCTION_NAME_RULES,
    FUNCTION_RULES,
    METHOD_RULES,
    MODULE_NAME_RULES,
    MODULE_RULES,
)
from .rules.core import _Ctx, _flat, _int_arith, _none_labels, _unknown

if TYPE_CHECKING:  # type hints only: the graph imports this module
    from .graph import DependencyGraph

__all__ = ["LabelInterpreter", "module_rule"]


def module_rule(m: torch.nn.Module):
    """The rule for module ``m``: by type along the MRO, then by class name; None if neither."""
    for t in type(m).__mro__:
        if t in MODULE_RULES:
            return MODULE_RULES[t]
    for t in type(m).__mro__:
        if t.__name__ in MODULE_NAME_RULES:
            return MODULE_NAME_RULES[t.__name__]
    return None


def has_name_rule(m: torch.nn.Module) -> bool:
    """Whether ``m`` is handled by a rule keyed by class name (the tracer keeps it a leaf)."""
    return any(t.__name__ in MODULE_NAME_RULES for t in type(m).__mro__) and not any(
        t in MODULE_RULES for t in type(m).__mro__)


# ---- driver -------------------------------------------------------------------------------------


_INPLACE_OPS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


class LabelInterpreter(fx.Interpreter):
    """Runs the traced graph on real inputs and labels every node's result."""

    def __init__(self, gm: fx.GraphModule, graph: DependencyGraph, *, protect_output: bool,
                 flops: Callable[[], int] | None = None):
        """``flops``: FLOPs counted so far by an active ``FlopCounterMode`` (``flops.py``)."""
        super().__init__(gm)
        self.dep = graph
        self.protect_output = protect_output
        self._flops = flops or (lambda: 0)
        self.node_labels: dict[fx.Node, Any] = {}
        self._flowed: list[np.ndarray] = []  # labels of every op result (not get_attr)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        out = super().run(*args, **kwargs)
        self._pin_dropped_params()
        return out

    def run_node(self, n: fx.Node) -> Any:
        flops_before = self._flops()
        result = super().run_node(n)
        flops = self._flops() - flops_before
        ctx = _Ctx(n, self.dep, self.env, self.node_labels, result)
        macs_before = len(self.dep.macs_items)
        labels = self._label(ctx)
        self.node_labels[n] = labels
        if n.op != "get_attr":
            self._flowed.extend(a for a in _flat(labels) if isinstance(a, np.ndarray))
        if len(self.dep.macs_items) > macs_before:  # the rule costed its MACs
            return result
        if flops > 0:
            # An op with MACs that no rule models (F.conv2d, addmm, an unsupported leaf module):
            # its measured MACs are charged as a constant, so that the plan's MAC total agrees
            # with count_macs (exact when, as for ops without a rule, its inputs were pinned).
            self.dep.add_macs(flops / 2, [], ctx.module_name)
        else:
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
            rule = module_rule(mod)
            if rule is None:
                return _unknown(ctx, f"module {type(mod).__name__} is not supported")
            return rule(ctx)
        if n.op == "call_function":
            rule = FUNCTION_RULES.get(n.target) or FUNCTION_NAME_RULES.get(
                getattr(n.target, "__name__", None))
            if rule is None and not _has_tensor(ctx.result) and not _has_tensor(ctx.val(n.args)):
                return _int_arith(ctx)
        else:
            rule = METHOD_RULES.get(str(n.target))
        if rule is None:
            return _unknown(ctx)
        return rule(ctx)

    def _pin_dropped_params(self) -> None:
        """Pin the dims of ``get_attr`` parameters that no op result carries and no rule pinned.

        Such a dim was read by a rule that neither coupled it to a channel nor kept it (a rule
        that missed an argument); pruning it would cut the parameter alone, and the pruned model
        would fail at ``apply()``. Pinning it here names the op in the plan instead.
        """
        roots = self.dep.atoms.all_roots()
        seen = np.zeros(len(roots), dtype=bool)
        for atoms in self._flowed:
            seen[roots[atoms]] = True
        for n, labels in self.node_labels.items():
            if n.op != "get_attr" or not n.users or not isinstance(labels, tuple):
                continue
            for d, atoms in enumerate(labels):
                if atoms is None:
                    continue
                r = roots[atoms]
                dropped = (r != FIXED) & ~seen[r]
                if dropped.any():
                    users = ", ".join(u.name for u in n.users)
                    self.dep.fix(atoms[dropped], users, str(n.target).rpartition(".")[0] or None,
                                 f"parameter {n.target} (dim {d}) is used by an op whose rule "
                                 "does not say how this dim shrinks", report_params=True)

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
