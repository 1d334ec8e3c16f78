"""Windowed attention of torchvision's Swin V1/V2 (``ShiftedWindowAttention[V2]``) and MaxViT
(``RelativePositionalMultiHeadAttention``) after pruning heads or the embedding width.

torchvision computes it in ``shifted_window_attention(x, qkv.weight, proj.weight, ...)``, which
takes the head width from the input (``C // num_heads``) and reshapes the heads' output back to
``C``: once heads are removed (inner width ``num_heads * head_dim`` below the input width) or the
input width shrinks, that no longer holds. :func:`window_attention` is the same computation with
the head width read from ``qkv.weight`` (``rows / 3 / num_heads``), the inner and output widths
apart from the input's. MaxViT's attention reshapes the heads' output to its input width
``D``; :func:`grid_attention` reshapes it to ``n_heads * head_dim`` instead.
:func:`mark_window_pruned` gives each pruned module a :class:`PrunedAttentionForward` (an
instance attribute, so the module keeps its class, methods and state_dict keys).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GRID_ATTENTION", "WINDOW_ATTENTION", "PrunedAttentionForward", "grid_attention",
           "is_grid_attention", "is_window_attention", "mark_window_pruned", "swin_forward",
           "window_attention"]

#: class names of the window-attention modules handled by name (torchvision's Swin V1 and V2).
WINDOW_ATTENTION = ("ShiftedWindowAttention", "ShiftedWindowAttentionV2")
#: torchvision's MaxViT attention over window or grid partitions ``[B, G, P, D]``.
GRID_ATTENTION = ("RelativePositionalMultiHeadAttention",)


def is_window_attention(m: nn.Module) -> bool:
    """``m`` is shaped like torchvision's ShiftedWindowAttention(V2): class name, ``qkv`` and
    ``proj`` Linears, ``window_size`` / ``shift_size`` pairs, an int ``num_heads``."""
    return (type(m).__name__ in WINDOW_ATTENTION
            and isinstance(getattr(m, "qkv", None), nn.Linear)
            and isinstance(getattr(m, "proj", None), nn.Linear)
            and isinstance(getattr(m, "num_heads", None), int)
            and len(getattr(m, "window_size", ())) == 2 and len(getattr(m, "shift_size", ())) == 2
            and callable(getattr(m, "get_relative_position_bias", None)))


def _mask(pad_h: int, pad_w: int, window: list[int], shift: list[int], like: Tensor) -> Tensor:
    """``[windows, N, N]`` additive mask: -100 between tokens that the cyclic shift brought
    from different image regions into one window, 0 elsewhere."""
    region = like.new_zeros((pad_h, pad_w))
    # bands along a dim: before the last window, the last window before the shift, the
    # shifted-in tail; one band where that dim is not shifted (as torchvision's slices give)
    h_cuts = (0, pad_h - window[0], pad_h - shift[0], pad_h) if shift[0] else (0, 0, 0, pad_h)
    w_cuts = (0, pad_w - window[1], pad_w - shift[1], pad_w) if shift[1] else (0, 0, 0, pad_w)
    label = 0
    for i in range(3):
        for j in range(3):
            region[h_cuts[i]:h_cuts[i + 1], w_cuts[j]:w_cuts[j + 1]] = label
            label += 1
    n = window[0] * window[1]
    region = region.view(pad_h // window[0], window[0], pad_w // window[1], window[1])
    region = region.permute(0, 2, 1, 3).reshape(-1, n)
    diff = region.unsqueeze(1) - region.unsqueeze(2)
    return torch.where(diff != 0, -100.0, 0.0).to(like.dtype)


def window_attention(x: Tensor, qkv_weight: Tensor, proj_weight: Tensor, bias: Tensor,
                     window_size: list[int], num_heads: int, shift_size: list[int], *,
                     attention_dropout: float = 0.0, dropout: float = 0.0,
                     qkv_bias: Tensor | None = None, proj_bias: Tensor | None = None,
                     logit_scale: Tensor | None = None, training: bool = False) -> Tensor:
    """(Shifted) window self-attention with a relative position bias.

    Args:
        x: ``[B, H, W, C]``.
        qkv_weight / qkv_bias: ``[3 * num_heads * head_dim, C]`` / ``[3 * num_heads * head_dim]``
            (q, k, v stacked, heads in order inside each).
        proj_weight / proj_bias: ``[C_out, num_heads * head_dim]`` / ``[C_out]``.
        bias: ``[1, num_heads, N, N]`` relative position bias, ``N = window_size[0] *
            window_size[1]``.
        logit_scale: ``[num_heads, 1, 1]`` for Swin V2's cosine attention (scaled dot product
            when None).

    Returns:
        ``[B, H, W, C_out]``.
    """
    b, h, w, c = x.shape
    pad_r = (window_size[1] - w % window_size[1]) % window_size[1]
    pad_b = (window_size[0] - h % window_size[0]) % window_size[0]
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    _, ph, pw, _ = x.shape
    shift = [0 if window_size[0] >= ph else shift_size[0],
             0 if window_size[1] >= pw else shift_size[1]]
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    gh, gw = ph // window_size[0], pw // window_size[1]
    n = window_size[0] * window_size[1]
    x = x.view(b, gh, window_size[0], gw, window_size[1], c).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b * gh * gw, n, c)
    inner = qkv_weight.shape[0] // 3
    head_dim = inner // num_heads
    if logit_scale is not None and qkv_bias is not None:  # V2: no key bias
        qkv_bias = torch.cat([qkv_bias[:inner], torch.zeros_like(qkv_bias[inner:2 * inner]),
                              qkv_bias[2 * inner:]])
    qkv = F.linear(x, qkv_weight, qkv_bias)
    q, k, v = qkv.reshape(x.shape[0], n, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        attn = (q * head_dim ** -0.5) @ k.transpose(-2, -1)
    attn = attn + bias
    if sum(shift) > 0:
        mask = _mask(ph, pw, window_size, shift, x)
        attn = attn.view(b, gh * gw, num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, num_heads, n, n)
    attn = F.dropout(F.softmax(attn, dim=-1), p=attention_dropout, training=training)
    x = (attn @ v).transpose(1, 2).reshape(x.shape[0], n, inner)
    x = F.dropout(F.linear(x, proj_weight, proj_bias), p=dropout, training=training)
    c_out = x.shape[-1]
    x = x.view(b, gh, gw, window_size[0], window_size[1], c_out).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, ph, pw, c_out)
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :h, :w, :].contiguous()


def swin_forward(m: nn.Module, x: Tensor) -> Tensor:
    """:func:`window_attention` with the parameters and settings of Swin module ``m``."""
    return window_attention(
        x, m.qkv.weight, m.proj.weight, m.get_relative_position_bias(), m.window_size,
        m.num_heads, m.shift_size, attention_dropout=m.attention_dropout, dropout=m.dropout,
        qkv_bias=m.qkv.bias, proj_bias=m.proj.bias, logit_scale=getattr(m, "logit_scale", None),
        training=m.training)


def is_grid_attention(m: nn.Module) -> bool:
    """``m`` is shaped like torchvision's MaxViT ``RelativePositionalMultiHeadAttention``."""
    return (type(m).__name__ in GRID_ATTENTION
            and isinstance(getattr(m, "to_qkv", None), nn.Linear)
            and isinstance(getattr(m, "merge", None), nn.Linear)
            and isinstance(getattr(m, "n_heads", None), int)
            and isinstance(getattr(m, "head_dim", None), int)
            and isinstance(getattr(m, "scale_factor", None), float)
            and callable(getattr(m, "get_relative_positional_bias", None)))


