"""The latency table times ``nn.MultiheadAttention`` by head count and embedding width (not
by its MACs).

A deterministic clock stands in for the wall clock: attention costs a fixed part plus a part per
head, whatever its MACs, the way softmax and small per-head matmuls behave on a CPU.
"""

import numpy as np
import pytest
import torch
from torch import nn

from sparseprune.structured.budget import CostModel
from sparseprune.structured.graph import trace
from sparseprune.structured.latency import LatencyModel, _bilinear, _SelfAttention
from sparseprune.structured.mha import HeadPrunedMultiheadAttention, keep_heads, keep_width

from .models import ViT
from .test_latency import MacClock


class HeadClock(MacClock):
    """Attention: 2 ms + 1 ms per head at the full embedding width of 64, the per-head part
    scaling with the width; everything else: its MACs (as MacClock)."""

    def layer(self, module, inputs) -> float:
        attn = module.attn if isinstance(module, _SelfAttention) else module
        if isinstance(attn, nn.MultiheadAttention):  # alone, or inside the model (split)
            return 2e-3 + 1e-3 * attn.num_heads * attn.embed_dim / 64
        return super().layer(module, inputs)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEPRUNE_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_attention_is_timed_by_head_count(cache):
    torch.manual_seed(0)
    model = ViT(dim=64, depth=2, heads=4, mlp=128, split="mha").eval()
    graph = trace(model, torch.randn(1, 3, 32, 32))
    assert set(graph.attention_calls) == {"blocks.0.attn.mha", "blocks.1.attn.mha"}
    assert graph.attention_calls["blocks.0.attn.mha"] == ((1, 17, 64), False)
    costs = CostModel(graph)
    table = LatencyModel(graph, costs, HeadClock())
    # rows: 1, 2 and 4 of the 4 heads; columns: 16, 32 and 64 of the 64 embedding channels
    # (the grid's 1/4, 1/2, 1)
    want = [[2e-3 + 1e-3 * h * w for w in (0.25, 0.5, 1.0)] for h in (1, 2, 4)]
    for item in table.head_items:
        np.testing.assert_allclose(item[0], want)
    keep = costs.full()
    full = table.latency(keep)
    heads0 = np.unique(table.head_items[0][1])
    assert heads0.size == 4  # one unit per head: heads leave whole
    keep[heads0[:2]] = False
    assert table.latency(keep) == pytest.approx(full - 2e-3)
    keep[heads0[2]] = False  # 1 of 4 heads left: the grid's first point
    assert table.latency(keep) == pytest.approx(full - 3e-3)
    # the embedding width (the residual stream): read off the table's second axis
    embed = table.head_items[0][2]
    assert table.head_items[0][3:] == ((0.25, 0.5, 1.0), (0.25, 0.5, 1.0))
    assert embed
    keep = costs.full()
    width = np.unique(np.concatenate(embed))
    assert width.size == 64
    keep[width[:32]] = False  # half the width: both attention modules' per-head part halves
    attn_full = sum(_bilinear(it[0], 1.0, 1.0) for it in table.head_items)
    attn_half = sum(_bilinear(it[0], 1.0, 0.5) for it in table.head_items)
    assert attn_half == pytest.approx(attn_full - 2 * 2e-3)
    assert table.latency(keep) < full - (attn_full - attn_half) * 0.999


def test_keep_width_matches_zeroing_the_other_channels():
    torch.manual_seed(0)
    m = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    small = keep_width(keep_heads(m, 3), 20)
    assert type(small) is HeadPrunedMultiheadAttention
    assert (small.embed_dim, small.num_heads, small.head_dim) == (20, 3, 8)
    assert small.in_proj_weight.shape == (72, 20) and small.out_proj.weight.shape == (20, 24)
    x = torch.randn(2, 5, 32)
    x[..., 20:] = 0  # the removed channels, zero in the masked model
    ref = keep_heads(m, 3)
    with torch.no_grad():
        want = ref(x, x, x, need_weights=False)[0][..., :20]
        got = small(x[..., :20], x[..., :20], x[..., :20], need_weights=False)[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert keep_width(m, 32).embed_dim == 32 and m.embed_dim == 32  # untouched
    for bad in (0, 33):
        with pytest.raises(ValueError, match="width must be in"):
            keep_width(m, bad)
    with pytest.raises(ValueError, match="separate query"):
        keep_width(nn.MultiheadAttention(32, 4, kdim=16, vdim=16), 8)


def test_keep_heads_matches_zeroing_the_other_heads():
    torch.manual_seed(0)
    m = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    small = keep_heads(m, 3)
    assert type(small) is HeadPrunedMultiheadAttention and small.num_heads == 3
    assert small.in_proj_weight.shape == (3 * 24, 32) and small.out_proj.weight.shape == (32, 24)
    assert m.num_heads == 4 and m.in_proj_weight.shape == (96, 32)  # the original is untouched
    ref = keep_heads(m, 4)
    assert type(ref) is nn.MultiheadAttention
    with torch.no_grad():
        ref.out_proj.weight[:, 24:] = 0  # the 4th head's contribution
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(small(x, x, x, need_weights=False)[0],
                                   ref(x, x, x, need_weights=False)[0], atol=1e-5, rtol=1e-5)
    for bad in (0, 5):
        with pytest.raises(ValueError, match="heads must be in"):
            keep_heads(m, bad)


def test_few_heads_interpolate_at_the_fractions_timed(cache):
    """3 heads: the grid's 1/4, 1/2 and 1 time 1, 2 and 3 heads (1/3, 2/3, 1); dropping one
    head must cost exactly the 1-head step, not an interpolation between mislabelled rows."""
    torch.manual_seed(0)
    model = ViT(dim=48, depth=1, heads=3, mlp=96, split="mha").eval()
    graph = trace(model, torch.randn(1, 3, 32, 32))
    costs = CostModel(graph)
    table = LatencyModel(graph, costs, HeadClock())
    (item,) = table.head_items
    assert item[3] == (1 / 3, 2 / 3, 1.0) and item[4] == (12 / 48, 24 / 48, 1.0)
    keep = costs.full()
    full = table.latency(keep)
    heads = np.unique(item[1])
    assert heads.size == 3  # one unit per head
    keep[heads[:1]] = False  # 2 of 3 heads: the middle row exactly
    assert table.latency(keep) == pytest.approx(full - 1e-3 * 48 / 64)

