"""Breadth: one small model per torchvision family (see zoo_models.py) at amount=0.5.

Each prunes exactly (pruned == masked, output shape unchanged), removes MACs, agrees with the
FlopCounterMode reference on MACs before and after, and refuses an unsafe op at plan time with
node, module and reason (``apply()`` then still succeeds).
"""

import pytest
import torch
from torch import nn

from sparseprune.structured import plan
from sparseprune.structured.norms import PrunedLayerNorm

from .macs import assert_macs_agree
from .models import MODELS, randomize_bn
from .zoo_models import FAMILIES, ConvNeXt, LayerNorm2d, ResNeXt, randomize

# MAC cut at amount=0.5 with the default options (no rounding, floor 1/8 of a width; measured:
# 3.97, 3.69, 3.22, 3.22, 3.42, 3.35); ConvNeXt's block widths shrink through its LayerNorms
# (exact PrunedLayerNorms), the ViT's embedding width too (self-attention embed_dim, the
# hidden_dim literal of its patch reshape).
MIN_CUT = {"resnext": 3.5, "regnet": 3.3, "efficientnet": 3.0, "mobilenetv3": 3.0,
           "convnext": 3.0, "vit": 3.0}

# what the unsafe variant must refuse: (module, words of the reason)
REFUSED = {
    "resnext": ("head", "reduction over a channel dim"),
    "regnet": ("head", "reduction over a channel dim"),
    "efficientnet": ("head", "reduction over a channel dim"),
    "mobilenetv3": ("head", "reduction over a channel dim"),
    "convnext": ("classifier.0", "may reach it non-zero"),
    "vit": ("layers.0.self_attention", "attention weights"),
}


def _case(name: str, unsafe: bool = False, **kwargs):
    torch.manual_seed(0)
    factory, shape = FAMILIES[name]
    model = randomize(factory(unsafe=unsafe))
    x = torch.randn(shape)
    return model, x, plan(model, x, amount=0.5, **kwargs)


def _exact(model, x, p) -> nn.Module:
    small = p.apply()
    with torch.no_grad():
        got, ref = small(x), model(x)
        torch.testing.assert_close(got, p.masked_model()(x), atol=1e-5, rtol=1e-5)
    assert got.shape == ref.shape
    return small


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_prunes_exactly_and_cuts_macs(name):
    model, x, p = _case(name)
    small = _exact(model, x, p)
    cut = assert_macs_agree(p, model, small, x)
    assert cut >= MIN_CUT[name], f"{name}: MAC cut {cut:.2f}"
    # stochastic depth passes channels through: it never pins anything
    assert not any("StochasticDepth" in u.why or "stochastic" in u.node for u in p.unprunable)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_unsafe_op_is_refused_at_plan_time(name):
    model, x, p = _case(name, unsafe=True)
    module, why = REFUSED[name]
    hits = [u for u in p.unprunable if u.module == module and why in u.why]
    assert hits, f"{name}: no refusal of {module} ({why}) in\n{p}"
    assert hits[0].node and hits[0].channels > 0
    assert f"{module}): " in str(p)
    small = _exact(model, x, p)  # refused at plan time, never at apply()
    assert_macs_agree(p, model, small, x)


def test_grouped_convs_shrink_every_group_alike():
    """ResNeXt's grouped 3x3s (32 groups of 4, then of 8) shrink with a 16-channel
    floor and rounding: a unit is one position in every group (32 channels)."""
    model, x, p = _case("resnext", round_to=16, min_channels=16)
    widths = {name: (b, a) for name, b, a in p.widths()}
    assert widths["layer1.0.conv2.0"] == (128, 64)
    assert widths["layer2.conv2.0"] == (256, 128)
    small = p.apply()
    conv = small.layer1[0].conv2[0]
    assert (conv.groups, conv.in_channels, conv.out_channels) == (32, 64, 64)
    assert conv.weight.shape == (64, 2, 3, 3)
    assert isinstance(model, ResNeXt)


