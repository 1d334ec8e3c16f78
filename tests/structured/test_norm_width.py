"""Transformer embedding width: RMSNorm and LayerNorm shrink exactly (layer_norm="keep" keeps
LayerNorm widths)."""

import copy
import pickle

import pytest
import torch
from torch import nn

from sparseprune.structured import load_pruned, plan, save_pruned
from sparseprune.structured.norms import PrunedLayerNorm

from .models import ViT, randomize_bn


def _vit(norm):
    torch.manual_seed(0)
    return randomize_bn(ViT(norm=norm))


def test_rmsnorm_width_is_pruned_exactly(tmp_path):
    model = _vit(nn.RMSNorm)
    x = torch.randn(2, 3, 32, 32)
    p = plan(model, x, amount=0.5, round_to=1, min_channels=1)
    small = p.apply()
    assert small.patch.out_channels < 64  # the residual stream itself shrank
    width = small.patch.out_channels
    assert small.norm.normalized_shape == (width,)
    assert small.blocks[0].mlp[0].in_features == width
    assert small.norm.eps == pytest.approx(torch.finfo(torch.float32).eps * 64 / width)
    with torch.no_grad():
        torch.testing.assert_close(small(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)
    save_pruned(small, tmp_path / "v.pt")
    loaded = load_pruned(lambda: ViT(norm=nn.RMSNorm), tmp_path / "v.pt").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x), atol=0, rtol=0)
    exported = torch.export.export(small, (x,))
    torch.testing.assert_close(exported.module()(x), small(x), atol=1e-5, rtol=1e-5)


def test_layernorm_width_kept_with_keep_and_named():
    model = _vit(nn.LayerNorm)
    x = torch.randn(2, 3, 32, 32)
    p = plan(model, x, amount=0.5, round_to=1, min_channels=1, layer_norm="keep")
    assert p.apply().patch.out_channels == 64
    assert any("layer_norm='keep'" in u.why for u in p.unprunable)


def test_layernorm_width_is_pruned_exactly_by_default(tmp_path):
    """The embedding width shrinks through every LayerNorm; they become PrunedLayerNorms whose
    statistics still cover the 64 original channels, so the model equals the masked one, and
    survives save/load, pickling, deepcopy and torch.export."""
    model = _vit(nn.LayerNorm)
    x = torch.randn(2, 3, 32, 32)
    p = plan(model, x, amount=0.5, round_to=1, min_channels=1)
    small = p.apply()
    width = small.patch.out_channels
    assert width < 64 and small.norm.normalized_shape == (width,)
    assert isinstance(small.norm, PrunedLayerNorm) and small.norm.full_width == 64
    assert small.blocks[1].norm2.weight.shape == (width,)
    assert "LayerNorms that shrink (exact" in str(p)
    with torch.no_grad():
        out = small(x)
        torch.testing.assert_close(out, p.masked_model()(x), atol=1e-5, rtol=1e-5)
    save_pruned(small, tmp_path / "v.pt")
    loaded = load_pruned(ViT, tmp_path / "v.pt").eval()
    assert isinstance(loaded.norm, PrunedLayerNorm) and loaded.norm.full_width == 64
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out, atol=0, rtol=0)
        torch.testing.assert_close(pickle.loads(pickle.dumps(small))(x), out, atol=0, rtol=0)
        torch.testing.assert_close(copy.deepcopy(small)(x), out, atol=0, rtol=0)
    exported = torch.export.export(small, (x,))
    torch.testing.assert_close(exported.module()(x), out, atol=1e-5, rtol=1e-5)
    # nothing removed: the norms stay plain LayerNorms
    p0 = plan(model, x, amount=0.0)
    same = p0.apply()
    assert type(same.norm) is nn.LayerNorm
    with torch.no_grad():
        torch.testing.assert_close(same(x), model(x), atol=1e-6, rtol=1e-6)


