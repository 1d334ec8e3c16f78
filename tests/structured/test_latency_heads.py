"""The latency table times ``nn.MultiheadAttention`` by head count (not by its MACs).

A deterministic clock stands in for the wall clock: attention costs a fixed part plus a part per
head, whatever its MACs, the way softmax and small per-head matmuls behave on a CPU.
"""

import numpy as np
import pytest
import torch
from torch import nn

from sparseprune.structured.budget import CostModel
from sparseprune.structured.graph import trace
from sparseprune.structured.latency import LatencyModel, _SelfAttention
from sparseprune.structured.mha import HeadPrunedMultiheadAttention, keep_heads

from .models import ViT
from .test_latency import MacClock


class HeadClock(MacClock):
    """Attention: 2 ms + 1 ms per head; everything else: its MACs (as MacClock)."""

    def layer(self, module, inputs) -> float:
        if isinstance(module, _SelfAttention):
            return 2e-3 + 1e-3 * module.attn.num_heads
        return super().layer(module, inputs)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEPRUNE_CACHE", str(tmp_path))
    return tmp_path


def test_attention_is_timed_by_head_count(cache):
    torch.manual_seed(0)
    model = ViT(dim=64, depth=2, heads=4, mlp=128, split="mha").eval()
    graph = trace(model, torch.randn(1, 3, 32, 32))
    assert set(graph.attention_calls) == {"blocks.0.attn.mha", "blocks.1.attn.mha"}
    assert graph.attention_calls["blocks.0.attn.mha"] == ((1, 17, 64), False)
    costs = CostModel(graph)
    table = LatencyModel(graph, costs, HeadClock())
    # 1, 2 and 4 of the 4 heads (the grid's 1/4, 1/2, 1)
    assert [item[0].tolist() for item in table.head_items] == [[3e-3, 4e-3, 6e-3]] * 2
    keep = costs.full()
    full = table.latency(keep)
    heads0 = np.unique(table.head_items[0][1])
    assert heads0.size == 4  # one unit per head: heads leave whole
    keep[heads0[:2]] = False
    assert table.latency(keep) == pytest.approx(full - 2e-3)
    keep[heads0[2]] = False  # 1 of 4 heads left: the grid's first point
    assert table.latency(keep) == pytest.approx(full - 3e-3)
    # the embedding width (the residual stream): the projections' share of the MACs scales
    _, _, embed, share = table.head_items[0]
    assert embed and 0.3 < share < 1.0
    keep = costs.full()
    keep[np.unique(np.concatenate(embed))] = False  # no embedding width left: a lower bound
    low = table.latency(keep)
    assert low < full


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
