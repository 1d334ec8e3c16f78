"""Single-op cases of the dependency rules: each either prunes exactly or is refused at plan
time with node, module and reason (never a crash in plan, never a failure at apply)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseprune.structured import count_macs, plan
from sparseprune.structured.rules import FUNCTION_RULES

from .macs import assert_macs_agree, reference_macs
from .zoo_models import LayerNorm2d


class Two(nn.Module):
    """conv -> op(x) -> conv; ``op`` sees the first conv's 32 prunable channels."""

    def __init__(self, op, cin: int = 32) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 32, 3, padding=1)
        self.b = nn.Conv2d(cin, 8, 1)
        self.op = op

    def forward(self, x):
        return self.b(self.op(self, self.a(x)))


def _plan(op, **kwargs):
    torch.manual_seed(0)
    model = Two(op, **kwargs).eval()
    x = torch.randn(2, 3, 8, 8)
    p = plan(model, x, amount=0.5, round_to=1, min_channels=1)
    small = p.apply()
    with torch.no_grad():
        torch.testing.assert_close(small(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)
    assert_macs_agree(p, model, small, x)
    return p


def _kept(p, why: str) -> bool:
    return any(why in u.why for u in p.unprunable)


def _width(p, name: str) -> int:
    return next(a for n, _, a in p.widths() if n.startswith(name))


def test_two_tensor_max_and_min_are_elementwise():
    p = _plan(lambda m, x: torch.max(x, torch.relu(x)) + torch.min(x, x * 2) + x.max(-x))
    assert _width(p, "a") == 16 and not _kept(p, "reduction")


def test_squeeze_with_a_tuple_of_dims():
    p = _plan(lambda m, x: x.mean((2, 3), keepdim=True).squeeze((2, 3))[:, :, None, None] * x)
    assert _width(p, "a") == 16


def test_expand_to_a_tuple_of_literal_sizes_is_refused():
    p = _plan(lambda m, x: x[:, :, :1, :1].expand((2, 32, 8, 8)) + x)
    assert _kept(p, "expand to a literal channel count")


def test_expand_to_sizes_read_from_the_tensor_is_fine():
    p = _plan(lambda m, x: x.mean((2, 3), keepdim=True).expand(x.size(0), x.size(1), 8, 8) + x)
    assert _width(p, "a") == 16


def test_conv_transpose_output_size_keyword_is_refused():
    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 32, 3, 2, 1)
            self.up = nn.ConvTranspose2d(32, 16, 3, 2, 1)

        def forward(self, x):
            return self.up(self.a(x), output_size=[8, 8])

    p = plan(Up().eval(), torch.randn(1, 3, 8, 8), amount=0.5, round_to=1, min_channels=1)
    assert any(u.module == "up" and "output_size" in u.why for u in p.unprunable)
    p.apply()


@pytest.mark.parametrize("layer_norm", ["keep", "prune"])
def test_functional_layer_norm_with_keyword_affine(layer_norm):
    """ConvNeXt's LayerNorm2d: fx records weight/bias as keywords; "keep" refuses at plan time
    (the bug was a silent cut of weight alone, failing at apply), "prune" shrinks it."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 32, 3, padding=1)
            self.norm = LayerNorm2d(32)
            self.b = nn.Conv2d(32, 8, 1)

        def forward(self, x):
            return self.b(self.norm(self.a(x)))

    model, x = M().eval(), torch.randn(2, 3, 8, 8)
    p = plan(model, x, amount=0.5, round_to=1, min_channels=1, layer_norm=layer_norm)
    small = p.apply()
    if layer_norm == "keep":
        assert any(u.module == "norm" and "layer norm" in u.why for u in p.unprunable)
        torch.testing.assert_close(small(x), model(x))
    else:
        assert small.norm.normalized_shape == (16,) == tuple(small.norm.bias.shape)


def test_a_rule_that_drops_a_parameter_is_caught_at_plan_time(monkeypatch):
    """Safety net: a rule that neither couples nor pins a parameter's dim (here: a buggy
    F.layer_norm rule that ignores weight and bias) gets that dim pinned, named in the plan."""

    def careless(ctx):  # the rule before the fix: it read weight/bias from positional args
        tl = ctx.tl(ctx.node.args[0])
        ctx.fix([tl[-1], *(ctx.lab(a) for a in ctx.node.args[2:4])], "layer norm")
        return tl[:-1] + (None,)

    monkeypatch.setitem(FUNCTION_RULES, F.layer_norm, careless)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 32, 3, padding=1)
            self.norm = LayerNorm2d(32)

        def forward(self, x):
            return self.norm(self.a(x)).mean((2, 3))

    p = plan(M().eval(), torch.randn(2, 3, 8, 8), amount=0.5, round_to=1, min_channels=1,
             protect_output=False)
    whys = [u.why for u in p.unprunable if u.module == "norm" and "does not say how" in u.why]
    assert any("norm.weight" in w for w in whys) and any("norm.bias" in w for w in whys)
    p.apply()


def test_einsum_contraction_couples_and_counts():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(16, 32)
            self.k = nn.Linear(16, 32)
            self.out = nn.Linear(32, 4)

        def forward(self, x):
            s = torch.einsum("b i d, b j d -> b i j", self.q(x), self.k(x)).softmax(-1)
            return self.out(torch.einsum("bij,bjd->bid", s, self.q(x)))

    model, x = M().eval(), torch.randn(2, 5, 16)
    p = plan(model, x, amount=0.5, round_to=1, min_channels=1)
    small = p.apply()
    assert small.q.out_features == small.k.out_features == small.out.in_features == 16
    with torch.no_grad():
        torch.testing.assert_close(small(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)
    assert_macs_agree(p, model, small, x)


def test_einsum_sum_over_a_channel_is_refused():
    p = _plan(lambda m, x: x * torch.einsum("bchw->bhw", x)[:, None])
    assert _kept(p, "einsum sums over a channel dim")


@pytest.mark.parametrize("need_weights", [False, True])
def test_count_macs_counts_multihead_attention(need_weights):
    """The fused inference path and the CPU sdpa kernel are both counted."""
    m = nn.MultiheadAttention(64, 4, batch_first=True).eval()
    x = torch.randn(2, 10, 64)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x, x, x, need_weights=need_weights)[0]

    proj = 2 * 10 * 64 * 64 * 4
    attn = 2 * 2 * 4 * 10 * 10 * 16
    assert count_macs(Wrap(), x) == proj + attn == reference_macs(Wrap(), x)
    assert plan(Wrap(), x, amount=0.5).before["macs"] == proj + attn


def test_count_macs_counts_sdpa_and_functional_conv():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 3, 3, 3))

        def forward(self, x):
            y = F.conv2d(x, self.w, padding=1).flatten(2).unflatten(1, (2, 4))
            return F.scaled_dot_product_attention(y, y, y)

    model, x = M().eval(), torch.randn(1, 3, 4, 4)
    want = 8 * 16 * 27 + 2 * (2 * 4 * 4 * 16)  # conv; q k^T and a v over 2 heads of 4 x 16
    assert count_macs(model, x) == want == reference_macs(model, x)
    assert plan(model, x, amount=0.5).before["macs"] == want  # the conv: a measured constant
