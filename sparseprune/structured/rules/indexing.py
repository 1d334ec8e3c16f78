"""Indexing, splitting and joining rules: ``getitem``, ``chunk``/``split``/``unbind``,
``cat``/``stack``.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from ..labels import FIXED
from .core import IntDep, _broadcast_dim, _Ctx, _function_rule, _method_rule, _unknown

__all__: list[str] = []


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
    if isinstance(idx, fx.Node) and _is_index_tensor(ctx.val(idx)):
        return _take_rows(ctx, idx, tl)
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


def _is_index_tensor(v: Any) -> bool:
    return isinstance(v, torch.Tensor) and not v.is_floating_point() and not v.is_complex() and (
        v.dtype != torch.bool)


def _take_rows(ctx: _Ctx, idx: fx.Node, tl: list) -> tuple:
    """``src[idx]`` with one integer tensor: rows of dim 0 gathered (the result has
    ``idx.shape + src.shape[1:]``), e.g. a relative position bias read from its table
    (``table[index]`` in torchvision's Swin and MaxViT). Dim 0 and the index's dims cannot
    shrink; the other dims pass through."""
    ctx.fix(tl[0], "integer tensor index into a channel dim")
    ctx.fix(ctx.lab(idx), "integer tensor index computed from a channel dim")
    return (None,) * ctx.val(idx).dim() + tuple(tl[1:])


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

