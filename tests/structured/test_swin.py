"""Swin (hand-written stand-in for torchvision's, see swin_models.py): whole heads of the shifted
window attention and the embedding width go, exactly; MACs agree with FlopCounterMode; the
pruned window attention survives pickling, deepcopy, save/load and a second plan."""

import copy
import pickle

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from sparseprune.structured import load_pruned, plan, save_pruned
from sparseprune.structured.norms import PrunedLayerNorm
from sparseprune.structured.window_attention import PrunedAttentionForward, window_attention

from .macs import assert_macs_agree
from .swin_models import ShiftedWindowAttention, ShiftedWindowAttentionV2, Swin
from .swin_models import reference_window_attention as reference
from .zoo_models import randomize


def _patch_merging_pad(x):
    """Named like torchvision's, but the phases come in another order."""
    x = F.pad(x, (0, 0, 0, x.shape[-2] % 2, 0, x.shape[-3] % 2))
    return torch.cat([x[..., 1::2, 1::2, :], x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :],
                      x[..., 0::2, 1::2, :]], -1)


torch.fx.wrap("_patch_merging_pad")


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("size, shift", [((8, 8), 2), ((9, 6), 2), ((4, 12), 1), ((8, 8), 0)])
def test_window_attention_matches_the_window_by_window_reference(v2, size, shift):
    """Padding (9x6 with 4x4 windows), a window as large as the map in one dim (4x12: that dim
    is not shifted), shifted and not."""
    torch.manual_seed(0)
    cls = ShiftedWindowAttentionV2 if v2 else ShiftedWindowAttention
    m = randomize(cls(16, [4, 4], [shift, shift], 4))
    x = torch.randn(2, *size, 16)
    got = window_attention(x, m.qkv.weight, m.proj.weight, m.get_relative_position_bias(),
                           m.window_size, m.num_heads, m.shift_size, qkv_bias=m.qkv.bias,
                           proj_bias=m.proj.bias, logit_scale=getattr(m, "logit_scale", None))
    torch.testing.assert_close(got, reference(x, m), atol=1e-5, rtol=1e-5)


def _swin(v2: bool):
    torch.manual_seed(0)
    return randomize(Swin(v2=v2)).eval(), torch.randn(2, 3, 36, 36)  # 9x9 tokens: padding


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("keep_stream", [False, True])
def test_swin_loses_heads_and_embedding_width_exactly(v2, keep_stream, tmp_path):
    """Heads and the residual stream halve (torchvision's function would still fit: inner
    width == input width), or only the heads go (``ignore`` keeps the stream: the pruned
    forward takes over)."""
    model, x = _swin(v2)
    p = plan(model, x, amount=0.5, ignore=("patch",) if keep_stream else ())
    assert not [u for u in p.unprunable if "window" in u.why.lower()], str(p)
    small = p.apply()
    attn = small.stage1[0].attn
    assert attn.num_heads == 2 and attn.qkv.out_features == 3 * 2 * 4
    width = 16 if keep_stream else 8
    assert attn.qkv.in_features == small.patch.out_channels == width  # the residual stream
    assert isinstance(attn.forward, PrunedAttentionForward) == keep_stream
    assert isinstance(small.stage1[0].norm1, PrunedLayerNorm) != keep_stream
    if v2:
        assert attn.logit_scale.shape == (2, 1, 1) and attn.cpb_mlp[2].out_features == 2
    else:
        assert attn.relative_position_bias_table.shape[1] == 2
    assert small.merge.norm.normalized_shape == (4 * width,)  # 4 phases
    with torch.no_grad():
        out = small(x)
        torch.testing.assert_close(out, p.masked_model()(x), atol=1e-5, rtol=1e-5)
        assert out.shape == model(x).shape
        torch.testing.assert_close(pickle.loads(pickle.dumps(small))(x), out, atol=0, rtol=0)
        torch.testing.assert_close(copy.deepcopy(small)(x), out, atol=0, rtol=0)
    assert assert_macs_agree(p, model, small, x) > (1.5 if keep_stream else 3.0)
    save_pruned(small, tmp_path / "s.pt")
    loaded = load_pruned(lambda: Swin(v2=v2), tmp_path / "s.pt").eval()
    assert isinstance(loaded.stage1[0].attn.forward, PrunedAttentionForward) == keep_stream
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out, atol=0, rtol=0)
    again = plan(small, x, amount=0.3)  # a pruned window attention is planned again
    with torch.no_grad():
        torch.testing.assert_close(again.apply()(x), again.masked_model()(x), atol=1e-5,
                                   rtol=1e-5)


def test_a_function_named_like_patch_merging_that_computes_something_else_is_refused():
    """Matched by name only after checking what it computes on the example input."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(32, 2)

        def forward(self, x):
            return self.b(_patch_merging_pad(self.a(x)))

    torch.manual_seed(0)
    model, x = M().eval(), torch.randn(2, 6, 6, 4)
    p = plan(model, x, amount=0.5)
    assert any("does not compute Swin's patch merging" in u.why for u in p.unprunable)
    assert p.apply().a.out_features == 8


def test_window_attention_called_unlike_torchvision_is_refused():
    class Odd(ShiftedWindowAttention):
        def forward(self, x, scale=1.0):
            return reference(x, self) * scale

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 16)
            self.attn = Odd(16, [4, 4], [0, 0], 4)
            self.attn.__class__.__name__ = "ShiftedWindowAttention"

        def forward(self, x):
            return self.attn(self.a(x), 2.0)

    torch.manual_seed(0)
    model, x = M().eval(), torch.randn(1, 4, 4, 4)
    p = plan(model, x, amount=0.5)
    assert any(u.module == "attn" and "unlike torchvision" in u.why for u in p.unprunable)
    small = p.apply()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), atol=1e-6, rtol=1e-6)


def test_window_attention_with_another_forward_is_refused():
    """Matched by class name, then checked: a ShiftedWindowAttention whose forward computes
    something else keeps its widths (and the result stays exact)."""

    def halved(self, x):
        return 0.5 * reference(x, self) + x

    # the same class name as torchvision's, another forward
    Halved = type("ShiftedWindowAttention", (ShiftedWindowAttention,), {"forward": halved})

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 16)
            self.attn = Halved(16, [4, 4], [2, 2], 4)

        def forward(self, x):
            return self.attn(self.a(x))

    torch.manual_seed(0)
    model, x = randomize(M()).eval(), torch.randn(1, 8, 8, 4)
    p = plan(model, x, amount=0.5, protect_output=False)
    assert any(u.module == "attn" and "does not compute" in u.why for u in p.unprunable)
    small = p.apply()
    with torch.no_grad():
        torch.testing.assert_close(small(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)
