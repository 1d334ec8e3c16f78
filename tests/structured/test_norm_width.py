"""Transformer embedding width: RMSNorm shrinks exactly, LayerNorm only with layer_norm="prune"."""

import pytest
import torch
from torch import nn

from sparseprune.structured import load_pruned, plan, save_pruned

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


def test_layernorm_width_kept_by_default_and_named():
    model = _vit(nn.LayerNorm)
    x = torch.randn(2, 3, 32, 32)
    p = plan(model, x, amount=0.5, round_to=1, min_channels=1)
    assert p.apply().patch.out_channels == 64
    assert any("layer_norm='prune'" in u.why for u in p.unprunable)


def test_layernorm_prune_is_approximate_and_says_so(tmp_path):
    model = _vit(nn.LayerNorm)
    x = torch.randn(2, 3, 32, 32)
    p = plan(model, x, amount=0.5, round_to=1, min_channels=1, layer_norm="prune")
    small = p.apply()
    width = small.patch.out_channels
    assert width < 64 and small.norm.normalized_shape == (width,)
    assert small.blocks[1].norm2.weight.shape == (width,)
    assert "approximate (layer_norm='prune'" in str(p)
    with torch.no_grad():
        out, ref = small(x), p.masked_model()(x)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, ref, atol=1e-5)  # statistics over fewer channels
    save_pruned(small, tmp_path / "v.pt")
    loaded = load_pruned(ViT, tmp_path / "v.pt").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out, atol=0, rtol=0)
    # nothing removed: still exact
    p0 = plan(model, x, amount=0.0, layer_norm="prune")
    with torch.no_grad():
        torch.testing.assert_close(p0.apply()(x), model(x), atol=1e-6, rtol=1e-6)


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
