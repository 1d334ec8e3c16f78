"""Rules for functions and tensor methods that compute: elementwise math (``operator.*``,
``torch.*``, ``F.*`` activations), reductions, softmax/cumsum/normalize, ``F.layer_norm``, pooling
and interpolation, matmul, ``F.scaled_dot_product_attention`` and ``F.linear``.

Module forms of the same ops (``nn.ReLU``, ``nn.MaxPool2d``, ``nn.Softmax``...) are in
``modules.py``; they reuse ``_spatial`` and ``_along_dim`` from here.
"""

from __future__ import annotations

import inspect
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .core import (
    FUNCTION_RULES,
    METHOD_RULES,
    Rule,
    _broadcast,
    _broadcast_dim,
    _Ctx,
    _function_rule,
    _int_arith,
    _method_rule,
    _none_labels,
    _unknown,
)
from .shapes import _transpose

__all__: list[str] = []


# ---- elementwise --------------------------------------------------------------------------------


def _elementwise(ctx: _Ctx) -> Any:
    if not isinstance(ctx.result, torch.Tensor):
        return _int_arith(ctx)
    operands = [a for a in ctx.node.args if not isinstance(a, (str, torch.dtype))]
    operands += [v for k, v in ctx.node.kwargs.items() if k in ("other", "input", "alpha")]
    return _broadcast(ctx, operands, ctx.result.shape)



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


# ---- reductions and normalisations over dims ----------------------------------------------------


def _reduce(ctx: _Ctx) -> Any:
    x = ctx.node.args[0]
    v, tl = ctx.val(x), ctx.tl(x)
    if isinstance(ctx.val(ctx.arg(1, "other")), torch.Tensor):
        return _elementwise(ctx)  # torch.max(a, b) / a.min(b): elementwise maximum / minimum
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
    """``F.layer_norm(x, normalized_shape, weight, bias, eps)``, e.g. torchvision's
    ``LayerNorm2d.forward`` (fx records weight and bias as keywords there).

    The width shrinks (with ``layer_norm="prune"``, the default) when the calling module is a
    LayerNorm that owns ``weight``/``bias`` and whose forward is only ``F.layer_norm``, maybe
    between a permute and its inverse: the surgery then swaps that module for a
    ``PrunedLayerNorm`` over the same dim of its input. Otherwise the channels and the affine
    parameters are kept.
    """
    shape = ctx.val(ctx.arg(1, "normalized_shape"))
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    tl = ctx.tl(ctx.node.args[0])
    n = len(shape)
    affine = [a for a in (ctx.arg(2, "weight"), ctx.arg(3, "bias")) if a is not None]
    owner = _norm_owner(ctx, shape)
    dim = _owner_dim(ctx, owner) if owner is not None and n == 1 else None
    why = None
    if owner is None:
        why = "F.layer_norm outside a LayerNorm module that owns its weight (width kept)"
    elif ctx.graph.layer_norm != "prune":
        why = "layer norm statistics over the channel dim (kept: layer_norm='keep')"
    elif dim is None:
        why = (f"{type(ctx.graph.model.get_submodule(owner)).__name__}.forward does more than "
               "F.layer_norm between a permute and its inverse (width kept)")
    elif ctx.arg(2, "weight") is None:
        why = ("layer norm without weight: its removed channels would not be zero after it "
               "(width kept)")
    else:
        why = ctx.graph.fixed_norms.get(owner)
    if why is not None or tl[-1] is None:
        ctx.fix([*tl[-n:], *(ctx.lab(a) for a in affine)], why or "layer norm (kept)")
        return tl[:-n] + (None,) * n
    lab = tl[-1]
    for a in affine:
        ctx.graph.unify(ctx.tl(a)[0], lab)
        att = ctx.graph.attachments.get((str(a.target), 0))
        if att is not None:  # scored like nn.LayerNorm's weight, not as a conv weight
            att.kind = "norm" if a.target.endswith("weight") else "bias"
    ctx.graph.add_norm(owner, lab, dim)
    return tl


def _norm_owner(ctx: _Ctx, shape: tuple) -> str | None:
    """Name of the module whose forward called ``F.layer_norm`` when it is an nn.LayerNorm
    (subclass) whose own ``normalized_shape``, ``weight`` (as weight), ``bias`` (as bias) and
    ``eps`` this call uses, with a one-argument forward; else None."""
    name = ctx.module_name
    if name is None:
        return None
    m = ctx.graph.model.get_submodule(name)
    if not isinstance(m, nn.LayerNorm) or tuple(m.normalized_shape) != shape:
        return None
    for i, key in ((2, "weight"), (3, "bias")):
        a = ctx.arg(i, key)
        own = getattr(m, key, None)
        if own is None and a is None:
            continue
        if not (isinstance(a, fx.Node) and a.op == "get_attr" and str(a.target) == f"{name}.{key}"):
            return None
    if ctx.val(ctx.arg(4, "eps", 1e-5)) != m.eps:
        return None
    try:
        params = list(inspect.signature(type(m).forward).parameters)
    except (TypeError, ValueError):
        return None
    return name if len(params) == 2 else None  # (self, x): the surgery's forward takes one


