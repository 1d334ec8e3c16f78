"""Head pruning of nn.MultiheadAttention: exact against the masked model, saves and loads."""

import copy

import pytest
import torch
from torch import nn

from sparseprune.structured import load_pruned, plan, save_pruned
from sparseprune.structured.mha import HeadPrunedMultiheadAttention


class Block(nn.Module):
    def __init__(self, dim=32, heads=4, batch_first=True, kdim=None, weights=False):
        super().__init__()
        self.batch_first = batch_first
        self.inp = nn.Linear(8, dim)
        self.ctx = nn.Linear(8, kdim or dim)
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=batch_first, kdim=kdim,
                                         vdim=kdim)
        self.out = nn.Linear(dim, 3)
        self.weights = weights

    def forward(self, x, pad: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        h = self.inp(x)
        c = self.ctx(x) if self.mha.kdim != self.mha.embed_dim else h
        y, w = self.mha(h, c, c, key_padding_mask=pad, attn_mask=mask,
                        need_weights=self.weights)
        out = self.out(y + h)
        if self.weights:
            assert w is not None
            out = out + w.sum()
        return out


def _check(model, inputs, heads_left):
    p = plan(model, inputs, amount=0.5, round_to=1, min_channels=1)
    small = p.apply()
    mha = small.mha
    assert isinstance(mha, HeadPrunedMultiheadAttention)
    assert mha.num_heads == heads_left and mha.embed_dim == model.mha.embed_dim
    inner = heads_left * mha.head_dim
    assert mha.out_proj.weight.shape == (model.mha.embed_dim, inner)
    with torch.no_grad():
        torch.testing.assert_close(small(*inputs), p.masked_model()(*inputs),
                                   atol=1e-5, rtol=1e-5)
    assert p.after["macs"] < p.before["macs"]
    return p, small


@pytest.mark.parametrize("batch_first", [True, False])
def test_mha_heads_pruned_exact(batch_first):
    torch.manual_seed(0)
    model = Block(batch_first=batch_first).eval()
    x = torch.randn(2, 5, 8) if batch_first else torch.randn(5, 2, 8)
    _check(model, (x,), 2)


def test_mha_with_masks_exact():
    torch.manual_seed(0)
    model = Block().eval()
    x = torch.randn(2, 5, 8)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    p, small = _check(model, (x, pad, causal), 2)
    # other masks than the traced ones work too
    float_mask = torch.randn(5, 5)
    with torch.no_grad():
        torch.testing.assert_close(small(x, None, float_mask),
                                   p.masked_model()(x, None, float_mask), atol=1e-5, rtol=1e-5)


def test_mha_separate_kv_dims_exact():
    torch.manual_seed(0)
    model = Block(kdim=12).eval()
    assert not model.mha._qkv_same_embed_dim
    _check(model, (torch.randn(2, 5, 8),), 2)


def test_mha_used_attention_weights_keep_heads():
    torch.manual_seed(0)
    model = Block(weights=True).eval()
    x = torch.randn(2, 5, 8)
    p = plan(model, x, amount=0.5, round_to=1, min_channels=1)
    assert any(u.module == "mha" and "weights" in u.why for u in p.unprunable)
    small = p.apply()
    assert type(small.mha) is nn.MultiheadAttention and small.mha.num_heads == 4


def test_head_pruned_forward_matches_torch_when_nothing_pruned():
    torch.manual_seed(0)
    for batch_first in (True, False):
        ref = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
        mine = copy.deepcopy(ref)
        mine.__class__ = HeadPrunedMultiheadAttention
        q = torch.randn(2, 5, 16)
        k = torch.randn(2, 7, 16)
        if not batch_first:
            q, k = q.transpose(0, 1), k.transpose(0, 1)
        pad = torch.zeros(2, 7)
        pad[1, -2:] = float("-inf")
        mask = torch.randn(5, 7)
        with torch.no_grad():
            for avg in (True, False):
                a = ref(q, k, k, key_padding_mask=pad, attn_mask=mask, average_attn_weights=avg)
                b = mine(q, k, k, key_padding_mask=pad, attn_mask=mask, average_attn_weights=avg)
                for u, v in zip(a, b, strict=True):
                    torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-5)
            # unbatched input
            q1, k1 = (q[0], k[0]) if batch_first else (q[:, 0], k[:, 0])
            a = ref(q1, k1, k1)
            b = mine(q1, k1, k1)
            for u, v in zip(a, b, strict=True):
                torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-5)


def test_mha_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = Block().eval()
    x = torch.randn(2, 5, 8)
    _p, small = _check(model, (x,), 2)
    save_pruned(small, tmp_path / "m.pt")
    loaded = load_pruned(Block, tmp_path / "m.pt").eval()
    assert isinstance(loaded.mha, HeadPrunedMultiheadAttention) and loaded.mha.num_heads == 2
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x))


def test_mha_pruned_twice():
    torch.manual_seed(0)
    model = Block(dim=64, heads=8).eval()
    x = torch.randn(2, 5, 8)
    _p, small = _check(model, (x,), 4)
    p2 = plan(small, x, amount=0.5, round_to=1, min_channels=1)
    smaller = p2.apply()
    assert smaller.mha.num_heads == 2
    with torch.no_grad():
        torch.testing.assert_close(smaller(x), p2.masked_model()(x), atol=1e-5, rtol=1e-5)


def test_mha_pruned_scripts_and_exports():
    torch.manual_seed(0)
    model = Block().eval()
    x = torch.randn(2, 5, 8)
    _p, small = _check(model, (x,), 2)
    with torch.no_grad():
        ref = small(x)
        torch.testing.assert_close(torch.jit.script(small)(x), ref)
        torch.testing.assert_close(torch.export.export(small, (x,)).module()(x), ref)


def test_missing_projection_weights_raise_a_clear_error():
    from sparseprune.structured.mha import _qkv_weights

    with pytest.raises(ValueError, match="in_proj_weight is None"):
        _qkv_weights(True, None, None, None, None)
    w = torch.zeros(4, 4)
    with pytest.raises(ValueError, match="k_proj_weight is None"):
        _qkv_weights(False, None, w, None, None)
