"""Criteria: scores equal hand computations; data-aware criteria fail helpfully without data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseprune.pruning import CRITERIA, prune
from sparseprune.pruning.calibration import activation_norms, mean_gradients
from sparseprune.pruning.criteria import Context, Magnitude, Random, Taylor, Wanda, get_criterion
from sparseprune.pruning.masks import Target


def _linear(weight: list[list[float]]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight), bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
    return layer


def _ctx(layer: nn.Module, **kw) -> Context:
    w = layer.weight.detach()
    keep = torch.ones_like(w, dtype=torch.bool)
    return Context(name="layer", param="weight", weight=w, mask=keep, **kw)


W = [[1.0, -2.0, 3.0], [-4.0, 5.0, -0.5]]
BATCHES = [torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]), torch.tensor([[2.0, 2.0, 0.0]])]


def test_magnitude_l1_l2():
    layer = _linear(W)
    w = torch.tensor(W)
    assert torch.equal(CRITERIA["magnitude"]()(layer, _ctx(layer)), w.abs())
    assert torch.equal(CRITERIA["l1"]()(layer, _ctx(layer)), w.abs())
    assert torch.equal(CRITERIA["l2"]()(layer, _ctx(layer)), w**2)


def test_wanda_linear_equals_hand_computation():
    layer = _linear(W)
    norms = activation_norms(layer, [Target("", layer)], BATCHES)["weight"]
    # Column norms over all 3 calibration rows: sqrt(1+0+4), sqrt(0+1+4), sqrt(4+0+0).
    assert norms.tolist() == pytest.approx([5**0.5, 5**0.5, 2.0])
    scores = Wanda()(layer, _ctx(layer, act_norms=norms))
    expected = torch.tensor(W).abs() * torch.tensor([5**0.5, 5**0.5, 2.0])
    assert torch.allclose(scores, expected)


def test_wanda_through_prune_keeps_the_hand_ranked_weights():
    model = nn.Sequential(_linear(W))
    prune(model, 0.5, criterion="wanda", calibration=BATCHES, scope="layer", protect=None)
    # Scores: [2.24, 4.47, 6], [8.94, 11.18, 1]: the 3 lowest are 1, 2.24, 4.47.
    assert model[0].weight_mask.tolist() == [[0, 0, 1], [1, 1, 0]]


def test_wanda_sequence_inputs_flatten_all_but_the_feature_dim():
    layer = _linear(W)
    x = torch.arange(12.0).reshape(2, 2, 3)  # [B, L, I]
    norms = activation_norms(layer, [Target("", layer)], [x])["weight"]
    assert torch.allclose(norms, x.reshape(-1, 3).double().norm(dim=0))


def test_wanda_grouped_conv_maps_each_output_to_its_group_channels():
    conv = nn.Conv2d(4, 2, kernel_size=1, groups=2, bias=False)
    x = torch.arange(16.0).reshape(1, 4, 2, 2)
    norms = activation_norms(conv, [Target("", conv)], [(x, None)])["weight"]
    channel = x.double().square().sum((0, 2, 3)).sqrt()
    assert torch.allclose(norms, channel)
    scores = Wanda()(conv, _ctx(conv, act_norms=norms))
    w = conv.weight.detach().abs().reshape(2, 2)
    expected = torch.stack([w[0] * channel[:2], w[1] * channel[2:]]).float()
    assert torch.allclose(scores.reshape(2, 2), expected)


def test_taylor_equals_hand_computed_mean_gradient():
    layer = _linear(W)
    batches = [(BATCHES[0], torch.tensor([[1.0, 0.0], [0.0, 1.0]])),
               (BATCHES[1], torch.tensor([[3.0, -1.0]]))]

    def loss_fn(out, y):
        return 0.5 * ((out - y) ** 2).sum()

    grads = mean_gradients(layer, [Target("", layer)], batches, loss_fn)["weight"]
    w = torch.tensor(W)
    # d/dW of 0.5 * ||X W^T - Y||^2 is (X W^T - Y)^T X; averaged over the two batches.
    hand = sum((x @ w.T - y).T @ x for x, y in batches) / 2
    assert torch.allclose(grads, hand)
    assert layer.weight.grad is None  # autograd.grad leaves .grad alone
    scores = Taylor()(layer, _ctx(layer, grad=grads))
    assert torch.allclose(scores, (w * hand).abs())


def test_taylor_through_prune_on_a_masked_layer_keeps_masked_weights_pruned():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    prune(model, 0.5, protect=None)
    before = model[0].weight_mask.clone()
    data = [(torch.randn(5, 8), torch.randn(5, 4)) for _ in range(3)]
    prune(model, 0.75, criterion="taylor", calibration=data, loss_fn=nn.functional.mse_loss,
          protect=None)
    after = model[0].weight_mask
    assert int((after == 0).sum()) == 24 and not (after.bool() & ~before.bool()).any()


def test_random_is_seeded():
    layer = _linear(W)
    a = Random()(layer, _ctx(layer, generator=torch.Generator().manual_seed(1)))
    b = Random()(layer, _ctx(layer, generator=torch.Generator().manual_seed(1)))
    c = Random()(layer, _ctx(layer, generator=torch.Generator().manual_seed(2)))
    assert torch.equal(a, b) and not torch.equal(a, c)
    m1, m2 = nn.Sequential(nn.Linear(16, 16)), nn.Sequential(nn.Linear(16, 16))
    prune(m1, 0.5, criterion="random", seed=3, protect=None)
    prune(m2, 0.5, criterion="random", seed=3, protect=None)
    assert torch.equal(m1[0].weight_mask, m2[0].weight_mask)


def test_user_criterion_is_any_callable():
    model = nn.Sequential(_linear(W))

    def largest_first(module, ctx):  # prune the biggest weights: the opposite of magnitude
        return -ctx.weight.abs()

    prune(model, 0.5, criterion=largest_first, protect=None)
    assert model[0].weight_mask.tolist() == [[1, 1, 0], [0, 0, 1]]  # 5, 4, 3 pruned


def test_data_aware_criteria_need_data():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="'wanda' needs calibration data"):
        prune(model, 0.5, criterion="wanda")
    with pytest.raises(ValueError, match="'taylor' needs loss_fn"):
        prune(model, 0.5, criterion="taylor", calibration=[(torch.ones(1, 4), torch.ones(1, 4))])
    with pytest.raises(ValueError, match="needs calibration activations"):
        Wanda()(model[0], _ctx(model[0]))
    gen = (torch.ones(1, 4) for _ in range(1))
    list(gen)  # exhausted: a generator cannot be iterated twice
    with pytest.raises(ValueError, match="no batches"):
        prune(model, 0.5, criterion="wanda", calibration=gen)
    assert not hasattr(model[0], "weight_mask")  # nothing modified on error


def test_unknown_criterion_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown criterion 'snip'; valid criterions: l1, l2, "
                                         "magnitude, random, sparsegpt, taylor, wanda"):
        get_criterion("snip")
    assert isinstance(get_criterion("Magnitude"), Magnitude)


def test_bad_user_scores_name_the_layer():
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"shape \[3\] for layer '0' \(Linear\) weight \[3, 4\]"):
        prune(model, 0.5, criterion=lambda m, ctx: ctx.weight[:, 0], protect=None)
    with pytest.raises(ValueError, match="NaN scores for layer '0'"):
        prune(model, 0.5, criterion=lambda m, ctx: ctx.weight * float("nan"), protect=None)