def _owner_dim(ctx: _Ctx, owner: str) -> int | None:
    """The dim of ``owner``'s input that its ``F.layer_norm`` normalises (-1: the last), when
    the owner's forward computes nothing else: ``[permute ->] layer_norm [-> inverse
    permute]``, the permute reading the module's input. None otherwise."""
    ln = ctx.node
    inner = [m for m in ln.graph.nodes if m.op in ("call_function", "call_method", "call_module")
             and _innermost(m) == owner]
    if inner == [ln]:
        return -1 if _outside(ln.args[0], owner) else None
    if len(inner) != 3 or inner[1] is not ln:
        return None
    before, after = inner[0], inner[2]
    dims_in, dims_out = _permute_dims(ctx, before), _permute_dims(ctx, after)
    if dims_in is None or dims_out is None or ln.args[0] is not before or \
            list(ln.users) != [after] or after.args[0] is not ln or \
            not _outside(before.args[0], owner):
        return None
    if [dims_in[d] for d in dims_out] != list(range(len(dims_in))):
        return None  # the second permute does not undo the first
    if dims_in[-1] == 0:
        return None  # normalising the leading (batch) dim: no PrunedLayerNorm for it
    return dims_in[-1] if dims_in[-1] != len(dims_in) - 1 else -1


def _innermost(node: fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    return list(stack.values())[-1][0] if stack else None


def _outside(node: Any, owner: str) -> bool:
    """``node`` is computed outside ``owner`` (so it is the module's input)."""
    if not isinstance(node, fx.Node):
        return False
    name = _innermost(node) if node.op != "call_module" else str(node.target)
    return name is None or (name != owner and not name.startswith(owner + "."))


def _permute_dims(ctx: _Ctx, node: fx.Node) -> list[int] | None:
    """The dims of a ``x.permute(...)`` / ``torch.permute(x, dims)`` node, else None."""
    if node.op == "call_method" and node.target == "permute":
        dims = ctx.val(node.args[1:])
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
    elif node.op == "call_function" and node.target is torch.permute:
        dims = ctx.val(node.args[1] if len(node.args) > 1 else node.kwargs.get("dims"))
    else:
        return None
    if not isinstance(dims, (tuple, list)) or not all(isinstance(d, int) for d in dims):
        return None
    rank = len(dims)
    dims = [d % rank for d in dims]
    return dims if sorted(dims) == list(range(rank)) else None


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



@_function_rule(torch.einsum)
def _einsum(ctx: _Ctx) -> Any:
    """``torch.einsum(eq, a, b, ...)``: a letter shared by operands couples their dims (a summed
    letter is a contraction, like matmul's inner dim); a letter summed within one operand is a
    reduction. Two-operand MACs are the product of all letter sizes (what FlopCounterMode
    counts); other forms are costed by the interpreter's measurement."""
    eq, *ops = ctx.node.args
    if len(ops) == 1 and isinstance(ops[0], (tuple, list)):
        ops = list(ops[0])
    vals = [ctx.val(o) for o in ops]
    eq = eq.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if "." in eq or len(terms) != len(vals) or not all(isinstance(v, torch.Tensor) for v in vals):
        return _unknown(ctx, "einsum with '...' or non-tensor operands")
    if not arrow:  # implicit output: the letters used once, in alphabetical order
        rhs = "".join(sorted(c for c in set(lhs) - {","} if lhs.count(c) == 1))
    entries: dict[str, list] = {}
    for term, v, tl in zip(terms, vals, (ctx.tl(o) for o in ops), strict=True):
        for d, c in enumerate(term):
            entries.setdefault(c, []).append((v.shape[d], tl[d], term))
    labels, sizes = {}, {}
    for c, ent in entries.items():
        sizes[c] = max(s for s, _, _ in ent)
        users = {t for s, _, t in ent if s == sizes[c]}
        if c not in rhs and len(users) == 1:  # summed away inside one operand
            ctx.fix([lab for _, lab, _ in ent], "einsum sums over a channel dim")
            labels[c] = None
            continue
        labels[c] = _broadcast_dim(ctx, [(s, lab) for s, lab, _ in ent], sizes[c], 0)
    if len(vals) == 2:
        macs = 1
        for c in sizes:
            macs *= sizes[c]
        ctx.graph.add_macs(macs, list(labels.values()), ctx.module_name)
    return tuple(labels[c] for c in rhs)
