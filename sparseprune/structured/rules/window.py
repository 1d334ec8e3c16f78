"""Swin's and MaxViT's pieces, matched by name (torchvision is not imported):
``ShiftedWindowAttention``, ``ShiftedWindowAttentionV2`` and MaxViT's
``RelativePositionalMultiHeadAttention`` lose whole heads and their input/output widths follow
the residual stream; the fx-wrapped ``_patch_merging_pad`` (pad to even sizes, then the four
2x2 phases concatenated on the channel dim) repeats its input channels four times.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..window_attention import (
    GRID_ATTENTION,
    WINDOW_ATTENTION,
    grid_attention,
    is_grid_attention,
    is_window_attention,
    swin_forward,
)
from .core import _Ctx, _function_name_rule, _module_name_rule, _unknown

__all__: list[str] = []


@_module_name_rule(*WINDOW_ATTENTION)
def _window_attention(ctx: _Ctx) -> Any:
    """Whole heads: q/k/v rows of ``qkv``, ``proj`` columns, the heads' column of V1's
    ``relative_position_bias_table``, V2's ``cpb_mlp`` output rows and ``logit_scale``;
    ``num_heads`` rewritten. ``qkv``'s input and ``proj``'s output channels are the residual
    stream's. The surgery gives a pruned module a forward that reads the head width from the
    weights (``window_attention.py``)."""
    name = str(ctx.node.target)
    m = ctx.graph.model.get_submodule(name)
    x = ctx.val(ctx.node.args[0])
    if len(ctx.node.args) != 1 or ctx.node.kwargs or not is_window_attention(m) or \
            not isinstance(x, torch.Tensor) or x.dim() != 4:
        return _unknown(ctx, f"{type(m).__name__} called or built unlike torchvision's Swin "
                        "window attention")
    h = m.num_heads
    inner_w = m.qkv.out_features // 3
    v2 = hasattr(m, "logit_scale")
    cpb = getattr(m, "cpb_mlp", None)
    if m.qkv.out_features != 3 * inner_w or inner_w % h or m.qkv.in_features != x.shape[-1] or \
            m.proj.in_features != inner_w or (v2 and (cpb is None or len(cpb) != 3)):
        return _unknown(ctx, f"{type(m).__name__} widths do not split into {h} heads")
    if not _same(swin_forward(m, x), ctx.result):
        return _unknown(ctx, f"{type(m).__name__}'s forward does not compute torchvision's "
                        "shifted window attention (checked on the example input)")
    g, tl, lin = _stream_input(ctx, name, x)
    inner, heads = g.head_block(h, inner_w // h, name)
    out = _in_out(ctx, f"{name}.qkv", f"{name}.proj", inner, lin, m.qkv, m.proj)
    if v2:
        g.attach(f"{name}.logit_scale", 0, heads, "weight")
        g.attach(f"{name}.cpb_mlp.2.weight", 0, heads, "weight")
        g.set_attr(f"{name}.cpb_mlp.2", "out_features", heads)
    else:
        g.attach(f"{name}.relative_position_bias_table", 1, heads, "weight")
    g.set_attr(name, "num_heads", heads)
    # MACs as FlopCounterMode counts them: qkv and proj over the padded tokens, scores and
    # the weighted sum per window, V2's position-bias MLP.
    ws = m.window_size
    b, hh, ww, c = x.shape
    tokens = b * math.ceil(hh / ws[0]) * ws[0] * math.ceil(ww / ws[1]) * ws[1]
    n = ws[0] * ws[1]
    g.add_macs(tokens * c * 3 * inner_w, [inner, lin], name)
    g.add_macs(2 * tokens * n * inner_w, [inner], name)
    g.add_macs(tokens * inner_w * m.proj.out_features, [out, inner], name)
    if v2:
        table = math.prod(m.relative_coords_table.shape[:-1])
        g.add_macs(table * cpb[0].in_features * cpb[0].out_features, [], name)
        g.add_macs(table * cpb[2].in_features * h, [heads], name)
    g.layer_inputs[name] = tuple(x.shape)
    return tl[:-1] + (out,)


def _same(ours: torch.Tensor, theirs: object) -> bool:
    """Our reimplementation's output equals the module's own, to float rounding."""
    if not isinstance(theirs, torch.Tensor) or ours.shape != theirs.shape:
        return False
    scale = float(theirs.abs().max()) if theirs.numel() else 0.0
    return bool(torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5 * max(scale, 1.0)))


def _stream_input(ctx: _Ctx, name: str, x: torch.Tensor) -> tuple[Any, tuple, np.ndarray]:
    """``(graph, input labels, atoms of the input's last dim)``, the atoms kept when the input
    carries no channel labels."""
    g = ctx.graph
    tl = ctx.tl(ctx.node.args[0])
    return g, tl, tl[-1] if tl[-1] is not None else g.pinned_block(x.shape[-1], name)


def _in_out(ctx: _Ctx, qkv: str, proj: str, inner: np.ndarray, lin: np.ndarray,
            m_qkv, m_proj) -> np.ndarray:
    """Attach a qkv Linear (input ``lin``, rows q|k|v of ``inner``) and an output Linear
    (columns ``inner``); returns the output Linear's fresh output atoms."""
    g = ctx.graph
    g.attach(f"{qkv}.weight", 1, lin, "weight")
    g.set_attr(qkv, "in_features", lin)
    g.attach(f"{qkv}.weight", 0, np.tile(inner, 3), "weight")
    if m_qkv.bias is not None:
        g.attach(f"{qkv}.bias", 0, np.tile(inner, 3), "bias")
    g.set_attr(qkv, "out_features", np.tile(inner, 3))
    g.attach(f"{proj}.weight", 1, inner, "weight")
    g.set_attr(proj, "in_features", inner)
    return g.linear_out(proj, m_proj)


@_module_name_rule(*GRID_ATTENTION)
def _grid_attention(ctx: _Ctx) -> Any:
    """MaxViT's attention over ``[B, G, P, D]`` partitions: whole heads (``to_qkv`` rows in
    q|k|v chunks, ``merge`` columns, the bias table's head column, ``n_heads``); ``D`` and the
    output width follow the residual stream. A pruned module gets a forward that reshapes the
    heads' output to their own width (``window_attention.grid_attention``)."""
    name = str(ctx.node.target)
    m = ctx.graph.model.get_submodule(name)
    x = ctx.val(ctx.node.args[0])
    ok = (len(ctx.node.args) == 1 and not ctx.node.kwargs and is_grid_attention(m)
          and isinstance(x, torch.Tensor) and x.dim() == 4)
    h = getattr(m, "n_heads", 0)
    if not ok or m.to_qkv.out_features != 3 * h * m.head_dim or \
            m.merge.in_features != h * m.head_dim or m.to_qkv.in_features != x.shape[-1] or \
            tuple(m.relative_position_bias_table.shape[1:]) != (h,):
        return _unknown(ctx, f"{type(m).__name__} called or built unlike torchvision's MaxViT "
                        "attention")
    if not _same(grid_attention(m, x), ctx.result):
        return _unknown(ctx, f"{type(m).__name__}'s forward does not compute torchvision's "
                        "MaxViT attention (checked on the example input)")
    g, tl, lin = _stream_input(ctx, name, x)
    inner, heads = g.head_block(h, m.head_dim, name)
    out = _in_out(ctx, f"{name}.to_qkv", f"{name}.merge", inner, lin, m.to_qkv, m.merge)
    g.attach(f"{name}.relative_position_bias_table", 1, heads, "weight")
    g.set_attr(name, "n_heads", heads)
    b, groups, p, d = x.shape
    tokens, width = b * groups * p, h * m.head_dim
    g.add_macs(tokens * d * 3 * width, [inner, lin], name)
    g.add_macs(2 * tokens * p * width, [inner], name)
    g.add_macs(tokens * width * m.merge.out_features, [out, inner], name)
    g.layer_inputs[name] = tuple(x.shape)
    return tl[:-1] + (out,)


def _merge_reference(x: torch.Tensor) -> torch.Tensor:
    hh, ww = x.shape[-3], x.shape[-2]
    x = F.pad(x, (0, 0, 0, ww % 2, 0, hh % 2))
    return torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :],
                      x[..., 1::2, 1::2, :]], -1)


@_function_name_rule("_patch_merging_pad")
def _patch_merging_pad(ctx: _Ctx) -> Any:
    """torchvision's Swin patch merging: ``[..., H, W, C] -> [..., H/2, W/2, 4C]``, the four
    phases of each 2x2 patch side by side on the channel dim. Matched by name, so the result
    is first checked against that computation on the example input."""
    x = ctx.val(ctx.node.args[0]) if len(ctx.node.args) == 1 and not ctx.node.kwargs else None
    if not isinstance(x, torch.Tensor) or x.dim() < 3 or not isinstance(ctx.result, torch.Tensor):
        return _unknown(ctx, "_patch_merging_pad called unlike torchvision's Swin")
    ref = _merge_reference(x)
    if ref.shape != ctx.result.shape or not torch.equal(ref, ctx.result):
        return _unknown(ctx, "_patch_merging_pad does not compute Swin's patch merging")
    tl = ctx.tl(ctx.node.args[0])
    ctx.fix(list(tl[-3:-1]), "patch merging over a channel-labelled spatial dim")
    lab = tl[-1]
    return tl[:-3] + (None, None, None if lab is None else np.tile(lab, 4))
