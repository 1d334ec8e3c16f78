"""Window-attention pieces of torchvision's Swin and MaxViT, written by hand (no torchvision).

- A relative position bias gathered from a table by an integer index buffer (``table[index]``,
  as MaxViT and Swin read it): the table's head dim follows the pruned heads.
- An fx-wrapped attention function handed a Linear's weights (Swin's
  ``shifted_window_attention(x, self.qkv.weight, self.proj.weight, ...)``): there is no rule for
  it, so the weights are kept whole, and the plan must say so (it used to keep them silently).
"""

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from sparseprune.structured import plan

from .macs import assert_macs_agree
from .zoo_models import randomize


class RelBiasAttention(nn.Module):
    """q/k/v attention over ``tokens`` tokens with a learned relative position bias per head."""

    def __init__(self, dim: int, num_heads: int, tokens: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        rel = 2 * tokens - 1
        self.relative_position_bias_table = nn.Parameter(torch.randn(rel, num_heads))
        pos = torch.arange(tokens)
        self.register_buffer("relative_position_index",
                             (pos[:, None] - pos[None, :] + tokens - 1).flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
        bias = self.relative_position_bias_table[self.relative_position_index]
        attn = attn + bias.view(N, N, -1).permute(2, 0, 1).contiguous().unsqueeze(0)
        x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(B, N, -1)
        return self.proj(x)


def window_attention(x, qkv_weight, proj_weight, num_heads: int, qkv_bias=None, proj_bias=None):
    """Like torchvision's ``shifted_window_attention`` (one window, no shift): the head dim is
    read from the input width, so the weights cannot shrink without the input."""
    B, N, C = x.shape
    qkv = F.linear(x, qkv_weight, qkv_bias).reshape(B, N, 3, num_heads, C // num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    attn = (q * (C // num_heads) ** -0.5) @ k.transpose(-2, -1)
    x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C)
    return F.linear(x, proj_weight, proj_bias)


torch.fx.wrap("window_attention")  # as torchvision does: fx records one opaque call


class WrappedAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return window_attention(x, self.qkv.weight, self.proj.weight, self.num_heads,
                                qkv_bias=self.qkv.bias, proj_bias=self.proj.bias)


class Net(nn.Module):
    def __init__(self, attn: nn.Module, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.attn = attn
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attn(self.embed(x)))


def _plan(attn: nn.Module):
    torch.manual_seed(0)
    model = randomize(Net(attn)).eval()
    x = torch.randn(2, 6, 8)
    p = plan(model, x, amount=0.5, round_to=1, min_channels=1)
    small = p.apply()
    with torch.no_grad():
        torch.testing.assert_close(small(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)
    assert_macs_agree(p, model, small, x)
    return p, small


def test_relative_position_bias_table_follows_the_pruned_heads():
    p, small = _plan(RelBiasAttention(32, num_heads=4, tokens=6))
    attn = small.attn
    assert attn.num_heads == 2 and attn.qkv.out_features == 3 * 2 * 8
    assert tuple(attn.relative_position_bias_table.shape) == (11, 2)  # rows stay: 2 * 6 - 1
    assert not any("tensor index" in u.why or "cannot shrink" in u.why for u in p.unprunable)


def test_integer_tensor_index_into_a_channel_dim_is_refused():
    class Gather(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("perm", torch.arange(31, -1, -1))
            self.a = nn.Linear(8, 32)
            self.b = nn.Linear(32, 10)

        def forward(self, x):
            return self.b(self.a(x).t()[self.perm].t())  # channels reordered: they must stay

    model, x = Gather().eval(), torch.randn(4, 8)
    p = plan(model, x, amount=0.5, round_to=1, min_channels=1)
    assert any(u.module is None and "integer tensor index into a channel dim" in u.why
               for u in p.unprunable)
    assert p.apply().a.out_features == 32


def test_layer_weights_given_to_an_op_without_a_rule_are_named():
    p, small = _plan(WrappedAttention(32, num_heads=4))
    named = [u for u in p.unprunable if u.module == "attn" and "weights kept whole" in u.why]
    assert len(named) == 1, p.unprunable
    assert "no dependency rule for call_function 'window_attention'" in named[0].why
    assert "attn.qkv.weight" in named[0].why and "attn.proj.weight" in named[0].why
    assert named[0].channels == 3 * 32 + 32
    # the rest of the model is still pruned
    assert small.mlp[0].out_features == 32 and small.attn.qkv.out_features == 96
