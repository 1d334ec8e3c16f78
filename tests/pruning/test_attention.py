"""nn.MultiheadAttention under prune: its input projection is a target of its own (like a
Linear's [3E, E] weight), masks follow torch.nn.utils.prune, data-aware criteria leave it out
with a reason."""

import torch
import torch.nn.functional as F
from torch import nn

from sparseprune import prune, remove
from sparseprune.pruning.report import planned
from sparseprune.pruning.scope import select_targets


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.embed(x)
        x = self.norm(x + self.attn(x, x, x, need_weights=False)[0])
        return self.head(x.mean(1))


def _block() -> Block:
    torch.manual_seed(0)
    return Block().eval()


def test_default_targets_include_the_input_projection():
    names = [t.qualname for t in select_targets(_block())]
    assert names == ["embed.weight", "attn.in_proj_weight", "attn.out_proj.weight", "head.weight"]
    # A parent container name covers the attention too.
    names = [t.qualname for t in select_targets(_block(), include=["attn"])]
    assert names == ["attn.in_proj_weight", "attn.out_proj.weight"]


def test_in_proj_weight_is_masked_the_torch_way_and_computes_masked():
    model = _block()
    report = prune(model, 0.75, scope="layer", protect=None)
    row = next(r for r in report.layers if r.param == "in_proj_weight")
    assert (row.name, row.shape, row.pruned) == ("attn", (96, 32), round(0.75 * 96 * 32))
    attn = model.attn
    assert "in_proj_weight_orig" in dict(attn.named_parameters())
    assert "in_proj_weight_mask" in dict(attn.named_buffers())
    x = torch.randn(2, 5, 32)
    w = attn.in_proj_weight_orig * attn.in_proj_weight_mask
    q, k, v = F.linear(x, w, attn.in_proj_bias).chunk(3, dim=-1)
    heads = [t.reshape(2, 5, 4, 8).transpose(1, 2) for t in (q, k, v)]
    want = attn.out_proj(F.scaled_dot_product_attention(*heads).transpose(1, 2).reshape(2, 5, 32))
    with torch.no_grad():
        torch.testing.assert_close(attn(x, x, x, need_weights=False)[0], want, rtol=1e-4,
                                   atol=1e-5)
    remove(model)
    assert isinstance(attn.in_proj_weight, nn.Parameter)
    assert int((attn.in_proj_weight == 0).sum()) == row.pruned


def test_n_m_patterns_tile_the_projection_rows():
    model = _block()
    prune(model, pattern="2:4", protect=None)
    groups = (model.attn.in_proj_weight_mask.reshape(96, 8, 4) != 0).sum(-1)
    assert bool((groups == 2).all())


def test_data_aware_criteria_leave_attention_out_with_the_reason():
    model = _block()
    report = prune(model, 0.5, criterion="wanda", calibration=[torch.randn(2, 5, 12)])
    assert "attn.in_proj_weight" in dict(report.ignored)
    assert "attn" not in [r.name for r in report.layers if r.param == "in_proj_weight"]
    assert "attn.out_proj.weight" in dict(report.ignored)
    assert "not pruned: attn.in_proj_weight (criterion 'wanda' needs the layer's input" in \
        str(report)
    assert not hasattr(model.attn, "in_proj_weight_mask")


def test_each_round_records_its_plan_on_the_module():
    model = _block()
    prune(model, 0.8)
    assert planned(model.head) == (0.4, "protected (last linear, x0.5)")
    assert planned(model.attn, "in_proj_weight") == (0.8, "pool")
    assert planned(model.norm) is None