def test_convnext_width_shrinks_exactly_through_its_layer_norms():
    """``LayerNorm2d`` (F.layer_norm with keyword affine params, between permutes) and the
    channels-last nn.LayerNorm shrink with the block width, as ``PrunedLayerNorm``s over the
    same dim (1 and -1) whose statistics count the removed channels: the result is exact.
    ``layer_norm="keep"`` keeps the block widths instead."""
    model, x, p = _case("convnext")
    assert not [u for u in p.unprunable if "layer norm" in u.why]
    small = _exact(model, x, p)
    stem_norm = small.features[0][1]
    assert isinstance(stem_norm, PrunedLayerNorm) and isinstance(stem_norm, nn.LayerNorm)
    assert stem_norm.normalized_shape == (16,) and stem_norm.weight.shape == (16,)
    assert (stem_norm.full_width, stem_norm.channel_dim) == (32, 1)
    block_norm = small.features[1].block[2]
    assert (block_norm.full_width, block_norm.channel_dim) == (32, -1)
    assert "LayerNorms that shrink (exact" in str(p)
    assert isinstance(model, ConvNeXt) and isinstance(model.features[0][1], LayerNorm2d)
    cut = assert_macs_agree(p, model, small, x)
    kept = plan(model, x, amount=0.5, layer_norm="keep")
    assert any(u.module == "features.0.1" and "layer_norm='keep'" in u.why
               for u in kept.unprunable)
    assert cut > 1.5 * assert_macs_agree(kept, model, _exact(model, x, kept), x)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_macs_agree_on_every_test_model(name):
    torch.manual_seed(0)
    factory, make_input = MODELS[name]
    model, x = randomize_bn(factory()), make_input()
    p = plan(model, x, amount=0.5, round_to=1, min_channels=1)
    assert assert_macs_agree(p, model, p.apply(), x) > 1


def test_vit_embedding_width_shrinks_through_the_hidden_dim_literal():
    """``reshape(n, self.hidden_dim, ...)``: tracing again with ``hidden_dim`` changed proves
    the literal is read from it, so the surgery rewrites the attribute; the class token, the
    position embedding, every LayerNorm and nn.MultiheadAttention's embed_dim shrink with it."""
    model, x, p = _case("vit")
    small = _exact(model, x, p)
    width = small.conv_proj.out_channels
    assert width < 64 and small.hidden_dim == width
    assert small.class_token.shape[-1] == small.pos_embedding.shape[-1] == width
    assert small.layers[0].self_attention.embed_dim == width
    assert model.hidden_dim == 64  # the original is untouched


class _LiteralOnly(nn.Module):
    """A literal equal to ``hidden_dim`` that is not read from it, and (``twice``) the attribute
    also read by an op that is not a reshape: neither may rewrite the attribute."""

    def __init__(self, twice: bool) -> None:
        super().__init__()
        self.hidden_dim, self.twice = 16, twice
        self.a = nn.Conv2d(3, 16, 2, 2)
        self.b = nn.Linear(16, 4)

    def forward(self, x):
        n = x.shape[0]
        h = self.a(x).reshape(n, self.hidden_dim if self.twice else 16, -1).permute(0, 2, 1)
        if self.twice:
            h = h + torch.zeros(self.hidden_dim)
        return self.b(h)


@pytest.mark.parametrize("twice", [False, True])
def test_a_literal_not_proven_to_follow_the_attribute_is_kept(twice):
    torch.manual_seed(0)
    model, x = _LiteralOnly(twice).eval(), torch.randn(2, 3, 8, 8)
    p = plan(model, x, amount=0.5)
    assert any("literal sizes" in u.why for u in p.unprunable), str(p)
    small = p.apply()
    assert small.a.out_channels == 16 and small.hidden_dim == 16


class _WidthReaders(nn.Module):
    """``reshape(n, self.hidden_dim, 16)`` of the stem, plus (``variant``) another use of
    ``hidden_dim`` that a shrunk value would break: control flow, a derived size, a reshape of
    the model input."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.hidden_dim, self.variant = 32, variant
        self.conv = nn.Conv2d(3, 32, 4, 4)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        n = x.shape[0]
        out = self.head(self.conv(x).reshape(n, self.hidden_dim, 16).mean(2))
        if self.variant == "branch" and self.hidden_dim >= 24:
            out = out * 2
        elif self.variant == "half":
            out = out + x[:, :2].reshape(n, self.hidden_dim // 2, -1).mean((1, 2))[:, None]
        elif self.variant == "input":
            out = out + x[:, :1].reshape(n, self.hidden_dim, -1).mean((1, 2))[:, None]
        return out


@pytest.mark.parametrize("variant", ["", "branch", "half", "input"])
def test_width_attribute_rewritten_only_when_the_planned_value_traces_the_same(variant):
    torch.manual_seed(0)
    model, x = _WidthReaders(variant).eval(), torch.randn(2, 3, 16, 16)
    p = plan(model, x, amount=0.5)
    small = p.apply()
    with torch.no_grad():
        torch.testing.assert_close(small(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)
        other = torch.randn(2, 3, 16, 16)
        torch.testing.assert_close(small(other), p.masked_model()(other), atol=1e-5, rtol=1e-5)
    if not variant:
        assert small.hidden_dim == small.conv.out_channels == 16
    else:
        assert small.hidden_dim == small.conv.out_channels == 32
        assert any("hidden_dim" in u.why and "keep their width" in u.why
                   for u in p.unprunable), str(p)
