"""Shape rules: size queries, transposes and permutes, (un)squeeze, expand/repeat, and reshapes.

``x.shape`` / ``x.size()`` give ``IntDep`` labels so that a size computed from a channel count is
recognised when it comes back as a reshape argument; ``_reshape`` decides how labels cross a
``view``/``reshape``/``flatten``/``unflatten`` (whole heads when a size is a head count).
Indexing, splitting and joining are in ``indexing.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx

from ..width_attrs import literal_readers
from .attention import HEAD_ATTRS
from .core import IntDep, _Ctx, _function_rule, _method_rule, _unknown

#: Module attributes taken to hold a width that a reshape may read as a literal (torchvision
#: ViT's ``hidden_dim``); used only when re-tracing proves the literal follows the attribute.
WIDTH_NAME_ATTRS = ("hidden_dim", "embed_dim", "hidden_size", "d_model", "dim", "width")

__all__: list[str] = []


# ---- sizes and attributes -----------------------------------------------------------------------


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


# ---- shape ops ----------------------------------------------------------------------------------


def _transpose(tl: tuple, a: int, b: int) -> tuple:
    out = list(tl)
    out[a], out[b] = out[b], out[a]
    return tuple(out)


@_function_rule(torch.transpose, torch.swapdims)
@_method_rule("transpose", "transpose_", "swapaxes", "swapdims")
def _transpose_rule(ctx: _Ctx) -> Any:
    x = ctx.node.args[0]
    tl = ctx.tl(x)
    return _transpose(tl, ctx.val(ctx.arg(1, "dim0")), ctx.val(ctx.arg(2, "dim1")))


@_function_rule(torch.swapaxes)
def _swapaxes(ctx: _Ctx) -> Any:
    """``torch.swapaxes(x, axis0, axis1)`` (MaxViT's grid partition)."""
    tl = ctx.tl(ctx.node.args[0])
    return _transpose(tl, ctx.val(ctx.arg(1, "axis0")), ctx.val(ctx.arg(2, "axis1")))


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
    d = ctx.val(ctx.arg(1, "dim"))
    if d is None:
        dims = list(range(v.dim()))
    else:  # one dim, or a tuple of dims (torch >= 2.0)
        dims = [i % v.dim() for i in (d if isinstance(d, (tuple, list)) else [d])]
    dims = [i for i in dims if v.shape[i] == 1]
    ctx.fix([tl[i] for i in dims], "squeeze of a channel dim")
    return tuple(lab for i, lab in enumerate(tl) if i not in dims)


@_function_rule(torch.broadcast_to)
@_method_rule("expand", "expand_as", "broadcast_to")
def _expand(ctx: _Ctx) -> Any:
    x = ctx.node.args[0]
    v, tl = ctx.val(x), ctx.tl(x)
    out = ctx.result
    lead = out.dim() - v.dim()
    res = [None] * lead
    for k in range(v.dim()):
        res.append(tl[k] if v.shape[k] == out.shape[lead + k] else None)
    if ctx.node.target == "expand_as":  # the target's channels must shrink with ours
        other = ctx.tl(ctx.arg(1, "other"))
        for k in range(v.dim()):
            if res[lead + k] is not None:
                if other[lead + k] is None:
                    ctx.fix(res[lead + k], "expand_as a tensor whose dim cannot shrink")
                    res[lead + k] = None
                else:
                    ctx.graph.unify(res[lead + k], other[lead + k])
        return tuple(res)
    # expand(*sizes), expand(sizes), broadcast_to(sizes): a literal channel count cannot follow
    # the pruned width; a size read from a tensor's dim (x.size(1)) couples the two
    sizes = list(ctx.node.args[1:]) or [ctx.node.kwargs.get("size", ctx.node.kwargs.get("shape"))]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):  # x.expand((2, 64, 8, 8))
        sizes = list(sizes[0])
    for k in range(v.dim()):
        a = sizes[lead + k] if len(sizes) > lead + k else -1
        lab = res[lead + k]
        if lab is None or (isinstance(a, int) and a == -1):
            continue
        dep = ctx.lab(a)
        if isinstance(dep, IntDep) and dep.direct and dep.atoms is not None and (
                dep.atoms.shape == lab.shape):
            ctx.graph.unify(lab, dep.atoms)
            continue
        ctx.fix(lab, "expand to a literal channel count" if isinstance(a, int) else
                "expand to a computed channel count")
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
                 if isinstance(kd, tuple) and kd[0] in ("heads", "width")]
        # Prefer removing whole heads (a head-count attribute the surgery rewrites); the other
        # sizes then keep their values.
        if heads:
            free = []
        if len(free) > 1:
            ctx.fix(lab, "reshape with two computed sizes over one channel dim")
            continue
        if not free and not heads:
            ctx.fix(lab, _fixed_width_reason(ctx, size_args, j0, j1)
                    or "reshape of a channel dim to literal sizes")
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
            kind, module, attr = heads[0][1]
            g.set_attr(module, attr, units)
            if kind == "width":  # checked again once the widths are planned (width_attrs.py)
                g.width_users.setdefault((module, attr), set()).add(ctx.node.name)
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
        elif a == size:
            width = _width_attr(ctx, a)
            if width is not None:
                return ("width", *width)
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


def _width_attr(ctx: _Ctx, value: int) -> tuple[str, str] | None:
    """``(module, attribute)`` whose int value this reshape's literal size is: tracing the
    model again with the attribute changed changes this reshape, and only view/reshape nodes
    (torchvision ViT's ``x.reshape(n, self.hidden_dim, n_h * n_w)``; ``plan`` checks again with
    the planned value, ``width_attrs.py``). None when no such attribute exists."""
    stack = ctx.node.meta.get("nn_module_stack") or {}
    paths = [path for path, _type in reversed(list(stack.values()))] + [""]
    g = ctx.graph
    for path in dict.fromkeys(paths):
        mod = g.model.get_submodule(path)
        for attr in WIDTH_NAME_ATTRS:
            v = getattr(mod, attr, None)
            if isinstance(v, int) and not isinstance(v, bool) and v == value > 1:
                changed = literal_readers(g, path, attr)
                if changed is not None and ctx.node.name in changed:
                    return path, attr
    return None


def _fixed_width_reason(ctx: _Ctx, size_args: list | None, j0: int, j1: int) -> str | None:
    """Why a literal of ``size_args[j0:j1]`` that reads a width attribute may not follow it
    (found by ``plan``'s check, ``graph.fixed_widths``), if one does."""
    g = ctx.graph
    for (path, attr), why in g.fixed_widths.items():
        value = getattr(g.model.get_submodule(path), attr, None)
        if any(size_args is not None and size_args[j] == value for j in range(j0, j1)):
            return why
    return None


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