def grid_attention(m: nn.Module, x: Tensor) -> Tensor:
    """MaxViT's relative-position attention of module ``m`` on ``x`` ``[B, G, P, D]`` (G
    partitions of P tokens) with ``m.n_heads`` heads of ``m.head_dim``; ``[B, G, P, D_out]``.
    The key scale stays ``m.scale_factor`` (torchvision's ``feat_dim ** -0.5``)."""
    b, g, p, _ = x.shape
    h, dh = m.n_heads, m.head_dim
    q, k, v = (t.reshape(b, g, p, h, dh).permute(0, 1, 3, 2, 4)
               for t in torch.chunk(m.to_qkv(x), 3, dim=-1))
    scores = q @ (k * m.scale_factor).transpose(-2, -1) + m.get_relative_positional_bias()
    out = F.softmax(scores, dim=-1) @ v
    return m.merge(out.permute(0, 1, 3, 2, 4).reshape(b, g, p, h * dh))


class PrunedAttentionForward:
    """The forward of a pruned attention module (set as its ``forward`` attribute): ``fn(module,
    x)`` with a module-level ``fn``. Picklable and deep-copyable with its module."""

    def __init__(self, module: nn.Module, fn) -> None:
        self.module = module
        self.fn = fn

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(self.module, x)


def _pruned_forward(m: nn.Module):
    """The forward ``m`` needs once pruned, or None while torchvision's own still fits (its
    inner and output widths equal its input width)."""
    if is_window_attention(m):
        a, b = m.qkv, m.proj
        fn = swin_forward
    elif is_grid_attention(m):
        a, b = m.to_qkv, m.merge
        fn = grid_attention
    else:
        return None
    c = a.in_features
    return fn if (a.out_features != 3 * c or b.out_features != c or b.in_features != c) else None


def mark_window_pruned(model: nn.Module) -> None:
    """Give each pruned Swin / MaxViT attention module of ``model`` a
    :class:`PrunedAttentionForward` (after the surgery, and in ``load_pruned`` once the widths
    are set)."""
    for m in model.modules():
        fn = _pruned_forward(m)
        if fn is not None and not isinstance(m.__dict__.get("forward"), PrunedAttentionForward):
            m.forward = PrunedAttentionForward(m, fn)
