"""Dependency rules: couplings, unprunable ops named in the plan, tracing errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseprune.structured import (
    HeadPrunedMultiheadAttention,
    StructuredTraceError,
    plan,
    trace,
)

from .models import SplitAttention, ViT, randomize_bn


class Gather(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 32, 3, padding=1)
        self.c3 = nn.Conv2d(32, 8, 1)

    def forward(self, x):
        y = self.c2(F.relu(self.c1(x)))
        idx = torch.arange(y.shape[1] - 1, -1, -1)
        return self.c3(torch.index_select(y, 1, idx))


def test_unknown_op_keeps_its_channels_and_is_named():
    model = Gather()
    x = torch.randn(1, 3, 8, 8)
    p = plan(model, x, amount=0.5, round_to=1, min_channels=1)
    names = [u.node for u in p.unprunable]
    assert {"arange", "index_select"} & set(names)
    widths = {n: (b, a) for n, b, a in p.widths()}
    assert "c2" not in widths  # pinned: not a prunable group
    assert widths["c1"] == (32, 16)
    small = p.apply()
    torch.testing.assert_close(small(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)


class LiteralView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(self.c1(x).view(-1, 32 * 4 * 4))


def test_literal_reshape_is_kept():
    p = plan(LiteralView(), torch.randn(2, 3, 4, 4), amount=0.5, round_to=1, min_channels=1)
    assert any("literal" in u.why for u in p.unprunable)
    assert p.after["channels"] == p.before["channels"]
    p.apply()  # no crash


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        if x.sum() > 0:
            return self.c(x)
        return x


def test_untraceable_control_flow_is_a_clear_error():
    with pytest.raises(StructuredTraceError, match="Untraceable.forward.*leaf_modules"):
        plan(Untraceable(), torch.randn(1, 3, 4, 4), amount=0.5)


def test_untraceable_submodule_as_leaf_keeps_its_channels():
    model = nn.Sequential(nn.Conv2d(3, 16, 1), Untraceable.__new__(Untraceable))
    nn.Module.__init__(model[1])
    model[1].c = nn.Conv2d(16, 8, 1)
    p = plan(model, torch.randn(1, 3, 4, 4), amount=0.5, round_to=1, min_channels=1,
             leaf_modules=(Untraceable,))
    assert any("Untraceable" in u.why for u in p.unprunable)


def test_protect_output_false_prunes_the_classifier():
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16))
    p = plan(model, torch.randn(2, 8), amount=0.5, round_to=1, min_channels=1,
             protect_output=False)
    assert p.apply()(torch.randn(2, 8)).shape[1] < 16


def test_residual_add_couples_both_sides():
    from .models import ResNet18

    g = trace(ResNet18(), torch.randn(1, 3, 32, 32))
    stem = next(gr for gr in g.groups if gr.producers[0] == "stem.0")
    assert {"layers.0.conv2", "layers.1.conv2"} <= set(stem.producers)


def test_attention_heads_removed_whole():
    torch.manual_seed(0)
    model = ViT(dim=64, heads=4, mlp=128).eval()
    x = torch.randn(2, 3, 32, 32)
    p = plan(model, x, amount=0.5, round_to=1, min_channels=1)
    small = p.apply()
    attn = small.blocks[0].attn
    assert attn.num_heads == 2 and attn.head_dim == 16
    assert attn.qkv.out_features == 3 * 2 * 16 and attn.proj.in_features == 32
    torch.testing.assert_close(small(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)
    # the residual stream goes through LayerNorm: it shrinks exactly by default and is kept,
    # and said so, with layer_norm="keep"
    assert small.patch.out_channels < 64
    kept = plan(model, x, amount=0.5, round_to=1, min_channels=1, layer_norm="keep")
    assert any("layer_norm='keep'" in u.why for u in kept.unprunable)
    assert kept.apply().patch.out_channels == 64


def test_sdpa_attention_heads():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), SplitAttention(32, heads=4), nn.Linear(32, 4))
    x = torch.randn(2, 5, 16)
    p = plan(model, x, amount=0.5, round_to=1, min_channels=1)
    small = p.apply()
    assert small[1].heads == 2 and small[1].q.out_features == 16
    torch.testing.assert_close(small(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cross", [False, True, "uneven"])
def test_multihead_attention_embed_dim(cross):
    """nn.MultiheadAttention loses heads (see test_mha.py); in self-attention its embed_dim
    shrinks with the stream around it (the pruned module runs nn.MultiheadAttention's own
    forward when heads * head_dim still equals embed_dim); with another key/value tensor it is
    kept and named."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(8, 16)
            self.mem = nn.Linear(8, 16)
            self.mha = nn.MultiheadAttention(16, 2, batch_first=True)
            self.out = nn.Linear(16, 3)

        def forward(self, x):
            h = self.inp(x)
            kv = self.mem(x) if cross is True else h
            return self.out(self.mha(h, kv, kv)[0])

    torch.manual_seed(0)
    model, x = M().eval(), torch.randn(2, 4, 8)
    p = plan(model, x, amount=0.5, amounts={"inp": 0.25} if cross == "uneven" else None)
    small = p.apply()
    assert small.mha.num_heads == 1
    if cross == "uneven":  # embed_dim 12, one head of 8: the head-pruned forward
        assert small.mha.embed_dim == 12 and isinstance(small.mha, HeadPrunedMultiheadAttention)
    elif cross:
        assert any(u.module == "mha" and "embed_dim" in u.why for u in p.unprunable)
        assert small.mha.embed_dim == 16
    else:
        assert small.mha.embed_dim == small.inp.out_features == 8
        assert small.mha.in_proj_weight.shape == (24, 8) and small.mha.out_proj.weight.shape \
            == (8, 8)
        assert type(small.mha) is nn.MultiheadAttention  # 1 head x 8 == embed_dim: no switch
    with torch.no_grad():
        torch.testing.assert_close(small(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)


def test_shufflenet_shuffle_couples_groups():
    from .models import ShuffleNetV2

    torch.manual_seed(0)
    model = randomize_bn(ShuffleNetV2())
    x = torch.randn(1, 3, 32, 32)
    p = plan(model, x, amount=0.5, round_to=1, min_channels=1)
    assert not any("split" in u.why or "literal" in u.why for u in p.unprunable)
    small = p.apply()
    torch.testing.assert_close(small(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)
    # pieces of a chunk stay equal, so the shuffle still pairs them
    assert small.blocks[1].branch2[0].in_channels * 2 == small.blocks[0].branch1[2].out_channels * 2


@pytest.mark.parametrize("kind", ["linear", "conv", "batchnorm"])
def test_module_called_on_a_model_input_and_on_a_prunable_tensor(kind):
    """A shared layer whose first call reads the model input (no channel labels) keeps its
    input width although its second call reads prunable channels: cutting the shared weight
    would break the first call (found as a failure at apply() before)."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            if kind == "batchnorm":
                self.a, self.shared = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
            elif kind == "conv":
                self.a, self.shared = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)
            else:
                self.a, self.shared = nn.Linear(8, 8), nn.Linear(8, 4)

        def forward(self, x):
            return self.shared(x) + self.shared(torch.relu(self.a(x)))

    torch.manual_seed(0)
    model = M().eval()
    x = torch.randn(2, 8, 3, 3) if kind != "linear" else torch.randn(2, 8)
    p = plan(model, x, amount=0.5, round_to=1, min_channels=1)
    small = p.apply()
    with torch.no_grad():
        torch.testing.assert_close(small(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)
    assert small.a.weight.shape[0] == 8  # coupled with the model input through `shared`
