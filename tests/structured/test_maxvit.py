"""MaxViT's partition attention (hand-written stand-in for torchvision's, no torchvision):
window and grid partitions (reshape / permute, ``torch.swapaxes``), and
``RelativePositionalMultiHeadAttention`` losing whole heads and its input width, exactly."""

import math
import pickle

import pytest
import torch
from torch import nn

from sparseprune.structured import load_pruned, plan, save_pruned
from sparseprune.structured.window_attention import PrunedAttentionForward

from .macs import assert_macs_agree
from .zoo_models import randomize


class RelativePositionalMultiHeadAttention(nn.Module):
    """torchvision's attributes and call; the forward in einsum form as torchvision writes it."""

    def __init__(self, feat_dim: int, head_dim: int, max_seq_len: int) -> None:
        super().__init__()
        self.n_heads = feat_dim // head_dim
        self.head_dim = head_dim
        self.size = int(math.sqrt(max_seq_len))
        self.max_seq_len = max_seq_len
        self.to_qkv = nn.Linear(feat_dim, self.n_heads * head_dim * 3)
        self.scale_factor = feat_dim ** -0.5
        self.merge = nn.Linear(head_dim * self.n_heads, feat_dim)
        rel = (2 * self.size - 1) ** 2
        self.relative_position_bias_table = nn.Parameter(torch.randn(rel, self.n_heads))
        ys, xs = torch.meshgrid(torch.arange(self.size), torch.arange(self.size), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        index = (ys[:, None] - ys[None, :] + self.size - 1) * (2 * self.size - 1) + (
            xs[:, None] - xs[None, :] + self.size - 1)
        self.register_buffer("relative_position_index", index)

    def get_relative_positional_bias(self) -> torch.Tensor:
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(self.max_seq_len, self.max_seq_len, -1)
        return bias.permute(2, 0, 1).contiguous().unsqueeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, G, P, D = x.shape
        H, DH = self.n_heads, self.head_dim
        q, k, v = torch.chunk(self.to_qkv(x), 3, dim=-1)
        q, k, v = (t.reshape(B, G, P, H, DH).permute(0, 1, 3, 2, 4) for t in (q, k, v))
        k = k * self.scale_factor
        dot = torch.einsum("B G H I D, B G H J D -> B G H I J", q, k)
        dot = torch.softmax(dot + self.get_relative_positional_bias(), dim=-1)
        out = torch.einsum("B G H I J, B G H J D -> B G H I D", dot, v)
        return self.merge(out.permute(0, 1, 3, 2, 4).reshape(B, G, P, D))


class PartitionAttention(nn.Module):
    """[B, C, H, W] -> windows (or the grid: partitions swapped) of p x p -> attention ->
    back; residual adds with a LayerNorm before the attention and an MLP after it."""

    def __init__(self, dim: int, p: int, grid: bool) -> None:
        super().__init__()
        self.p, self.grid = p, grid
        self.norm = nn.LayerNorm(dim)
        self.attn = RelativePositionalMultiHeadAttention(dim, 4, p * p)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(),
                                 nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        p = self.p
        x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
        x = x.reshape(B, (H // p) * (W // p), p * p, C)
        if self.grid:
            x = torch.swapaxes(x, -2, -3)
        x = x + self.attn(self.norm(x))
        x = x + self.mlp(x)
        if self.grid:
            x = torch.swapaxes(x, -2, -3)
        x = x.reshape(B, H // p, W // p, p, p, C).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(B, C, H, W)


class MiniMaxViT(nn.Module):
    def __init__(self, dim: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, 2, 1)
        self.window = PartitionAttention(dim, 2, grid=False)
        self.grid = PartitionAttention(dim, 2, grid=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.grid(self.window(self.stem(x)))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("keep_stream", [False, True])
def test_maxvit_attention_loses_heads_exactly(keep_stream, tmp_path):
    torch.manual_seed(0)
    model, x = randomize(MiniMaxViT()).eval(), torch.randn(2, 3, 8, 8)
    p = plan(model, x, amount=0.5, ignore=("stem",) if keep_stream else ())
    assert [u.why for u in p.unprunable] == ["model output (protect_output=True)"], str(p)
    small = p.apply()
    attn = small.window.attn
    assert attn.n_heads == 2 and attn.to_qkv.out_features == 3 * 2 * 4
    assert attn.relative_position_bias_table.shape[1] == 2
    assert attn.to_qkv.in_features == small.stem.out_channels == (16 if keep_stream else 8)
    assert isinstance(attn.forward, PrunedAttentionForward) == keep_stream
    with torch.no_grad():
        out = small(x)
        torch.testing.assert_close(out, p.masked_model()(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pickle.loads(pickle.dumps(small))(x), out, atol=0, rtol=0)
    assert assert_macs_agree(p, model, small, x) > (1.4 if keep_stream else 3.0)
    save_pruned(small, tmp_path / "m.pt")
    loaded = load_pruned(MiniMaxViT, tmp_path / "m.pt").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out, atol=0, rtol=0)
