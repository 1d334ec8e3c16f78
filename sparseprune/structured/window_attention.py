"""Shifted-window attention (torchvision's Swin V1/V2 ``ShiftedWindowAttention[V2]``) after
pruning heads or the embedding width.

torchvision computes it in ``shifted_window_attention(x, qkv.weight, proj.weight, ...)``, which
takes the head width from the input (``C // num_heads``) and reshapes the heads' output back to
``C``: once heads are removed (inner width ``num_heads * head_dim`` below the input width) or the
input width shrinks, that no longer holds. :func:`window_attention` is the same computation with
the head width read from ``qkv.weight`` (``rows / 3 / num_heads``), the inner and output widths
apart from the input's; :func:`mark_window_pruned` gives each pruned module a forward calling it
(an instance attribute, so the module keeps its class, methods and state_dict keys).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["WINDOW_ATTENTION", "WindowAttentionForward", "is_window_attention",
           "mark_window_pruned", "window_attention"]

#: class names of the window-attention modules handled by name (torchvision's Swin V1 and V2).
WINDOW_ATTENTION = ("ShiftedWindowAttention", "ShiftedWindowAttentionV2")


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


class WindowAttentionForward:
    """The forward of a pruned window-attention module (set as its ``forward`` attribute):
    :func:`window_attention` with the module's parameters and settings. Picklable and
    deep-copyable with the module it refers to."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, x: Tensor) -> Tensor:
        m = self.module
        return window_attention(
            x, m.qkv.weight, m.proj.weight, m.get_relative_position_bias(), m.window_size,
            m.num_heads, m.shift_size, attention_dropout=m.attention_dropout,
            dropout=m.dropout, qkv_bias=m.qkv.bias, proj_bias=m.proj.bias,
            logit_scale=getattr(m, "logit_scale", None), training=m.training)


def _pruned(m: nn.Module) -> bool:
    """The inner width (q's rows) or the output width differs from the input width, which
    torchvision's function assumes."""
    c = m.qkv.in_features
    return m.qkv.out_features != 3 * c or m.proj.out_features != c or m.proj.in_features != c


def mark_window_pruned(model: nn.Module) -> None:
    """Give each pruned window-attention module of ``model`` a :class:`WindowAttentionForward`
    (after the surgery, and in ``load_pruned`` once the widths are set)."""
    for m in model.modules():
        if is_window_attention(m) and _pruned(m) and \
                not isinstance(m.__dict__.get("forward"), WindowAttentionForward):
            m.forward = WindowAttentionForward(m)