def test_pruning_a_pruned_model_again_stays_exact():
    """A PrunedLayerNorm is a leaf with its own rule: a second plan shrinks it further and
    keeps counting the original width."""
    model = _vit(nn.LayerNorm)
    x = torch.randn(2, 3, 32, 32)
    once = plan(model, x, amount=0.3, round_to=1, min_channels=1).apply()
    p2 = plan(once, x, amount=0.3, round_to=1, min_channels=1)
    twice = p2.apply()
    assert twice.patch.out_channels < once.patch.out_channels < 64
    assert twice.norm.full_width == 64
    with torch.no_grad():
        torch.testing.assert_close(twice(x), p2.masked_model()(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("gate", ["sigmoid", "shift"])
def test_norm_whose_removed_channels_are_not_zero_keeps_its_width(gate):
    """A sigmoid (0 -> 0.5) or an added constant between the pruned Linear and the LayerNorm:
    the removed channels would reach the norm non-zero, so the plan keeps its width, names it
    with node, module and reason, and the result stays exact."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 32)
            self.norm = nn.LayerNorm(32)
            self.b = nn.Linear(32, 4)
            self.c = nn.Linear(8, 32)
            self.norm2 = nn.LayerNorm(32)
            self.d = nn.Linear(32, 4)

        def forward(self, x):
            h = self.a(x)
            h = torch.sigmoid(h) if gate == "sigmoid" else h + 1.0
            return self.b(self.norm(h)) + self.d(self.norm2(torch.relu(self.c(x))))

    torch.manual_seed(0)
    model, x = M().eval(), torch.randn(5, 8)
    p = plan(model, x, amount=0.5, round_to=1, min_channels=1)
    hits = [u for u in p.unprunable if u.module == "norm" and "non-zero" in u.why]
    assert hits and hits[0].node, str(p)
    small = p.apply()
    assert small.norm.normalized_shape == (32,) and small.a.out_features == 32
    assert small.norm2.normalized_shape == (16,)  # relu(0) = 0: this one shrinks
    with torch.no_grad():
        torch.testing.assert_close(small(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)


def test_bad_layer_norm_option():
    with pytest.raises(ValueError, match="layer_norm"):
        plan(_vit(nn.LayerNorm), torch.randn(1, 3, 32, 32), amount=0.5, layer_norm="yes")


def test_load_rejects_a_bad_norm_attribute(tmp_path):
    model = _vit(nn.LayerNorm)
    save_pruned(model, tmp_path / "v.pt")
    data = torch.load(tmp_path / "v.pt", weights_only=True)
    data["widths"]["attrs"]["norm"]["normalized_shape"] = "64"
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="normalized_shape='64' is not a width attribute"):
        load_pruned(ViT, tmp_path / "bad.pt")


@pytest.mark.parametrize("case", ["masked_fill", "input_dependent"])
def test_norm_kept_when_removed_channels_may_be_non_zero_on_other_inputs(case):
    """Proven on the graph, not only on the example input: a padding fill (no padding in the
    example batch) or a data-dependent shift keeps the norm's width."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 16)
            self.norm = nn.LayerNorm(16)
            self.b = nn.Linear(16, 4)

        def forward(self, x):
            h = self.a(x)
            if case == "masked_fill":
                h = h.masked_fill((x[..., :1] > 3.0), 1.0)  # never true on the example
            else:
                h = h + torch.relu(x.mean() - 5.0)  # zero on the example
            return self.b(self.norm(h))

    torch.manual_seed(0)
    model, x = M().eval(), torch.randn(4, 8)
    p = plan(model, x, amount=0.5)
    assert any(u.module == "norm" and "may reach it non-zero" in u.why for u in p.unprunable)
    small = p.apply()
    other = torch.randn(4, 8) * 4 + 6
    with torch.no_grad():
        torch.testing.assert_close(small(other), p.masked_model()(other), atol=1e-4, rtol=1e-4)


def test_norm_after_a_linear_over_another_dim_keeps_its_width():
    """A Linear with a bias mapping over the token dim of [B, C, L] writes its bias into the
    removed channels: the norm over C that follows keeps its width (found by the graph proof,
    not only on the example)."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 16, 1)
            self.mix = nn.Linear(8, 8)  # over L
            self.norm = nn.LayerNorm(16)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            h = self.mix(self.conv(x)).transpose(1, 2)  # [B, L, C]
            return self.head(self.norm(h))

    torch.manual_seed(0)
    model, x = M().eval(), torch.randn(2, 4, 8)
    p = plan(model, x, amount=0.5)
    assert any(u.module == "norm" and "mix" in u.why for u in p.unprunable), str(p)
    with torch.no_grad():
        torch.testing.assert_close(p.apply()(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)
