"""How channel labels flow through each op (the dependency rules).

Each rule gets a ``_Ctx`` (node, argument values and labels, the real result) and returns the
labels of the result. Rules are found by module type (``MODULE_RULES``), by function object
(``FUNCTION_RULES``) or by method name (``METHOD_RULES``); an op with no rule pins every channel of
its inputs and is named in the plan. ``register_module_rule`` lets users add module types.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .graph import DependencyGraph, _CostItem
from .labels import FIXED

__all__ = [
    "FUNCTION_RULES",
    "HEAD_ATTRS",
    "METHOD_RULES",
    "MODULE_RULES",
    "LabelInterpreter",
    "register_module_rule",
]

# Module attributes taken to hold an attention head count that surgery may rewrite.
HEAD_ATTRS = ("num_heads", "heads", "n_heads", "n_head", "num_attention_heads", "nheads")


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
FUNCTION_RULES: dict[Any, Rule] = {}
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
_function_rule = _registrar(FUNCTION_RULES)
_method_rule = _registrar(METHOD_RULES)


def register_module_rule(*types: type) -> Callable[[Rule], Rule]:
    """Decorator: ``@register_module_rule(MyLayer)`` handles ``call_module`` of that type."""
    return _module_rule(*types)


def _unknown(ctx: _Ctx, why: str | None = None) -> Any:
    what = ctx.node.target if ctx.node.op != "call_function" else ctx.node.target.__name__
    ctx.fix([ctx.lab(a) for a in ctx.node.args] + [ctx.lab(a) for a in ctx.node.kwargs.values()],
            why or f"no dependency rule for {ctx.node.op} {what!r}")
    return _none_labels(ctx.result)


# ---- elementwise and broadcasting ---------------------------------------------------------------


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


def _elementwise(ctx: _Ctx) -> Any:
    if not isinstance(ctx.result, torch.Tensor):
        return _int_arith(ctx)
    operands = [a for a in ctx.node.args if not isinstance(a, (str, torch.dtype))]
    operands += [v for k, v in ctx.node.kwargs.items() if k in ("other", "input", "alpha")]
    return _broadcast(ctx, operands, ctx.result.shape)


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


_ELEMENTWISE_FUNCS = [
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, operator.neg, operator.pow, operator.floordiv,
    torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum, torch.where,
    torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.abs, torch.neg, torch.sqrt, torch.rsqrt,
    torch.clamp, torch.clip, torch.erf, torch.square, torch.pow,
    F.relu, F.relu6, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh,
    F.leaky_relu, F.elu, F.selu, F.softplus, F.dropout, F.dropout2d, F.hardtanh,
]
_ELEMENTWISE_METHODS = [
    "add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_", "relu", "relu_", "sigmoid",
    "sigmoid_", "tanh", "exp", "abs", "neg", "sqrt", "rsqrt", "clamp", "clamp_", "clip", "pow",
    "square", "contiguous", "clone", "detach", "float", "half", "double", "to", "type", "type_as",
    "masked_fill", "gelu", "silu", "requires_grad_",
]
for _f in _ELEMENTWISE_FUNCS:
    FUNCTION_RULES[_f] = _elementwise
for _m in _ELEMENTWISE_METHODS:
    METHOD_RULES[_m] = _elementwise


@_function_rule(getattr)
def _getattr(ctx: _Ctx) -> Any:
    obj, attr = ctx.node.args
    if attr == "shape" and isinstance(ctx.val(obj), torch.Tensor):
        return tuple(IntDep(lab, direct=True) for lab in ctx.tl(obj))
    if attr in ("T", "mT") and isinstance(ctx.result, torch.Tensor):
        return tuple(reversed(ctx.tl(obj))) if attr == "T" else _transpose(ctx.tl(obj), -2, -1)
    if isinstance(ctx.result, torch.Tensor):
        return _unknown(ctx)
    return None


@_method_rule("size")
def _size(ctx: _Ctx) -> Any:
    tl = ctx.tl(ctx.node.args[0])
    d = ctx.arg(1, "dim")
    if d is None:
        return tuple(IntDep(lab, direct=True) for lab in tl)
    return IntDep(tl[ctx.val(d)], direct=True)


@_method_rule("dim")
def _dim(ctx: _Ctx) -> Any:
    return None


@_method_rule("numel")
def _numel(ctx: _Ctx) -> Any:
    labs = [lab for lab in ctx.tl(ctx.node.args[0]) if lab is not None]
    return IntDep(np.concatenate(labs) if labs else None, direct=False)


# ---- indexing -----------------------------------------------------------------------------------


@_function_rule(operator.getitem)
def _getitem(ctx: _Ctx) -> Any:
    src, idx = ctx.node.args
    lab = ctx.lab(src)
    v = ctx.val(src)
    if not isinstance(v, torch.Tensor):
        if isinstance(lab, (tuple, list)) and isinstance(idx, int):
            return lab[idx]
        if isinstance(lab, (tuple, list)) and isinstance(idx, slice):
            return tuple(lab[idx])
        return None
    tl = list(ctx.tl(src))
    if not isinstance(idx, tuple):
        idx = (idx,)
    if any(isinstance(i, (fx.Node, torch.Tensor, list)) for i in idx):
        return _unknown(ctx, "tensor indexing")
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    out, d = [], 0
    for i in idx:
        if i is Ellipsis:
            span = v.dim() - n_real
            out.extend(tl[d : d + span])
            d += span
        elif i is None:
            out.append(None)
        elif isinstance(i, int):
            ctx.fix(tl[d], "integer index into a channel dim")
            d += 1
        elif isinstance(i, slice):
            if tl[d] is not None and i != slice(None):
                ctx.fix(tl[d], "slice of a channel dim")
                out.append(None)
            else:
                out.append(tl[d])
            d += 1
    out.extend(tl[d:])
    return tuple(out)


def _pieces(ctx: _Ctx, tl: tuple, dim: int, sizes: list[int], coupled: bool) -> tuple:
    """Labels of ``split``/``chunk`` pieces along ``dim``; ``coupled``: equal pieces that stay
    equal after pruning (same positions removed in each)."""
    lab = tl[dim]
    if lab is None:
        return tuple(tl for _ in sizes)
    if not coupled or len(set(sizes)) != 1:
        ctx.fix(lab, "split of a channel dim into fixed sizes")
        return tuple(tl[:dim] + (None,) + tl[dim + 1 :] for _ in sizes)
    grid = lab.reshape(len(sizes), sizes[0])
    ctx.graph.unify(grid, grid[:1])
    return tuple(tl[:dim] + (grid[0],) + tl[dim + 1 :] for _ in sizes)


@_function_rule(torch.chunk)
@_method_rule("chunk")
def _chunk(ctx: _Ctx) -> Any:
    x = ctx.node.args[0]
    v, tl = ctx.val(x), ctx.tl(x)
    dim = ctx.val(ctx.arg(2, "dim", 0)) % v.dim()
    sizes = [r.shape[dim] for r in ctx.result]
    return _pieces(ctx, tl, dim, sizes, coupled=v.shape[dim] % len(sizes) == 0)


@_function_rule(torch.split)
@_method_rule("split")
def _split(ctx: _Ctx) -> Any:
    x = ctx.node.args[0]
    v, tl = ctx.val(x), ctx.tl(x)
    dim = ctx.val(ctx.arg(2, "dim", 0)) % v.dim()
    size_arg = ctx.arg(1, "split_size_or_sections")
    sizes = [r.shape[dim] for r in ctx.result]
    # A size computed from this tensor's own width (x.size(1) // 2) scales with it; a literal
    # size does not.
    dep = ctx.lab(size_arg)
    own = (
        isinstance(dep, IntDep)
        and dep.atoms is not None
        and tl[dim] is not None
        and set(ctx.graph.atoms.roots(dep.atoms).ravel()) <= set(ctx.graph.atoms.roots(tl[dim]))
    )
    return _pieces(ctx, tl, dim, sizes, coupled=own and v.shape[dim] % len(sizes) == 0)


@_function_rule(torch.unbind)
@_method_rule("unbind")
def _unbind(ctx: _Ctx) -> Any:
    x = ctx.node.args[0]
    v, tl = ctx.val(x), ctx.tl(x)
    dim = ctx.val(ctx.arg(1, "dim", 0)) % v.dim()
    ctx.fix(tl[dim], "unbind along a channel dim")
    rest = tl[:dim] + tl[dim + 1 :]
    return tuple(rest for _ in ctx.result)


@_function_rule(torch.cat, torch.concat)
def _cat(ctx: _Ctx) -> Any:
    parts = ctx.arg(0, "tensors")
    out = ctx.result
    dim = ctx.val(ctx.arg(1, "dim", 0)) % out.dim()
    tls = [(ctx.val(p), ctx.tl(p)) for p in parts]
    res = []
    for d in range(out.dim()):
        if d == dim:
            if all(tl[d] is None for _, tl in tls):
                res.append(None)
            else:
                # Positions from unlabelled parts cannot shrink: they get pinned atoms.
                res.append(np.concatenate([
                    tl[d] if tl[d] is not None else np.full(v.shape[d], FIXED, np.int64)
                    for v, tl in tls
                ]))
            continue
        res.append(_broadcast_dim(ctx, [(v.shape[d], tl[d]) for v, tl in tls], out.shape[d], d))
    return tuple(res)


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


@_function_rule(torch.stack)
def _stack(ctx: _Ctx) -> Any:
    parts = ctx.arg(0, "tensors")
    out = ctx.result
    dim = ctx.val(ctx.arg(1, "dim", 0)) % out.dim()
    tls = [ctx.tl(p) for p in parts]
    vals = [ctx.val(p) for p in parts]
    res = [
        _broadcast_dim(ctx, [(v.shape[d], tl[d]) for v, tl in zip(vals, tls, strict=True)],
                       vals[0].shape[d], d)
        for d in range(vals[0].dim())
    ]
    return tuple(res[:dim]) + (None,) + tuple(res[dim:])


# ---- shape ops ----------------------------------------------------------------------------------


def _transpose(tl: tuple, a: int, b: int) -> tuple:
    out = list(tl)
    out[a], out[b] = out[b], out[a]
    return tuple(out)


@_function_rule(torch.transpose)
@_method_rule("transpose", "transpose_", "swapaxes")
def _transpose_rule(ctx: _Ctx) -> Any:
    x = ctx.node.args[0]
    tl = ctx.tl(x)
    return _transpose(tl, ctx.val(ctx.arg(1, "dim0")), ctx.val(ctx.arg(2, "dim1")))


@_method_rule("t")
def _t(ctx: _Ctx) -> Any:
    return tuple(reversed(ctx.tl(ctx.node.args[0])))


@_function_rule(torch.permute)
@_method_rule("permute")
def _permute(ctx: _Ctx) -> Any:
    tl = ctx.tl(ctx.node.args[0])
    dims = ctx.val(list(ctx.node.args[1:]))
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = dims[0]
    if not dims:
        dims = ctx.val(ctx.node.kwargs["dims"])
    return tuple(tl[d] for d in dims)


@_function_rule(torch.unsqueeze)
@_method_rule("unsqueeze")
def _unsqueeze(ctx: _Ctx) -> Any:
    tl = list(ctx.tl(ctx.node.args[0]))
    d = ctx.val(ctx.arg(1, "dim")) % (len(tl) + 1)
    return tuple(tl[:d] + [None] + tl[d:])


@_function_rule(torch.squeeze)
@_method_rule("squeeze")
def _squeeze(ctx: _Ctx) -> Any:
    x = ctx.node.args[0]
    v, tl = ctx.val(x), ctx.tl(x)
    d = ctx.arg(1, "dim")
    dims = [i for i in range(v.dim()) if v.shape[i] == 1] if d is None else [ctx.val(d) % v.dim()]
    dims = [i for i in dims if v.shape[i] == 1]
    ctx.fix([tl[i] for i in dims], "squeeze of a channel dim")
    return tuple(lab for i, lab in enumerate(tl) if i not in dims)


@_method_rule("expand", "expand_as", "broadcast_to")
def _expand(ctx: _Ctx) -> Any:
    x = ctx.node.args[0]
    v, tl = ctx.val(x), ctx.tl(x)
    out = ctx.result
    lead = out.dim() - v.dim()
    res = [None] * lead
    for k in range(v.dim()):
        res.append(tl[k] if v.shape[k] == out.shape[lead + k] else None)
    if ctx.node.target == "expand":
        for k in range(v.dim()):
            a = ctx.node.args[1 + lead + k] if len(ctx.node.args) > 1 + lead + k else -1
            if tl[k] is not None and isinstance(a, int) and a != -1:
                ctx.fix(tl[k], "expand to a literal channel count")
                res[lead + k] = None
    return tuple(res)


@_method_rule("repeat")
def _repeat(ctx: _Ctx) -> Any:
    x = ctx.node.args[0]
    v, tl = ctx.val(x), ctx.tl(x)
    reps = ctx.val(list(ctx.node.args[1:]))
    if len(reps) == 1 and isinstance(reps[0], (tuple, list)):
        reps = list(reps[0])
    lead = len(reps) - v.dim()
    res = [None] * lead
    for k in range(v.dim()):
        lab = tl[k]
        res.append(None if lab is None else np.tile(lab, reps[lead + k]))
    return tuple(res)


def _reshape_blocks(a: list[int], b: list[int]) -> list[tuple[int, int, int, int]]:
    """Split a reshape ``a -> b`` into blocks of dims whose products match."""
    blocks, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        i0, j0 = i, j
        pa = a[i] if i < len(a) else 1
        i = min(i + 1, len(a)) if i < len(a) else i
        pb = b[j] if j < len(b) else 1
        j = min(j + 1, len(b)) if j < len(b) else j
        while pa != pb:
            if pa < pb and i < len(a):
                pa *= a[i]
                i += 1
            elif j < len(b):
                pb *= b[j]
                j += 1
            else:
                return [(0, len(a), 0, len(b))]
        blocks.append((i0, i, j0, j))
    return blocks


def _reshape(ctx: _Ctx, x: Any, size_args: list | None) -> tuple:
    """``size_args``: the requested size per output dim (ints, -1 or Nodes) or None when every
    output size is computed (flatten)."""
    v, tl = ctx.val(x), ctx.tl(x)
    out_shape = list(ctx.result.shape)
    res: list[np.ndarray | None] = [None] * len(out_shape)
    g = ctx.graph
    for i0, i1, j0, j1 in _reshape_blocks(list(v.shape), out_shape):
        labelled = [k for k in range(i0, i1) if tl[k] is not None]
        if not labelled:
            continue
        if len(labelled) > 1:
            ctx.fix([tl[k] for k in labelled], "reshape merges two channel dims")
            continue
        k = labelled[0]
        lab = tl[k]
        kinds = []
        for j in range(j0, j1):
            kinds.append(_size_kind(ctx, size_args, j, lab, out_shape[j], j1 - j0 > 1))
        if "foreign" in kinds:
            ctx.fix(lab, "reshape size computed from another tensor's channel count")
            continue
        # A size read directly from another tensor (x.size(1)) of the same length: both widths
        # must stay equal, so their channels are coupled one to one.
        same = [(j, kd[1]) for j, kd in zip(range(j0, j1), kinds, strict=True)
                if isinstance(kd, tuple) and kd[0] == "same"]
        kinds = ["free" if isinstance(kd, tuple) and kd[0] == "same" else kd for kd in kinds]
        free = [j for j, kd in zip(range(j0, j1), kinds, strict=True) if kd == "free"]
        heads = [(j, kd) for j, kd in zip(range(j0, j1), kinds, strict=True)
                 if isinstance(kd, tuple) and kd[0] == "heads"]
        # Prefer removing whole heads (a head-count attribute the surgery rewrites); the other
        # sizes then keep their values.
        if heads:
            free = []
        if len(free) > 1:
            ctx.fix(lab, "reshape with two computed sizes over one channel dim")
            continue
        if not free and not heads:
            ctx.fix(lab, "reshape of a channel dim to literal sizes")
            continue
        s = free[0] if free else heads[0][0]
        shape_in = [v.shape[m] if m == k else 1 for m in range(i0, i1)]
        arr = np.broadcast_to(lab.reshape(shape_in), v.shape[i0:i1]).reshape(out_shape[j0:j1])
        for j in range(j0, j1):
            if j != s and out_shape[j] > 1:
                g.unify(arr, np.take(arr, [0], axis=j - j0))
        units = arr[tuple(slice(None) if j == s else 0 for j in range(j0, j1))]
        res[s] = np.ascontiguousarray(units)
        for j, dep in same:
            if j == s:
                g.unify(units, dep)
        if not free:
            module, attr = heads[0][1][1:]
            g.set_attr(module, attr, units)
    return tuple(res)


def _size_kind(ctx: _Ctx, size_args: list | None, j: int, lab: np.ndarray, size: int,
               split: bool) -> Any:
    if size_args is None:
        return "free"
    a = size_args[j]
    if isinstance(a, int):
        if a == -1:
            return "free"
        if split:
            head = _head_attr(ctx, a)
            if head is not None:
                return ("heads", *head)
        return "fixed"
    dep = ctx.lab(a)
    if not isinstance(dep, IntDep) or dep.atoms is None:
        return "fixed"
    roots = ctx.graph.atoms.roots
    if set(roots(dep.atoms).ravel()) <= set(roots(lab).ravel()):
        return "free"
    if dep.direct and dep.atoms.shape == (size,):
        return ("same", dep.atoms)
    return "foreign"


def _head_attr(ctx: _Ctx, value: int) -> tuple[str, str] | None:
    stack = ctx.node.meta.get("nn_module_stack") or {}
    for path, _type in reversed(list(stack.values())):
        mod = ctx.graph.model.get_submodule(path)
        for attr in HEAD_ATTRS:
            if getattr(mod, attr, None) == value and isinstance(value, int) and value > 1:
                return path, attr
    return None


@_method_rule("view", "reshape")
def _view(ctx: _Ctx) -> Any:
    x, *sizes = ctx.node.args
    if "shape" in ctx.node.kwargs:
        sizes = [ctx.node.kwargs["shape"]]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = list(sizes[0])
    if len(sizes) == 1 and isinstance(sizes[0], fx.Node):
        return _unknown(ctx, "reshape to a computed shape tuple")
    if any(isinstance(s, torch.dtype) for s in sizes):
        return _unknown(ctx, "view as another dtype")
    return _reshape(ctx, x, sizes)


@_function_rule(torch.reshape)
def _torch_reshape(ctx: _Ctx) -> Any:
    sizes = ctx.arg(1, "shape")
    if not isinstance(sizes, (tuple, list)):
        return _unknown(ctx, "reshape to a computed shape tuple")
    return _reshape(ctx, ctx.node.args[0], list(sizes))


@_function_rule(torch.flatten)
@_method_rule("flatten")
def _flatten(ctx: _Ctx) -> Any:
    return _reshape(ctx, ctx.node.args[0], None)


@_method_rule("unflatten")
def _unflatten(ctx: _Ctx) -> Any:
    x = ctx.node.args[0]
    v = ctx.val(x)
    d = ctx.val(ctx.arg(1, "dim")) % v.dim()
    sizes = list(ctx.arg(2, "sizes"))
    full = list(v.shape[:d]) + sizes + list(v.shape[d + 1 :])
    return _reshape(ctx, x, full)


# ---- reductions and normalisations over dims ----------------------------------------------------


def _reduce(ctx: _Ctx) -> Any:
    x = ctx.node.args[0]
    v, tl = ctx.val(x), ctx.tl(x)
    dim = ctx.val(ctx.arg(1, "dim"))
    keep = bool(ctx.val(ctx.node.kwargs.get("keepdim", False)))
    if len(ctx.node.args) > 2 and isinstance(ctx.node.args[2], bool):
        keep = ctx.node.args[2]
    dims = range(v.dim()) if dim is None else (dim if isinstance(dim, (tuple, list)) else [dim])
    dims = {d % v.dim() for d in dims} if v.dim() else set()
    ctx.fix([tl[d] for d in dims], "reduction over a channel dim")
    out = [None if d in dims else tl[d] for d in range(v.dim())]
    if not keep:
        out = [lab for d, lab in enumerate(out) if d not in dims]
    if isinstance(ctx.result, tuple):  # max/min with dim return (values, indices)
        return (tuple(out), tuple(out))
    if isinstance(ctx.result, torch.Tensor) and ctx.result.dim() != len(out):
        return _none_labels(ctx.result)
    return tuple(out)


for _name in ("mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "prod",
              "argmax", "argmin", "all", "any", "nansum"):
    METHOD_RULES[_name] = _reduce
    if hasattr(torch, _name):
        FUNCTION_RULES[getattr(torch, _name)] = _reduce


def _along_dim(ctx: _Ctx, dim: int | None, why: str) -> Any:
    x = ctx.node.args[0]
    tl = ctx.tl(x)
    if dim is None:
        ctx.fix(list(tl), why)
        return _none_labels(ctx.result)
    d = dim % len(tl)
    ctx.fix(tl[d], why)
    return tuple(None if i == d else lab for i, lab in enumerate(tl))


@_function_rule(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, torch.cumsum)
@_method_rule("softmax", "log_softmax", "cumsum")
def _softmax(ctx: _Ctx) -> Any:
    return _along_dim(ctx, ctx.val(ctx.arg(1, "dim")), "softmax/cumsum over a channel dim")


@_function_rule(F.normalize)
def _normalize(ctx: _Ctx) -> Any:
    return _along_dim(ctx, ctx.val(ctx.arg(2, "dim", 1)), "normalize over a channel dim")


@_function_rule(F.layer_norm)
def _f_layer_norm(ctx: _Ctx) -> Any:
    shape = ctx.val(ctx.arg(1, "normalized_shape"))
    tl = ctx.tl(ctx.node.args[0])
    n = len(shape)
    ctx.fix([*tl[-n:], *(ctx.tl(a) for a in ctx.node.args[2:4])],
             "layer norm statistics over the channel dim would change (kept exact)")
    return tl[:-n] + (None,) * n


# ---- spatial ops: pooling, interpolation --------------------------------------------------------


def _spatial(n_spatial: int | None) -> Rule:
    def rule(ctx: _Ctx) -> Any:
        x = ctx.node.args[0]
        tl = ctx.tl(x)
        k = len(tl) - 2 if n_spatial is None else n_spatial
        if ctx.result.dim() != len(tl):
            return _unknown(ctx)
        ctx.fix(list(tl[len(tl) - k :]), "spatial op over a channel dim")
        return tuple(tl[: len(tl) - k]) + (None,) * k

    return rule


for _f, _k in [
    (F.max_pool1d, 1), (F.max_pool2d, 2), (F.max_pool3d, 3), (F.avg_pool1d, 1),
    (F.avg_pool2d, 2), (F.avg_pool3d, 3), (F.adaptive_avg_pool1d, 1), (F.adaptive_avg_pool2d, 2),
    (F.adaptive_avg_pool3d, 3), (F.adaptive_max_pool1d, 1), (F.adaptive_max_pool2d, 2),
    (F.interpolate, None), (F.pad, None), (torch.max_pool2d, 2), (torch.avg_pool1d, 1),
]:
    FUNCTION_RULES[_f] = _spatial(_k)


# ---- matmul and attention -----------------------------------------------------------------------


@_function_rule(operator.matmul, torch.matmul, torch.bmm)
@_method_rule("matmul", "bmm")
def _matmul(ctx: _Ctx) -> Any:
    a, b = ctx.node.args[0], ctx.node.args[1]
    va, vb = ctx.val(a), ctx.val(b)
    if va.dim() < 2 or vb.dim() < 2:
        return _unknown(ctx, "matmul with a vector")
    return _matmul_from(ctx, va, ctx.tl(a), vb, ctx.tl(b), ctx.result)


@_function_rule(F.scaled_dot_product_attention)
def _sdpa(ctx: _Ctx) -> Any:
    q, k, v = (ctx.arg(i, n) for i, n in enumerate(("query", "key", "value")))
    tq = ctx.tl(q)
    if ctx.arg(6, "scale") is None and tq[-1] is not None:
        ctx.fix(tq[-1], "scaled_dot_product_attention's default scale depends on the head dim")
    if ctx.arg(3, "attn_mask") is not None:
        ctx.fix(ctx.lab(ctx.arg(3, "attn_mask")), "attention mask")
    kt = ctx.val(k).transpose(-2, -1)
    vq = ctx.val(q)
    scores = torch.empty(torch.broadcast_shapes(vq.shape[:-2], kt.shape[:-2])
                         + (vq.shape[-2], kt.shape[-1]))
    tk = _transpose(ctx.tl(k), -2, -1)
    sl = _matmul_from(ctx, ctx.val(q), tq, kt, tk, scores)
    out = _matmul_from(ctx, scores, sl[:-1] + (None,), ctx.val(v), ctx.tl(v), ctx.result)
    return out


def _matmul_from(ctx: _Ctx, va, ta, vb, tb, out) -> tuple:
    k_lab = _broadcast_dim(ctx, [(va.shape[-1], ta[-1]), (vb.shape[-2], tb[-2])], va.shape[-1], -1)
    nb = out.dim() - 2
    batch = []
    for d in range(nb):
        entries = []
        for v, tl in ((va, ta), (vb, tb)):
            kk = d - (nb - (v.dim() - 2))
            if kk >= 0:
                entries.append((v.shape[kk], tl[kk]))
        batch.append(_broadcast_dim(ctx, entries, out.shape[d], d))
    res = (*batch, ta[-2], tb[-1])
    ctx.graph.add_macs(out.numel() * va.shape[-1], [*res, k_lab], ctx.module_name)
    return res


@_function_rule(F.linear)
def _f_linear(ctx: _Ctx) -> Any:
    x, w = ctx.node.args[0], ctx.arg(1, "weight")
    tx, tw = ctx.tl(x), ctx.tl(w)
    b = ctx.arg(2, "bias")
    k = _broadcast_dim(ctx, [(ctx.val(x).shape[-1], tx[-1]), (ctx.val(w).shape[1], tw[1])],
                       ctx.val(w).shape[1], -1)
    out = tw[0]
    if b is not None and out is not None:
        tb = ctx.tl(b)
        if tb[0] is not None:
            ctx.graph.unify(out, tb[0])
    ctx.graph.add_macs(ctx.result.numel() * ctx.val(w).shape[1], [out, k], ctx.module_name)
    return tx[:-1] + (out,)


# ---- modules ------------------------------------------------------------------------------------


def _passthrough(ctx: _Ctx) -> Any:
    x = ctx.node.args[0]
    if isinstance(ctx.result, torch.Tensor) and ctx.result.shape == ctx.val(x).shape:
        return ctx.tl(x)
    return _unknown(ctx)


for _t in (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.LeakyReLU, nn.ELU, nn.SELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
):
    MODULE_RULES[_t] = _passthrough

for _t, _k in [
    (nn.MaxPool1d, 1), (nn.MaxPool2d, 2), (nn.MaxPool3d, 3), (nn.AvgPool1d, 1), (nn.AvgPool2d, 2),
    (nn.AvgPool3d, 3), (nn.AdaptiveAvgPool1d, 1), (nn.AdaptiveAvgPool2d, 2),
    (nn.AdaptiveAvgPool3d, 3), (nn.AdaptiveMaxPool1d, 1), (nn.AdaptiveMaxPool2d, 2),
    (nn.Upsample, None), (nn.UpsamplingNearest2d, 2), (nn.UpsamplingBilinear2d, 2),
    (nn.ZeroPad2d, 2), (nn.ReflectionPad2d, 2), (nn.ConstantPad2d, 2),
]:
    MODULE_RULES[_t] = _spatial(_k)


@register_module_rule(nn.Flatten)
def _flatten_module(ctx: _Ctx) -> Any:
    return _reshape(ctx, ctx.node.args[0], None)


@register_module_rule(nn.Softmax, nn.LogSoftmax)
def _softmax_module(ctx: _Ctx) -> Any:
    m = ctx.graph.model.get_submodule(ctx.node.target)
    return _along_dim(ctx, m.dim, "softmax over a channel dim")


def _channel_dim(x: torch.Tensor, n_spatial: int) -> int:
    return x.dim() - n_spatial - 1


@register_module_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(ctx: _Ctx) -> Any:
    name = str(ctx.node.target)
    m = ctx.graph.model.get_submodule(name)
    x = ctx.val(ctx.node.args[0])
    tl = ctx.tl(ctx.node.args[0])
    n_sp = len(m.kernel_size)
    cd = _channel_dim(x, n_sp)
    lin = tl[cd]
    g = ctx.graph
    cin, cout, groups = m.in_channels, m.out_channels, m.groups
    w, b = f"{name}.weight", f"{name}.bias"
    ctx.fix(list(tl[cd + 1 :]), "conv over a channel-labelled spatial dim")
    if groups == 1:
        if lin is not None:
            g.attach(w, 1, lin, "weight")
            g.set_attr(name, "in_channels", lin)
        out = g.new_block(cout, name)
        per_in = lin
    elif groups == cin:  # depthwise (channel multiplier cout // cin)
        if lin is None:
            ctx.graph.add_macs(_conv_macs(ctx.result, m), [], name)
            return (None,) * ctx.result.dim()
        out = np.repeat(lin, cout // cin)
        g.set_attr(name, "in_channels", lin)
        g.set_attr(name, "groups", lin)
        per_in = None
    else:  # grouped: every group loses the same positions, the group count stays
        per_in = None
        if lin is not None:
            grid = lin.reshape(groups, cin // groups)
            g.unify(grid, grid[:1])
            per_in = grid[0]
            g.attach(w, 1, per_in, "weight")
            g.set_attr(name, "in_channels", np.tile(per_in, groups))
        out = np.tile(g.new_block(cout // groups, name), groups)
    g.attach(w, 0, out, "weight")
    if m.bias is not None:
        g.attach(b, 0, out, "bias")
    g.set_attr(name, "out_channels", out)
    g.add_macs(_conv_macs(ctx.result, m), [out, per_in], name)
    g.layer_inputs[name] = tuple(x.shape)
    return tl[:cd] + (out,) + (None,) * n_sp


def _conv_macs(out: torch.Tensor, m: nn.Module) -> int:
    return out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)


@register_module_rule(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_transpose(ctx: _Ctx) -> Any:
    name = str(ctx.node.target)
    m = ctx.graph.model.get_submodule(name)
    x = ctx.val(ctx.node.args[0])
    tl = ctx.tl(ctx.node.args[0])
    n_sp = len(m.kernel_size)
    cd = _channel_dim(x, n_sp)
    g = ctx.graph
    if m.groups != 1 or len(ctx.node.args) > 1:
        return _unknown(ctx, "grouped ConvTranspose or explicit output_size")
    lin = tl[cd]
    w = f"{name}.weight"
    if lin is not None:
        g.attach(w, 0, lin, "weight")
        g.set_attr(name, "in_channels", lin)
    out = g.new_block(m.out_channels, name)
    g.attach(w, 1, out, "weight")
    if m.bias is not None:
        g.attach(f"{name}.bias", 0, out, "bias")
    g.set_attr(name, "out_channels", out)
    g.add_macs(x.numel() * m.out_channels * math.prod(m.kernel_size), [out, lin], name)
    g.layer_inputs[name] = tuple(x.shape)
    return tl[:cd] + (out,) + (None,) * n_sp


@register_module_rule(nn.Linear)
def _linear(ctx: _Ctx) -> Any:
    name = str(ctx.node.target)
    m = ctx.graph.model.get_submodule(name)
    x = ctx.val(ctx.node.args[0])
    tl = ctx.tl(ctx.node.args[0])
    g = ctx.graph
    lin = tl[-1]
    if lin is not None:
        g.attach(f"{name}.weight", 1, lin, "weight")
        g.set_attr(name, "in_features", lin)
    out = g.new_block(m.out_features, name)
    g.attach(f"{name}.weight", 0, out, "weight")
    if m.bias is not None:
        g.attach(f"{name}.bias", 0, out, "bias")
    g.set_attr(name, "out_features", out)
    g.add_macs(ctx.result.numel() * m.in_features, [out, lin], name)
    g.layer_inputs[name] = tuple(x.shape)
    return tl[:-1] + (out,)


@register_module_rule(nn.Embedding)
def _embedding(ctx: _Ctx) -> Any:
    name = str(ctx.node.target)
    m = ctx.graph.model.get_submodule(name)
    out = ctx.graph.new_block(m.embedding_dim, name)
    ctx.graph.attach(f"{name}.weight", 1, out, "weight")
    ctx.graph.set_attr(name, "embedding_dim", out)
    return ctx.tl(ctx.node.args[0]) + (out,)


@register_module_rule(
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
def _batchnorm(ctx: _Ctx) -> Any:
    name = str(ctx.node.target)
    m = ctx.graph.model.get_submodule(name)
    x = ctx.val(ctx.node.args[0])
    tl = ctx.tl(ctx.node.args[0])
    if x.dim() < 2:
        return _unknown(ctx, "unbatched normalisation")
    lab = tl[1]
    if lab is not None:
        for pname, kind in (("weight", "norm"), ("bias", "bias"), ("running_mean", "stat"),
                            ("running_var", "stat")):
            if getattr(m, pname, None) is not None:
                ctx.graph.attach(f"{name}.{pname}", 0, lab, kind)
        ctx.graph.set_attr(name, "num_features", lab)
    return tl


@register_module_rule(nn.GroupNorm)
def _groupnorm(ctx: _Ctx) -> Any:
    name = str(ctx.node.target)
    m = ctx.graph.model.get_submodule(name)
    tl = ctx.tl(ctx.node.args[0])
    lab = tl[1]
    if lab is None:
        return tl
    # Statistics are per group: removing whole groups keeps the others exact.
    grid = lab.reshape(m.num_groups, -1)
    ctx.graph.unify(grid, grid[:, :1])
    if m.affine:
        ctx.graph.attach(f"{name}.weight", 0, lab, "norm")
        ctx.graph.attach(f"{name}.bias", 0, lab, "bias")
    ctx.graph.set_attr(name, "num_groups", grid[:, 0])
    ctx.graph.set_attr(name, "num_channels", lab)
    return tl


@register_module_rule(nn.LayerNorm, nn.RMSNorm)
def _layernorm(ctx: _Ctx) -> Any:
    name = str(ctx.node.target)
    m = ctx.graph.model.get_submodule(name)
    tl = ctx.tl(ctx.node.args[0])
    n = len(m.normalized_shape)
    rms = isinstance(m, nn.RMSNorm)
    # RMSNorm over the kept channels is exact once weight and eps are rescaled (surgery);
    # LayerNorm's mean is not, so it only shrinks when the user accepts that.
    ok = n == 1 and tl[-1] is not None and (
        (rms and m.weight is not None) or (not rms and ctx.graph.layer_norm == "prune")
    )
    if not ok:
        why = ("layer norm statistics over the channel dim would change (kept exact; "
               "layer_norm='prune' allows it, approximately)" if not rms else
               "RMSNorm without weight (or over several dims) cannot be rescaled (kept)")
        ctx.fix(list(tl[-n:]), why)
        return tl[:-n] + (None,) * n
    lab = tl[-1]
    if m.weight is not None:
        ctx.graph.attach(f"{name}.weight", 0, lab, "norm")
    if getattr(m, "bias", None) is not None:
        ctx.graph.attach(f"{name}.bias", 0, lab, "bias")
    if name in ctx.graph.norms:
        ctx.graph.unify(ctx.graph.norms[name], lab)
    ctx.graph.norms[name] = lab
    return tl


@register_module_rule(nn.PReLU)
def _prelu(ctx: _Ctx) -> Any:
    name = str(ctx.node.target)
    m = ctx.graph.model.get_submodule(name)
    tl = ctx.tl(ctx.node.args[0])
    if m.num_parameters > 1:
        if tl[1] is None:
            return tl
        ctx.graph.attach(f"{name}.weight", 0, tl[1], "norm")
        ctx.graph.set_attr(name, "num_parameters", tl[1])
    return tl


@register_module_rule(nn.MultiheadAttention)
def _multihead_attention(ctx: _Ctx) -> Any:
    """Whole heads: q/k/v rows of the in-projection and out_proj columns, ``num_heads`` rewritten.

    ``embed_dim`` (inputs and output) is kept; the surgery switches a module that lost heads to
    ``HeadPrunedMultiheadAttention`` (its inner width ``num_heads * head_dim`` < ``embed_dim``).
    """
    name = str(ctx.node.target)
    m = ctx.graph.model.get_submodule(name)
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
             "average_attn_weights", "is_causal")
    args = {k: ctx.arg(i, k) for i, k in enumerate(names)}
    attn_mask = ctx.val(args["attn_mask"])
    need_weights = ctx.val(args["need_weights"])
    weights_used = need_weights is not False and any(
        not (u.op == "call_function" and u.target is operator.getitem)
        or (u.args[1] != 0 and len(u.users) > 0)
        for u in ctx.node.users
    )
    why = None
    if m.bias_k is not None or m.add_zero_attn:
        why = "nn.MultiheadAttention with add_bias_kv or add_zero_attn"
    elif isinstance(attn_mask, torch.Tensor) and attn_mask.dim() == 3:
        why = "nn.MultiheadAttention with a per-head (3-D) attn_mask"
    elif weights_used:
        why = "nn.MultiheadAttention attention weights (averaged over heads) are used"
    elif m.num_heads < 2:
        why = "nn.MultiheadAttention with one head"
    if why is not None:
        return _unknown(ctx, why)
    g = ctx.graph
    tq = ctx.tl(args["query"])
    q, k, v = (ctx.val(args[a]) for a in ("query", "key", "value"))
    keep_why = "nn.MultiheadAttention keeps embed_dim (only its heads are pruned)"
    ctx.fix(tq[-1], keep_why)
    for a in ("key", "value", "key_padding_mask", "attn_mask"):
        ctx.fix(ctx.lab(args[a]), keep_why)
    h, d = m.num_heads, m.head_dim
    inner = g.new_block(h * d, name)
    grid = inner.reshape(h, d)
    g.unify(grid, grid[:, :1])
    if m._qkv_same_embed_dim:
        g.attach(f"{name}.in_proj_weight", 0, np.tile(inner, 3), "weight")
    else:
        for w in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            g.attach(f"{name}.{w}", 0, inner, "weight")
    if m.in_proj_bias is not None:
        g.attach(f"{name}.in_proj_bias", 0, np.tile(inner, 3), "bias")
    g.attach(f"{name}.out_proj.weight", 1, inner, "weight")
    g.set_attr(name, "num_heads", grid[:, 0])
    # MACs (all scale with the kept heads): projections, scores, weighted sum, out_proj
    lq = q.numel() // q.shape[-1]
    lk = k.numel() // k.shape[-1]
    src = k.shape[-2] if (q.dim() == 3 and m.batch_first) else k.shape[0]
    macs = lq * h * d * (q.shape[-1] + m.embed_dim) + lk * h * d * (k.shape[-1] + v.shape[-1])
    macs += 2 * lq * src * h * d
    g.add_macs(macs, [inner], name)
    out = ctx.result[0]
    lab = tq[-1]
    if lab is None:  # the output width stays embed_dim
        lab = g.new_block(out.shape[-1], f"{name}.out_proj")
        ctx.fix(lab, keep_why)
    return (tq[:-1] + (lab,), _none_labels(ctx.result[1]))


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
