"""Shared pieces of the op rules: the rule context, the registries and the common helpers.

``_Ctx`` is what every rule gets (node, argument values and labels, the real result); ``IntDep``
labels an int computed from tensor sizes. ``MODULE_RULES``, ``FUNCTION_RULES`` and
``METHOD_RULES`` hold the rules by module type, function object and method name, and
``MODULE_NAME_RULES`` by class name (duck typing); the other files of this package fill them on
import. ``_unknown`` (pin everything, name the op in the plan), ``_broadcast``/``_broadcast_dim``
(couple the dims of broadcast operands) and ``_int_arith`` (size arithmetic) are used by rules of
several kinds and by the interpreter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ..labels import FIXED

if TYPE_CHECKING:  # type hints only: the graph imports the interpreter, which imports the rules
    from ..graph import DependencyGraph

__all__ = [
    "FUNCTION_RULES",
    "METHOD_RULES",
    "MODULE_NAME_RULES",
    "MODULE_RULES",
    "IntDep",
    "Rule",
    "register_module_rule",
]


@dataclass(frozen=True)
class IntDep:
    """An int computed from tensor sizes; ``atoms`` are the labels of the sizes it read.

    ``direct``: the int is one size itself (``x.size(1)``), not arithmetic on sizes.
    """

    atoms: np.ndarray | None
    direct: bool = False


@dataclass
class _Ctx:
    node: fx.Node
    graph: DependencyGraph
    values: dict[fx.Node, Any]
    labels: dict[fx.Node, Any]
    result: Any

    @property
    def module_name(self) -> str | None:
        if self.node.op == "call_module":
            return str(self.node.target)
        stack = self.node.meta.get("nn_module_stack")
        if stack:
            return list(stack.values())[-1][0]
        return None

    def arg(self, i: int, name: str, default: Any = None) -> Any:
        if i < len(self.node.args):
            return self.node.args[i]
        return self.node.kwargs.get(name, default)

    def val(self, a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: self.values[n])

    def lab(self, a: Any) -> Any:
        """Labels of an argument: a tuple per tensor dim, IntDep for sizes, else None."""
        if isinstance(a, fx.Node):
            return self.labels.get(a)
        if isinstance(a, (tuple, list)):
            return type(a)(self.lab(x) for x in a)
        return None

    def tl(self, a: Any) -> tuple:
        """Tensor labels of ``a``, all-None when it carries none."""
        v = self.val(a)
        lab = self.lab(a)
        if isinstance(v, torch.Tensor) and isinstance(lab, tuple) and len(lab) == v.dim():
            return lab
        return (None,) * (v.dim() if isinstance(v, torch.Tensor) else 0)

    def fix(self, atoms: Any, why: str) -> None:
        for arr in _all_atoms(atoms):
            self.graph.fix(arr, self.node.name, self.module_name, why)


def _all_atoms(lab: Any):
    if lab is None:
        return
    if isinstance(lab, np.ndarray):
        yield lab
    elif isinstance(lab, IntDep):
        if lab.atoms is not None:
            yield lab.atoms
    elif isinstance(lab, (tuple, list)):
        for x in lab:
            yield from _all_atoms(x)


def _none_labels(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return (None,) * value.dim()
    if isinstance(value, (tuple, list)):
        return tuple(_none_labels(v) for v in value)
    return None


Rule = Callable[[_Ctx], Any]
MODULE_RULES: dict[type, Rule] = {}
# Rules by class name, for modules of libraries we do not import (torchvision's StochasticDepth,
# timm's DropPath): the rule checks the attributes it relies on (duck typing). Such modules are
# traced as leaves so that the rule, not their inlined or fx-wrapped body, decides.
MODULE_NAME_RULES: dict[str, Rule] = {}
FUNCTION_RULES: dict[Any, Rule] = {}
# Rules by function name, for fx-wrapped functions of libraries we do not import (torchvision's
# ``_patch_merging_pad``); used only when no rule is filed under the function object, and the
# rule checks on the example input that the function computes what it expects.
FUNCTION_NAME_RULES: dict[str, Rule] = {}
METHOD_RULES: dict[str, Rule] = {}


def _registrar(table: dict) -> Callable[..., Callable[[Rule], Rule]]:
    """A decorator factory that files a rule under every key it is given in ``table``."""

    def register(*keys: Any) -> Callable[[Rule], Rule]:
        def deco(fn: Rule) -> Rule:
            for key in keys:
                table[key] = fn
            return fn

        return deco

    return register


_module_rule = _registrar(MODULE_RULES)
_module_name_rule = _registrar(MODULE_NAME_RULES)
_function_rule = _registrar(FUNCTION_RULES)
_function_name_rule = _registrar(FUNCTION_NAME_RULES)
_method_rule = _registrar(METHOD_RULES)


def register_module_rule(*types: type) -> Callable[[Rule], Rule]:
    """Decorator: ``@register_module_rule(MyLayer)`` handles ``call_module`` of that type."""
    return _module_rule(*types)


def _unknown(ctx: _Ctx, why: str | None = None) -> Any:
    what = ctx.node.target if ctx.node.op != "call_function" else ctx.node.target.__name__
    why = why or f"no dependency rule for {ctx.node.op} {what!r}"
    args = list(ctx.node.args) + list(ctx.node.kwargs.values())
    weights = _free_weights(ctx, args)
    ctx.fix([ctx.lab(a) for a in args], why)
    if weights:
        # A layer's weight handed to an op without a rule (torchvision's fx-wrapped
        # ``shifted_window_attention`` gets ``qkv.weight`` and ``proj.weight``) is pinned whole.
        # Its dims are those of a free parameter, which ``fix`` pins silently; the layer's
        # output channels are named here instead, once for the op.
        names = ", ".join(name for name, _ in weights)
        ctx.graph.note_unprunable(ctx.node.name, ctx.module_name,
                                  f"{why} (weights kept whole: {names})",
                                  sum(n for _, n in weights))
    return _none_labels(ctx.result)


# layers whose ``weight`` has the output channels along dim 0
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _free_weights(ctx: _Ctx, args: list) -> list[tuple[str, int]]:
    """``(name, output channels)`` of the layer weights (``weight`` of a Linear or conv, read
    by ``get_attr``) among ``args`` whose output dim ``fix`` would pin without naming it."""
    out = []
    for a in _flat(args):
        if not (isinstance(a, fx.Node) and a.op == "get_attr"):
            continue
        owner, _, attr = str(a.target).rpartition(".")
        try:
            layer = ctx.graph.model.get_submodule(owner)
        except AttributeError:  # a constant fx made, on the traced module only
            continue
        if attr != "weight" or not isinstance(layer, _LAYERS):
            continue  # e.g. a relative position bias table: its rows are not channels
        lab = ctx.lab(a)
        if not isinstance(lab, tuple) or not lab:
            continue
        if lab[0] is None or str(a.target) in {n for n, _ in out}:
            continue
        roots = np.unique(ctx.graph.atoms.roots(lab[0]))
        # only what ``fix`` would pin silently: a root it reports itself is named already
        silent = [r for r in roots if r != FIXED and r in ctx.graph._param_atoms]
        if silent:
            out.append((str(a.target), len(silent)))
    return out


# ---- broadcasting and size arithmetic -----------------------------------------------------------


def _broadcast(ctx: _Ctx, operands: list[Any], out_shape: torch.Size) -> tuple:
    nd = len(out_shape)
    tensors = []
    for a in operands:
        v = ctx.val(a)
        if isinstance(v, torch.Tensor):
            tensors.append((v, ctx.tl(a)))
        else:
            ctx.fix(ctx.lab(a), "a channel count is used as a value")
    res = []
    for d in range(nd):
        cands, blocked = [], False
        for v, tl in tensors:
            k = d - (nd - v.dim())
            if k < 0 or out_shape[d] == 1 or v.shape[k] == 1:
                continue
            if tl[k] is None:
                blocked = True
            else:
                cands.append(tl[k])
        if not cands:
            res.append(None)
        elif blocked:
            ctx.fix(cands, f"elementwise op with an operand whose dim {d} cannot shrink")
            res.append(None)
        else:
            for c in cands[1:]:
                ctx.graph.unify(cands[0], c)
            res.append(cands[0])
    return tuple(res)


def _int_arith(ctx: _Ctx) -> Any:
    deps = [x.atoms for x in _flat(ctx.lab(list(ctx.node.args))) if isinstance(x, IntDep)]
    deps = [d for d in deps if d is not None]
    return IntDep(np.concatenate(deps) if deps else None, direct=False)


def _flat(x: Any):
    if isinstance(x, (list, tuple)):
        for y in x:
            yield from _flat(y)
    else:
        yield x


def _broadcast_dim(ctx: _Ctx, entries: list, size: int, d: int) -> np.ndarray | None:
    cands = [lab for s, lab in entries if s == size and size != 1 and lab is not None]
    blocked = any(lab is None and s == size and size != 1 for s, lab in entries)
    if not cands:
        return None
    if blocked:
        ctx.fix(cands, f"concatenated with a tensor whose dim {d} cannot shrink")
        return None
    for c in cands[1:]:
        ctx.graph.unify(cands[0], c)
    return cands[0]
