"""A small Swin V1/V2 written by hand (no torchvision): the class and function names, the
attributes and the call pattern torchvision's swin_transformer uses, the attention computed
window by window and head by head (slow and plain: a reference, not a copy of the batched
implementation the pruned model runs)."""

from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn


def _patch_merging_pad(x: torch.Tensor) -> torch.Tensor:
    """[..., H, W, C] -> [..., ceil(H/2), ceil(W/2), 4C]: the 2x2 phases side by side."""
    h, w = x.shape[-3], x.shape[-2]
    x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
    phases = [x[..., i::2, j::2, :] for j in (0, 1) for i in (0, 1)]
    return torch.cat(phases, -1)


torch.fx.wrap("_patch_merging_pad")


def _region(i: int, size: int, window: int, shift: int) -> int:
    """Which of the three bands (before the last window, in it before the shift, the
    shifted-in tail) padded row/column ``i`` belongs to; one band when not shifted."""
    if shift == 0:
        return 0
    return 0 if i < size - window else (1 if i < size - shift else 2)


def reference_window_attention(x, m) -> torch.Tensor:
    """Window attention of module ``m`` on ``x`` [B, H, W, C], one window and head at a time."""
    b, h, w, c = x.shape
    wh, ww = m.window_size
    x = F.pad(x, (0, 0, 0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh))
    ph, pw = x.shape[1], x.shape[2]
    sh = 0 if wh >= ph else m.shift_size[0]
    sw = 0 if ww >= pw else m.shift_size[1]
    x = torch.roll(x, (-sh, -sw), (1, 2))
    heads = m.num_heads
    inner = m.qkv.weight.shape[0] // 3
    d = inner // heads
    bias = m.get_relative_position_bias()[0]  # [heads, N, N]
    qkv_bias = m.qkv.bias
    if hasattr(m, "logit_scale") and qkv_bias is not None:
        qkv_bias = qkv_bias * torch.cat([torch.ones(inner), torch.zeros(inner), torch.ones(inner)])
    out = x.new_zeros(b, ph, pw, m.proj.weight.shape[0])
    for top in range(0, ph, wh):
        for left in range(0, pw, ww):
            tokens = x[:, top:top + wh, left:left + ww, :].reshape(b, wh * ww, c)
            region = torch.tensor([_region(top + i, ph, wh, sh) * 3 + _region(left + j, pw, ww, sw)
                                   for i in range(wh) for j in range(ww)])
            mask = torch.where(region[:, None] == region[None, :], 0.0, -100.0)
            if sh == 0 and sw == 0:
                mask = torch.zeros_like(mask)
            qkv = F.linear(tokens, m.qkv.weight, qkv_bias)
            per_head = []
            for i in range(heads):
                q, k, v = (qkv[..., j * inner + i * d: j * inner + (i + 1) * d] for j in range(3))
                if hasattr(m, "logit_scale"):
                    scale = torch.clamp(m.logit_scale[i, 0, 0], max=math.log(100.0)).exp()
                    s = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * scale
                else:
                    s = (q / math.sqrt(d)) @ k.transpose(-2, -1)
                per_head.append(torch.softmax(s + bias[i] + mask, dim=-1) @ v)
            y = F.linear(torch.cat(per_head, -1), m.proj.weight, m.proj.bias)
            out[:, top:top + wh, left:left + ww, :] = y.reshape(b, wh, ww, -1)
    out = torch.roll(out, (sh, sw), (1, 2))
    return out[:, :h, :w, :]


class ShiftedWindowAttention(nn.Module):
    def __init__(self, dim: int, window_size: list[int], shift_size: list[int],
                 num_heads: int) -> None:
        super().__init__()
        self.window_size, self.shift_size, self.num_heads = window_size, shift_size, num_heads
        self.attention_dropout = self.dropout = 0.0
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.define_relative_position_bias_table()
        wh, ww = window_size
        ys, xs = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        index = (ys[:, None] - ys[None, :] + wh - 1) * (2 * ww - 1) + (xs[:, None] - xs[None, :]
                                                                     + ww - 1)
        self.register_buffer("relative_position_index", index.flatten())

    def define_relative_position_bias_table(self) -> None:
        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.randn((2 * wh - 1) * (2 * ww - 1), self.num_heads) * 0.5)

    def _bias(self, table: torch.Tensor) -> torch.Tensor:
        n = self.window_size[0] * self.window_size[1]
        return table[self.relative_position_index].view(n, n, -1).permute(2, 0, 1).unsqueeze(0)

    def get_relative_position_bias(self) -> torch.Tensor:
        return self._bias(self.relative_position_bias_table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reference_window_attention(x, self)


class ShiftedWindowAttentionV2(ShiftedWindowAttention):
    def __init__(self, dim: int, window_size: list[int], shift_size: list[int],
                 num_heads: int) -> None:
        super().__init__(dim, window_size, shift_size, num_heads)
        self.logit_scale = nn.Parameter(torch.log(10 * torch.rand(num_heads, 1, 1) + 1))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 32), nn.ReLU(inplace=True),
                                     nn.Linear(32, num_heads, bias=False))

    def define_relative_position_bias_table(self) -> None:
        wh, ww = self.window_size
        dy = torch.arange(-(wh - 1), wh, dtype=torch.float32) / max(wh - 1, 1)
        dx = torch.arange(-(ww - 1), ww, dtype=torch.float32) / max(ww - 1, 1)
        table = torch.stack(torch.meshgrid(dy, dx, indexing="ij"), -1).unsqueeze(0) * 8
        self.register_buffer("relative_coords_table",
                             torch.sign(table) * torch.log2(table.abs() + 1.0) / 3.0)

    def get_relative_position_bias(self) -> torch.Tensor:
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        return 16 * torch.sigmoid(self._bias(table))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, shift: int, attn: type) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn(dim, [4, 4], [shift, shift], heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(self.norm(_patch_merging_pad(x)))


class Swin(nn.Module):
    """Patch embedding, two shifted-window blocks, patch merging (odd sizes: padded), one more
    block, norm, pool, classifier. ``v2``: cosine attention with the position-bias MLP."""

    def __init__(self, dim: int = 16, heads: int = 4, classes: int = 10, v2: bool = False) -> None:
        super().__init__()
        attn = ShiftedWindowAttentionV2 if v2 else ShiftedWindowAttention
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.patch_norm = nn.LayerNorm(dim)
        self.stage1 = nn.Sequential(SwinBlock(dim, heads, 0, attn), SwinBlock(dim, heads, 2, attn))
        self.merge = PatchMerging(dim)
        self.stage2 = SwinBlock(2 * dim, 2 * heads, 0, attn)
        self.norm = nn.LayerNorm(2 * dim)
        self.head = nn.Linear(2 * dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_norm(self.patch(x).permute(0, 2, 3, 1))
        x = self.stage2(self.merge(self.stage1(x)))
        return self.head(self.norm(x).mean((1, 2)))
