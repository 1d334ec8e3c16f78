"""One-shot LLM-style pruning: Wanda's per-row comparison group, sequential (layer-by-layer)
calibration, dict batches, and include globs that also cover LayerNorms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseprune.pruning import prune
from sparseprune.pruning.calibration import activation_norms, stages
from sparseprune.pruning.masks import Target, current_mask
from sparseprune.pruning.scope import row_mask


class Block(nn.Module):
    """A transformer-shaped block: q/k/v read one input, then an output projection and an MLP."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        att = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2) * scale, -1) @ self.v(x)
        h = self.norm(x + self.o(att))
        return h + self.down(torch.relu(self.up(h)))


def _batches(n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 5, 16, generator=g) * torch.linspace(0.1, 3, 16) for _ in range(n)]


def test_wanda_defaults_to_the_per_row_comparison_group():
    torch.manual_seed(0)
    model = Block()
    report = prune(model, 0.5, criterion="wanda", calibration=_batches(), protect=None)
    assert report.scope == "row"
    for layer in (model.q, model.up, model.down):
        kept = current_mask(layer, "weight")
        assert bool((kept.sum(1) == kept.shape[1] // 2).all())


def test_row_mask_prunes_each_row_exactly_and_row_scope_refuses_blocks():
    scores = torch.tensor([[1.0, 5.0, 3.0, 2.0], [9.0, 8.0, 7.0, 6.0]])
    assert torch.equal(row_mask(scores, 0.5),
                       torch.tensor([[False, True, True, False], [True, True, False, False]]))
    with pytest.raises(ValueError, match="scope='row' compares weights within an output row"):
        prune(Block(), 0.5, pattern="block4x1", scope="row", protect=None)


def test_stages_group_layers_fed_the_same_input_in_execution_order():
    model = Block()
    targets = [Target(n, m) for n, m in model.named_children() if isinstance(m, nn.Linear)]
    names = [t.name for t in targets]
    order = stages(model, targets, _batches(1))
    assert [[names[i] for i in g] for g in order.groups] == [["q", "k", "v"], ["o"], ["up"],
                                                            ["down"]]
    assert order.stop_early


def test_a_module_run_twice_turns_early_stopping_off():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    order = stages(model, [Target("0", shared)], [torch.randn(2, 4)])
    assert not order.stop_early


def test_sequential_wanda_calibrates_each_layer_on_the_pruned_predecessors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 6))
    reference = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 6))
    reference.load_state_dict(model.state_dict())
    data = [torch.randn(16, 8) for _ in range(3)]
    prune(model, 0.5, criterion="wanda", calibration=data, protect=None, sequential=True)
    # By hand: layer 0 from the dense inputs, layer 2 from the *pruned* layer 0's outputs.
    norms0 = torch.cat(data).norm(dim=0)
    keep0 = row_mask(reference[0].weight.abs() * norms0, 0.5)
    assert torch.equal(current_mask(model[0], "weight"), keep0)
    with torch.no_grad():
        reference[0].weight.mul_(keep0)
        hidden = torch.relu(reference[0](torch.cat(data)))
    keep2 = row_mask(reference[2].weight.abs() * hidden.norm(dim=0), 0.5)
    assert torch.equal(current_mask(model[2], "weight"), keep2)
    # The one-pass default scores layer 2 on the dense hidden norms: a different mask here.
    torch.manual_seed(0)
    one_pass = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 6))
    prune(one_pass, 0.5, criterion="wanda", calibration=data, protect=None)
    assert not torch.equal(current_mask(one_pass[2], "weight"), keep2)


def test_stage_collection_stops_before_later_layers():
    model = Block()
    runs = []
    model.down.register_forward_pre_hook(lambda m, a: runs.append(1))
    targets = [Target("q", model.q), Target("k", model.k)]
    activation_norms(model, targets, _batches(2), stop_early=True)
    assert runs == []
    activation_norms(model, targets, _batches(2))
    assert len(runs) == 2


def test_dict_batches_are_keyword_inputs():
    torch.manual_seed(0)
    model = Block()
    data = [{"x": b, "scale": 0.5} for b in _batches()]
    report = prune(model, 0.5, criterion="sparsegpt", calibration=data, protect=None)
    assert report.total_sparsity == pytest.approx(0.5)


def test_include_glob_over_layernorms_prunes_linears_and_names_the_rest():
    torch.manual_seed(0)
    model = nn.Module()
    model.encoder = nn.Sequential(Block(), Block())
    model.embed = nn.Embedding(10, 16)
    report = prune(model.encoder, 0.5, criterion="wanda", include=["*"], protect=None,
                   calibration=_batches())
    assert {r.type for r in report.layers} == {"Linear"}
    assert [n for n, _ in report.ignored] == ["0.norm", "1.norm"]
    assert "not pruned (matched by include, not a Linear/Conv layer): 0.norm, 1.norm" in str(
        report)
    # Naming a module exactly still prunes it, whatever its type.
    explicit = prune(model, 0.5, include=["embed"], protect=None)
    assert [r.name for r in explicit.layers] == ["embed"]
    with pytest.raises(ValueError, match="match no Linear/Conv layer"):
        prune(model, 0.5, include=["encoder.*.norm"], protect=None)


def test_sequential_needs_layer_inputs_and_a_per_layer_scope():
    with pytest.raises(ValueError, match="uses no layer inputs"):
        prune(Block(), 0.5, sequential=True, scope="layer", protect=None)
    with pytest.raises(ValueError, match="cannot rank weights across layers"):
        prune(Block(), 0.5, criterion="wanda", calibration=_batches(), scope="global",
              sequential=True)
