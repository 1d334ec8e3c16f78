"""Module rules (``call_module``): activations and dropout (pass-through), stochastic depth
(by class name), pooling and padding, ``nn.Flatten``, ``nn.Softmax``, convolutions, ``nn.Linear``,
``nn.Embedding``, batch/instance/group/layer/RMS norms and ``nn.PReLU``.
``nn.MultiheadAttention`` is in ``attention.py``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from .core import MODULE_RULES, _Ctx, _module_name_rule, _unknown, register_module_rule
from .functional import _along_dim, _spatial
from .shapes import _reshape

__all__: list[str] = []

# nn.RMSNorm is new in torch 2.4; pyproject allows torch >= 2.3.
_RMSNorm: type | None = getattr(nn, "RMSNorm", None)

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

@_module_name_rule("StochasticDepth", "DropPath")
def _stochastic_depth(ctx: _Ctx) -> Any:
    """torchvision's ``StochasticDepth`` (``p``, ``mode`` "row"/"batch") and timm's ``DropPath``
    (``drop_prob``): identity in eval mode; in training the input is scaled by one random factor
    per sample (or per batch), the same for every channel, so the channels pass through."""
    m = ctx.graph.model.get_submodule(str(ctx.node.target))
    name = type(m).__name__
    if name == "StochasticDepth":
        ok = isinstance(getattr(m, "p", None), float) and getattr(m, "mode", None) in (
            "row", "batch")
    else:
        ok = isinstance(getattr(m, "drop_prob", None), float)
    if not ok:
        return _unknown(ctx, f"module {name} does not look like stochastic depth (p and "
                             "mode 'row'/'batch', or drop_prob)")
    return _passthrough(ctx)


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
        lin = lin if lin is not None else g.pinned_block(cin, name)
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
    elif g.grouped == "groups" and lin is not None:
        # Whole groups leave: input group j feeds only output group j, so one unit is input
        # group j's channels (coupled with the layer before) and output group j's; the group
        # count, in/out channels shrink and the per-group width (weight dim 1) stays.
        grid = lin.reshape(groups, cin // groups)
        g.unify(grid, grid[:, :1])
        out = g.new_block(groups, name, repeat=cout // groups)
        g.unify(grid[:, 0], out[:: cout // groups])
        g.set_attr(name, "in_channels", lin)
        g.set_attr(name, "groups", grid[:, 0])
        per_in = None  # MACs scale with the kept groups only (the output dim)
    else:  # grouped: every group loses the same positions, the group count stays
        # (also with grouped="groups" when the input channels cannot shrink: the output
        # positions still can)
        lin = lin if lin is not None else g.pinned_block(cin, name)
        grid = lin.reshape(groups, cin // groups)
        g.unify(grid, grid[:1])
        per_in = grid[0]
        g.attach(w, 1, per_in, "weight")
        g.set_attr(name, "in_channels", np.tile(per_in, groups))
        # one unit is the same position in every group: ``groups`` channels
        out = g.new_block(cout // groups, name, tile=groups)
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
    if m.groups != 1 or len(ctx.node.args) > 1 or ctx.node.kwargs.get("output_size") is not None:
        return _unknown(ctx, "grouped ConvTranspose or explicit output_size")
    lin = tl[cd]
    w = f"{name}.weight"
    lin = lin if lin is not None else g.pinned_block(m.in_channels, name)
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
    lin = tl[-1] if tl[-1] is not None else g.pinned_block(m.in_features, name)
    g.attach(f"{name}.weight", 1, lin, "weight")
    g.set_attr(name, "in_features", lin)
    out = g.linear_out(name, m)
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
    lab = tl[1] if tl[1] is not None else ctx.graph.pinned_block(x.shape[1], name)
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


@register_module_rule(nn.LayerNorm, *([_RMSNorm] if _RMSNorm is not None else []))
def _layernorm(ctx: _Ctx) -> Any:
    """nn.LayerNorm / RMSNorm (and a ``PrunedLayerNorm`` from an earlier round, which may
    normalise dim 1). The width shrinks with its group, exactly: RMSNorm by rescaling its
    weight and eps, LayerNorm by becoming a ``PrunedLayerNorm`` whose statistics still count
    the removed (zero) channels; ``layer_norm="keep"`` keeps LayerNorm widths."""
    name = str(ctx.node.target)
    m = ctx.graph.model.get_submodule(name)
    tl = ctx.tl(ctx.node.args[0])
    n = len(m.normalized_shape)
    dim = getattr(m, "channel_dim", -1)
    rms = _RMSNorm is not None and isinstance(m, _RMSNorm)
    if len(tl) < max(n, dim + 1):
        return _unknown(ctx, f"{type(m).__name__} over more dims than its input has")
    dims = list(range(len(tl) - n, len(tl))) if dim == -1 else [dim]
    if all(tl[d] is None for d in dims):
        # The model input, say: a shared norm's affine parameters keep their width, so that a
        # second call on prunable channels cannot cut them under this one.
        for pname in ("weight", "bias"):
            t = getattr(m, pname, None)
            if isinstance(t, torch.Tensor) and t.dim() == 1 and n == 1:
                ctx.graph.attach(f"{name}.{pname}", 0, ctx.graph.pinned_block(t.numel(), name),
                                 "norm")
        return tl
    if n != 1:
        why = "layer norm over several dims (kept)"
    elif m.weight is None:
        why = (f"{type(m).__name__} without weight: RMSNorm cannot be rescaled, and a LayerNorm's "
               "removed channels would not be zero after it (kept)")
    elif not rms and ctx.graph.layer_norm != "prune":
        why = "layer norm statistics over the channel dim (kept: layer_norm='keep')"
    else:
        why = ctx.graph.fixed_norms.get(name)
    if why is not None:
        ctx.fix([tl[d] for d in dims], why)
        return tuple(None if i in dims else lab for i, lab in enumerate(tl))
    lab = tl[dims[0]]
    if m.weight is not None:
        ctx.graph.attach(f"{name}.weight", 0, lab, "norm")
    if getattr(m, "bias", None) is not None:
        ctx.graph.attach(f"{name}.bias", 0, lab, "bias")
    ctx.graph.add_norm(name, lab, dim)
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

