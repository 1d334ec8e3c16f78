"""PrunedLayerNorm: layer norm over kept channels with the statistics of the full width (the
removed channels being zeros), against F.layer_norm on the zero-padded input."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseprune.structured import load_pruned, save_pruned
from sparseprune.structured.norms import (
    PrunedLayerNorm,
    counted_layer_norm,
    removed_input_max,
    to_pruned_layer_norm,
)


def _padded_reference(x, full, weight, bias, eps, dim, kept):
    """F.layer_norm over ``full`` channels, the removed ones zero, sliced back to ``kept``."""
    moved = x.movedim(dim, -1)
    big = moved.new_zeros(*moved.shape[:-1], full)
    big[..., kept] = moved
    w = None if weight is None else weight.new_zeros(full).index_copy(0, kept, weight)
    b = None if bias is None else bias.new_zeros(full).index_copy(0, kept, bias)
    return F.layer_norm(big, (full,), w, b, eps)[..., kept].movedim(-1, dim)


@pytest.mark.parametrize("seed", range(12))
def test_counted_layer_norm_equals_the_zero_padded_layer_norm(seed):
    g = torch.Generator().manual_seed(seed)
    full = int(torch.randint(1, 70, (1,), generator=g))
    k = int(torch.randint(1, full + 1, (1,), generator=g))
    kept = torch.randperm(full, generator=g)[:k].sort().values
    dim = [-1, 1][seed % 2]
    shape = [3, k, 5, 2] if dim == 1 else [4, 3, k]
    x = torch.randn(shape, generator=g) * 3 + 2  # a large mean: the variance formula holds
    affine = seed % 3
    weight = torch.randn(k, generator=g) if affine else None
    bias = torch.randn(k, generator=g) if affine == 2 else None
    got = counted_layer_norm(x, full, weight, bias, 1e-5, dim)
    ref = _padded_reference(x, full, weight, bias, 1e-5, dim, kept)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_full_width_is_plain_layer_norm_and_edge_cases():
    x = torch.randn(4, 7, 16)
    m = nn.LayerNorm(16)
    nn.init.normal_(m.weight)
    nn.init.normal_(m.bias)
    ref = m(x)
    p = to_pruned_layer_norm(m, 16, 16, -1)
    assert p is m and isinstance(p, PrunedLayerNorm)
    torch.testing.assert_close(p(x), ref, atol=1e-6, rtol=1e-6)
    assert p(torch.randn(0, 16)).shape == (0, 16)  # batch 0
    assert counted_layer_norm(torch.randn(3, 0), 4, None, None, 1e-5).shape == (3, 0)
    z = counted_layer_norm(torch.zeros(2, 5), 8, None, None, 1e-5)  # all-zero input: finite
    assert torch.equal(z, torch.zeros(2, 5))
    nc = torch.randn(16, 4).t()  # non-contiguous input
    torch.testing.assert_close(p(nc), p(nc.contiguous()), atol=0, rtol=0)
    assert "full_width=16, channel_dim=-1" in repr(p)
    scripted = torch.jit.script(PrunedLayerNorm(8, 16, channel_dim=1))
    y = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(scripted(y), PrunedLayerNorm(8, 16, channel_dim=1)(y))


def test_constructor_and_swap_validate():
    assert PrunedLayerNorm(8, 16, channel_dim=1).full_width == 16
    with pytest.raises(ValueError, match="full_width=4 must be >= 1 and >= the kept width 8"):
        PrunedLayerNorm(8, 4)
    with pytest.raises(ValueError, match="channel_dim must be -1 or a dim >= 1; got 0"):
        PrunedLayerNorm(8, 16, channel_dim=0)
    with pytest.raises(ValueError, match="full_width must be an int; got '16'"):
        PrunedLayerNorm(8, "16")
    with pytest.raises(ValueError, match="normalises one dim"):
        PrunedLayerNorm((2, 4), 8)


def test_counted_layer_norm_rejects_a_full_width_below_the_input():
    with pytest.raises(ValueError, match="full_width=4 is below the input's 6 channels"):
        counted_layer_norm(torch.randn(2, 6), 4, None, None, 1e-5)


def test_removed_input_max():
    x = torch.tensor([[0.0, 1.0, 0.0, -3.0]])
    assert removed_input_max(x, -1, torch.tensor([0, 2])) == 0.0
    assert removed_input_max(x, 1, torch.tensor([2, 3])) == 3.0
    assert removed_input_max(x, -1, torch.tensor([], dtype=torch.long)) == 0.0


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.b = nn.Linear(8, 2)

    def forward(self, x):
        return self.b(self.norm(self.a(x)))


@pytest.mark.parametrize("bad, match", [
    ({"full_width": 2, "channel_dim": -1}, "full_width=2 must be"),
    ({"full_width": "8", "channel_dim": -1}, "full_width must be an int"),
    ({"full_width": 8}, "need both keys"),
])
def test_load_rejects_bad_pruned_norm_records(tmp_path, bad, match):
    from sparseprune.structured import plan

    torch.manual_seed(0)
    model, x = _Net().eval(), torch.randn(3, 4)
    small = plan(model, x, amount=0.5, round_to=1, min_channels=1).apply()
    assert isinstance(small.norm, PrunedLayerNorm)
    save_pruned(small, tmp_path / "n.pt")
    data = torch.load(tmp_path / "n.pt", weights_only=True)
    rec = data["widths"]["attrs"]["norm"]
    rec.pop("full_width")
    rec.pop("channel_dim")
    rec.update(bad)
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=match):
        load_pruned(_Net, tmp_path / "bad.pt")


def test_output_is_laid_out_like_the_input_and_views_work():
    """The kept channels are copied out: a later ``.view`` over the channel dim works (a
    strided slice of the padded tensor would fail) and the layout follows the input's."""
    from sparseprune.structured import plan

    class Flattens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.norm, self.head = nn.Linear(8, 64), nn.LayerNorm(64), nn.Linear(320, 10)

        def forward(self, x):
            x = self.norm(self.fc1(x))
            return self.head(x.view(x.size(0), -1))

    torch.manual_seed(0)
    model, x = Flattens().eval(), torch.randn(2, 5, 8)
    p = plan(model, x, amount=0.5)
    small = p.apply()
    assert small.norm.normalized_shape[0] < 64
    with torch.no_grad():
        torch.testing.assert_close(small(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)
    y = counted_layer_norm(torch.randn(2, 3, 10), 16, None, None, 1e-5)
    assert y.is_contiguous() and y.view(-1).numel() == 60
    x4 = torch.randn(2, 6, 5, 5)
    assert counted_layer_norm(x4, 8, None, None, 1e-6, 1).is_contiguous()
    nhwc = counted_layer_norm(x4.to(memory_format=torch.channels_last), 8, None, None, 1e-6, 1)
    assert nhwc.is_contiguous(memory_format=torch.channels_last)
