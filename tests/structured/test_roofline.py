"""bench/roofline.py: the flops and bytes it charges per layer, and the bound it gives."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from roofline import layer_costs, roofline_seconds  # noqa: E402


def test_layer_costs_count_flops_and_bytes():
    model = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 4 * 4, 10))
    x = torch.randn(2, 8, 4, 4)
    (conv, act, lin) = layer_costs(model, x)
    assert conv == (2.0 * 2 * 16 * 16 * 8, 4.0 * (2 * 8 * 16 + 2 * 16 * 16) + 4.0 * 16 * 8)
    assert act == (0.0, 4.0 * 2 * 2 * 16 * 16)
    assert lin == (2.0 * 2 * 10 * 256, 4.0 * (2 * 256 + 2 * 10) + 4.0 * (10 * 256 + 10))


def test_memory_bound_layers_follow_bytes_not_macs():
    """Halving both widths of a 1x1 conv quarters its MACs; when memory-bound the bound only
    halves, when compute-bound it quarters."""
    big, small = nn.Conv2d(32, 32, 1), nn.Conv2d(16, 16, 1)
    xb, xs = torch.randn(4, 32, 16, 16), torch.randn(4, 16, 16, 16)
    slow_memory = roofline_seconds(big, xb, 1e15, 1e6) / roofline_seconds(small, xs, 1e15, 1e6)
    slow_compute = roofline_seconds(big, xb, 1e6, 1e15) / roofline_seconds(small, xs, 1e6, 1e15)
    assert slow_compute == pytest.approx(4.0, rel=1e-6)
    assert 1.9 < slow_memory < 2.1


def test_attention_pooling_and_other_leaves_are_counted():
    from sparseprune.structured import count_macs

    from .models import ViT

    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    vit = ViT(split="mha").eval()
    flops = sum(f for f, _ in layer_costs(vit, x))
    # count_macs counts the same projections, scores and weighted sums
    assert flops / 2 == pytest.approx(count_macs(vit, x), rel=0.02)
    # attention written out as matmuls: the Linears are counted, the two matmuls are not
    functional = ViT(split=False).eval()
    assert 0.9 < sum(f for f, _ in layer_costs(functional, x)) / 2 / count_macs(functional, x) < 1
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sigmoid(), nn.MaxPool2d(2), nn.InstanceNorm2d(4),
                          nn.LeakyReLU(), nn.Identity(), nn.Flatten())
    costs = layer_costs(model, torch.randn(1, 3, 10, 10))
    assert len(costs) == 5  # identity and flatten move nothing
    assert costs[0][0] > 0 and all(f == 0 for f, _ in costs[1:])
