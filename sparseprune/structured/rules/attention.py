"""Attention rules: ``nn.MultiheadAttention`` (whole heads) and the head-count attributes.

``HEAD_ATTRS`` names the module attributes taken to hold a head count; a reshape that splits a
channel dim by one of them (see ``shapes.py``) removes whole heads, and the surgery rewrites the
attribute. ``F.scaled_dot_product_attention`` is in ``functional.py`` with matmul.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
from torch import nn

from .core import _Ctx, _none_labels, _unknown, register_module_rule

__all__ = ["HEAD_ATTRS"]

# Module attributes taken to hold an attention head count that surgery may rewrite.
HEAD_ATTRS = ("num_heads", "heads", "n_heads", "n_head", "num_attention_heads", "nheads")


@register_module_rule(nn.MultiheadAttention)
def _multihead_attention(ctx: _Ctx) -> Any:
    """Whole heads: q/k/v rows of the in-projection and out_proj columns, ``num_heads`` rewritten.

    In self-attention (query, key and value one tensor, packed in-projection, no masks) the
    embedding width shrinks with its residual stream (in-projection columns, out_proj rows,
    ``embed_dim`` / ``kdim`` / ``vdim``); otherwise ``embed_dim`` is kept. The surgery switches a
    module whose inner width ``num_heads * head_dim`` differs from ``embed_dim`` to
    ``HeadPrunedMultiheadAttention``.
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
    g = ctx.graph
    if why is not None:
        # The heads are a width of their own: pin them so that the plan names this module even
        # when embed_dim was pinned elsewhere already; the projections are pinned too, so that
        # another call of the same module cannot cut them.
        inner = g.new_block(m.num_heads * m.head_dim, name)
        ctx.fix(inner, why)
        _pin_projections(g, name, m, inner)
        return _unknown(ctx, why)
    tq = ctx.tl(args["query"])
    q, k, v = (ctx.val(args[a]) for a in ("query", "key", "value"))
    # Self-attention (one tensor as query, key and value, packed in-projection): the embedding
    # width may shrink with the residual stream; otherwise it is kept.
    self_attn = (args["query"] is args["key"] is args["value"] and m._qkv_same_embed_dim
                 and args["key_padding_mask"] is None and args["attn_mask"] is None)
    keep_why = ("nn.MultiheadAttention keeps embed_dim unless it is self-attention (one "
                "tensor as query, key and value, one packed in-projection, no masks): only its "
                "heads are pruned")
    if not self_attn:
        ctx.fix(tq[-1], keep_why)
        for a in ("key", "value", "key_padding_mask", "attn_mask"):
            ctx.fix(ctx.lab(args[a]), keep_why)
        _pin_projections(g, name, m, None)  # embed_dim stays: for every call of the module
    h, d = m.num_heads, m.head_dim
    inner, heads = g.head_block(h, d, name)
    if m._qkv_same_embed_dim:
        g.attach(f"{name}.in_proj_weight", 0, np.tile(inner, 3), "weight")
    else:
        for w in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            g.attach(f"{name}.{w}", 0, inner, "weight")
    if m.in_proj_bias is not None:
        g.attach(f"{name}.in_proj_bias", 0, np.tile(inner, 3), "bias")
    g.attach(f"{name}.out_proj.weight", 1, inner, "weight")
    g.set_attr(name, "num_heads", heads)
    lq = q.numel() // q.shape[-1]
    lk = k.numel() // k.shape[-1]
    src = k.shape[-2] if (q.dim() == 3 and m.batch_first) else k.shape[0]
    out = ctx.result[0]
    if self_attn:
        lin = tq[-1] if tq[-1] is not None else g.pinned_block(q.shape[-1], name)
        g.attach(f"{name}.in_proj_weight", 1, lin, "weight")
        for attr in ("embed_dim", "kdim", "vdim"):
            g.set_attr(name, attr, lin)
        lab = g.linear_out(f"{name}.out_proj", m.out_proj)
    else:
        lin = None
        lab = tq[-1]
        if lab is None:  # the output width stays embed_dim
            lab = g.new_block(out.shape[-1], f"{name}.out_proj")
            ctx.fix(lab, keep_why)
    g.set_attr(f"{name}.out_proj", "in_features", inner)
    # MACs (all scale with the kept heads): projections, scores, weighted sum, out_proj
    g.add_macs(lq * h * d * q.shape[-1] + lk * h * d * (k.shape[-1] + v.shape[-1]),
               [inner, lin], name)
    g.add_macs(lq * h * d * m.embed_dim, [inner, lab], name)
    g.add_macs(2 * lq * src * h * d, [inner], name)
    if (q.shape == k.shape == v.shape and args["key_padding_mask"] is None
            and args["attn_mask"] is None):  # the latency table times these by head count
        g.attention_calls[name] = (tuple(q.shape), need_weights is not False)
    return (tq[:-1] + (lab,), _none_labels(ctx.result[1]))


def _pin_projections(g, name: str, m: nn.MultiheadAttention, inner) -> None:
    """Attach the embedding dims of ``m``'s projections (and, given ``inner``, their head dims)
    to kept atoms: a module called once like this keeps them for all its calls."""
    e = m.embed_dim
    if m._qkv_same_embed_dim:
        g.attach(f"{name}.in_proj_weight", 1, g.pinned_block(e, name), "weight")
    else:
        for w, size in (("q_proj_weight", e), ("k_proj_weight", m.kdim), ("v_proj_weight", m.vdim)):
            g.attach(f"{name}.{w}", 1, g.pinned_block(size, name), "weight")
    out = g.pinned_block(e, f"{name}.out_proj")
    g.attach(f"{name}.out_proj.weight", 0, out, "weight")
    if m.out_proj.bias is not None:
        g.attach(f"{name}.out_proj.bias", 0, out, "bias")
    if inner is not None:
        if m._qkv_same_embed_dim:
            g.attach(f"{name}.in_proj_weight", 0, np.tile(inner, 3), "weight")
        if m.in_proj_bias is not None:
            g.attach(f"{name}.in_proj_bias", 0, np.tile(inner, 3), "bias")
        g.attach(f"{name}.out_proj.weight", 1, inner, "weight")
