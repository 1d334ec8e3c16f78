"""The front door: prune(), Pruner, remove(); exact counts, errors, acceptance scenario."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from sparseprune.pruning import Cubic, Geometric, Pruner, prune, remove


def _layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d,
                                                         nn.Conv3d))]


def _mask(module: nn.Module, name: str = "weight") -> torch.Tensor:
    buf = getattr(module, f"{name}_mask", None)
    return torch.ones_like(getattr(module, name), dtype=torch.bool) if buf is None else buf.bool()


def _pruned_total(model: nn.Module) -> tuple[int, int]:
    masks = [_mask(m) for m in _layers(model)]
    return sum(int((~k).sum()) for k in masks), sum(k.numel() for k in masks)


def _same_scale(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-draw weights from one distribution, so global magnitude pruning spreads over layers
    (with PyTorch's fan-in-scaled init a tiny CNN loses a whole layer at 90 %)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in _layers(model):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.1)
    return model


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
def test_per_layer_counts_are_exact(make_cnn, sparsity):
    model = make_cnn(0)
    report = prune(model, sparsity, scope="layer", protect=None)
    for layer, row in zip(_layers(model), report.layers, strict=True):
        assert int((~_mask(layer)).sum()) == row.pruned == round(sparsity * layer.weight.numel())
    if sparsity == 0.0:
        assert not any(hasattr(m, "weight_mask") for m in _layers(model))  # left untouched


def test_repruning_keeps_earlier_zeros(make_mlp):
    model = make_mlp(0)
    prune(model, 0.5, protect=None)
    first = [_mask(m).clone() for m in _layers(model)]
    with torch.no_grad():  # make pruned weights look important: they must stay pruned anyway
        for m in _layers(model):
            m.weight_orig.add_(10.0 * (~_mask(m)))
    report = prune(model, 0.8, protect=None)
    for m, before in zip(_layers(model), first, strict=True):
        assert not (_mask(m) & ~before).any()
    assert report.pruned == round(0.8 * report.numel)
    hooks = [len(next(iter(m._forward_pre_hooks.values()))) for m in _layers(model)]
    lower = prune(model, 0.3, protect=None)  # a lower target never revives weights
    assert lower.pruned == report.pruned
    # ... and, changing nothing, adds nothing to the PruningContainer histories.
    assert [len(next(iter(m._forward_pre_hooks.values()))) for m in _layers(model)] == hooks


@pytest.mark.parametrize("make", ["make_mlp", "make_cnn"])
def test_geometric_five_rounds_reach_exact_global_90(make, request):
    """Acceptance: 5 geometric rounds with fine-tuning between them reach exactly 90 %."""
    model = _same_scale(request.getfixturevalue(make)(0))
    shape = (8, 64) if make == "make_mlp" else (8, 3, 8, 8)
    x, y = torch.randn(shape), torch.randint(0, 10, (8,))
    pruner = Pruner(model, 0.9, schedule="geometric", steps=5, scope="global", protect=None)
    assert pruner.schedule == Geometric(0.9, 5)
    history = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no layer collapses with same-scale weights
        while not pruner.done:
            report = pruner.step()
            pruned, total = _pruned_total(model)
            assert pruned == report.pruned == round(pruner.sparsity * total)
            history.append(tuple(_mask(m).clone() for m in _layers(model)))
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
            for _ in range(2):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
    assert pruner.step_count == 5 and report.step == 5
    assert _pruned_total(model)[0] == round(0.9 * _pruned_total(model)[1])
    for earlier, later in zip(history, history[1:], strict=False):
        for a, b in zip(earlier, later, strict=True):
            assert not (b & ~a).any()  # pruned weights stay pruned through training
    assert pruner.step() is report  # past the end: nothing more happens
    assert _pruned_total(model)[0] == report.pruned


def test_pruner_default_protection_reports_total_and_pool(make_cnn):
    model = _same_scale(make_cnn(0))
    pruner = Pruner(model, 0.9, steps=3)
    while not pruner.done:
        report = pruner.step()
    pool = [r for r in report.layers if r.reason == "pool"]
    assert sum(r.pruned for r in pool) == round(0.9 * sum(r.numel for r in pool))
    assert report.protected == ["features.0", "fc"]
    fc = next(r for r in report.layers if r.name == "fc")
    assert fc.pruned == round(0.45 * fc.numel)
    assert report.total_sparsity < 0.9


def test_pruner_gradual_nm_ends_on_exact_nm(make_mlp):
    model = make_mlp(0)
    pruner = Pruner(model, schedule=Cubic(0.5, 3), pattern="2:4", protect=None)
    while not pruner.done:
        pruner.step()
    for m in _layers(model):
        assert (_mask(m).reshape(m.weight.shape[0], -1, 4).sum(-1) == 2).all()


def test_pruner_layer_sparsity_follows_the_schedule(make_mlp):
    model = make_mlp(0)
    pruner = Pruner(model, 0.8, schedule="linear", steps=2, scope="layer", protect=None,
                    layer_sparsity={"4": 0.4})
    first = pruner.step()
    assert [r.target for r in first.layers] == pytest.approx([0.4, 0.4, 0.2])
    last = pruner.step()
    assert [r.target for r in last.layers] == pytest.approx([0.8, 0.8, 0.4])
    assert last.layers[2].pruned == round(0.4 * 320)


def test_pruner_validates_before_touching_the_model():
    model = nn.Sequential(nn.Linear(10, 8), nn.Linear(8, 4))
    with pytest.raises(ValueError, match=r"layer '0' \(Linear\) weight \[8, 10\]"):
        Pruner(model, pattern="2:4", protect=None)
    assert not hasattr(model[0], "weight_mask")
    with pytest.raises(ValueError, match="disagrees with the schedule's final"):
        Pruner(model, 0.5, schedule=Cubic(0.8, 3))
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        Pruner(model, 0.5, schedule="step")


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (1, 2)])
def test_nm_on_linear_conv1d_conv2d_conv3d(n, m):
    model = nn.Sequential(nn.Conv1d(8, 8, 3), nn.Conv2d(8, 8, 1), nn.Conv3d(8, 8, (1, 2, 2)),
                          nn.Linear(16, 8))
    prune(model, pattern=f"{n}:{m}", protect=None)
    for layer in model:
        groups = _mask(layer).reshape(layer.weight.shape[0], -1, m)
        assert (groups.sum(-1) == n).all(), layer


def test_nm_default_protection_spares_an_untileable_stem(make_cnn):
    model = make_cnn(0)  # stem weight [8, 3, 3, 3]: K = 27 is not a multiple of 4
    report = prune(model, pattern="2:4")
    assert report.protected == ["features.0", "fc"]
    assert [r.pruned for r in report.layers] == [0, 576, 128, 0]


def test_indivisible_layers_error_pad_or_skip():
    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(10, 8), nn.Linear(8, 4))

    with pytest.raises(ValueError, match=r"layer '0' \(Linear\) weight \[8, 10\]: 2:4 does not "
                                         r"tile shape \(8, 10\).*on_indivisible='pad'.*'skip'"):
        prune(make(), pattern="2:4", protect=None)
    model = make()
    report = prune(model, pattern="2:4", protect=None, on_indivisible="skip")
    assert report.skipped == ["0"] and not hasattr(model[0], "weight_mask")
    assert "skipped: 0" in str(report)
    model = make()
    prune(model, pattern="2:4", protect=None, on_indivisible="pad")
    assert (_mask(model[0])[:, :8].reshape(8, 2, 4).sum(-1) == 2).all()
    assert (_mask(model[0])[:, 8:].sum(-1) <= 2).all()


def test_any_module_with_a_chosen_parameter_name():
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.kernel = nn.Parameter(torch.randn(6, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.kernel.T

    model = nn.Sequential(Scale(), nn.ReLU())
    report = prune(model, 0.5, include=[Scale], param="kernel", protect=None)
    assert report.layers[0].name == "0" and report.layers[0].pruned == 24
    x = torch.randn(3, 8)
    kept = model[0].kernel_orig.detach() * model[0].kernel_mask
    assert torch.allclose(model(x), torch.relu(x @ kept.T))
    with pytest.raises(ValueError, match="matches modules without a parameter 'kernel'"):
        prune(nn.Sequential(nn.Linear(2, 2)), 0.5, include=["0"], param="kernel")


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"sparsity": 1.0}, ValueError, r"sparsity must be in \[0, 1\), got 1.0"),
        ({"sparsity": -0.2}, ValueError, r"sparsity must be in \[0, 1\), got -0.2"),
        ({"sparsity": "0.5"}, TypeError, "sparsity must be a float"),
        ({}, ValueError, "sparsity is required for pattern unstructured"),
        ({"sparsity": 0.5, "pattern": "2:5:4"}, ValueError, "unknown pattern '2:5:4'; valid"),
        ({"sparsity": 0.9, "pattern": "2:4"}, ValueError, "prunes exactly 0.5 .* sparsity=0.9"),
        ({"sparsity": 0.5, "pattern": "4:2"}, ValueError, r"1 <= N < M, got 4:2"),
        ({"sparsity": 0.5, "criterion": "grad"}, ValueError, "valid criterions: l1, l2, magni"),
        ({"sparsity": 0.5, "exclude": ["fc9"]}, ValueError, "exclude name 'fc9' matches no"),
        ({"sparsity": 0.5, "protect": 0.5}, TypeError, "protect must be a Protect"),
    ],
)
def test_helpful_errors_and_no_side_effects(make_mlp, kwargs, error, match):
    model = make_mlp(0)
    with pytest.raises(error, match=match):
        prune(model, **kwargs)
    assert not any(hasattr(m, "weight_mask") for m in _layers(model))


def test_a_fully_pruned_layer_warns():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    with torch.no_grad():
        model[1].weight.mul_(1e-3)
    with pytest.warns(UserWarning, match=r"fully pruned.*: 1.weight"):
        prune(model, 0.5, protect=None)


def test_report_table_and_dicts(make_cnn):
    report = prune(make_cnn(0), 0.5)
    rows = report.to_dicts()
    assert [r["name"] for r in rows] == ["features.0", "features.2", "features.4", "fc"]
    assert rows[1]["shape"] == [16, 8, 3, 3] and rows[1]["type"] == "Conv2d"
    text = str(report)
    assert "unstructured, magnitude, global scope, target 0.500" in text
    assert f"total sparsity {report.total_sparsity:.4f}" in text


def test_remove_after_prune(make_mlp):
    model = make_mlp(0)
    prune(model, 0.5, protect=None)
    expected = [m.weight_orig.detach() * m.weight_mask for m in _layers(model)]
    remove(model)
    for m, w in zip(_layers(model), expected, strict=True):
        assert isinstance(m.weight, nn.Parameter) and torch.equal(m.weight.detach(), w)
    # A removed model can be pruned again; its zeros are weights of magnitude 0, pruned first.
    report = prune(model, 0.6, protect=None)
    assert report.pruned == round(0.6 * report.numel)
    assert all(not (_mask(m) & (w == 0)).any() for m, w in zip(_layers(model), expected,
                                                                strict=True))
