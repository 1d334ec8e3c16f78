"""Masks: PyTorch's reparametrization, optimizer and state_dict survival, torch interop."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from sparseprune.pruning import MaskMethod, apply_mask, load_masked_state_dict, prune, remove
from sparseprune.pruning.masks import effective_weight, masked_tensors, pattern_label


def _weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def test_apply_mask_uses_pytorch_reparametrization():
    layer = nn.Linear(4, 3)
    weight = layer.weight
    keep = torch.rand(3, 4) > 0.5
    assert apply_mask(layer, "weight", keep, pattern="demo") is layer
    assert layer.weight_orig is weight  # the optimizer's Parameter object is kept
    assert layer.weight_mask.dtype == weight.dtype and torch.equal(layer.weight_mask.bool(), keep)
    assert "weight" not in dict(layer.named_parameters())
    assert torch_prune.is_pruned(layer)
    assert torch.equal(layer.weight, weight.detach() * keep)
    assert pattern_label(layer, "weight") == "demo"
    with pytest.raises(ValueError, match=r"mask shape \[4, 3\] does not match Linear.weight"):
        apply_mask(layer, "weight", keep.T)


def test_masks_and_together_and_hook_history_stays_small():
    layer = nn.Linear(8, 8)
    a, b = torch.rand(8, 8) > 0.3, torch.rand(8, 8) > 0.3
    apply_mask(layer, "weight", a)
    apply_mask(layer, "weight", b)
    assert torch.equal(layer.weight_mask.bool(), a & b)
    (hook,) = [h for h in layer._forward_pre_hooks.values()]
    assert isinstance(hook, torch_prune.PruningContainer)
    assert all(m._pending is None for m in hook)  # applied masks are not kept twice


def test_masks_survive_an_optimizer_step(make_mlp):
    model = make_mlp(0)
    prune(model, 0.8, scope="layer", protect=None)
    masks = [m.weight_mask.clone() for m, _ in _weights(model)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model(x)  # the pre-hook refreshes .weight
    for (module, _), before in zip(_weights(model), masks, strict=True):
        assert torch.equal(module.weight_mask, before)
        mask = module.weight_mask.bool()
        assert (module.weight[~mask] == 0).all()
        assert int((~mask).sum()) == round(0.8 * mask.numel())
        assert module.weight_orig.grad is not None


def test_state_dict_round_trip(make_mlp):
    model = make_mlp(0)
    prune(model, 0.7, protect=None)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer)
    assert {"0.weight_orig", "0.weight_mask"} <= set(state)

    fresh = make_mlp(1)  # different weights, not pruned
    load_masked_state_dict(fresh, state)
    x = torch.randn(4, 64)
    assert torch.equal(fresh(x), model(x))
    for a, b in zip(_weights(model), _weights(fresh), strict=True):
        assert torch.equal(a[0].weight_mask, b[0].weight_mask)
    # Masks still work after loading: more pruning keeps the loaded zeros.
    loaded = fresh[0].weight_mask.clone()
    prune(fresh, 0.9, protect=None)
    assert not (fresh[0].weight_mask.bool() & ~loaded.bool()).any()


def test_torch_first_then_ours(make_mlp):
    ours, ref = make_mlp(0), make_mlp(0)
    for model in (ours, ref):
        torch_prune.global_unstructured(_weights(model), torch_prune.L1Unstructured, amount=0.5)
    # ours continues to 0.8 in total; torch continues by pruning 60 % of the remaining.
    prune(ours, 0.8, scope="global", protect=None)
    torch_prune.global_unstructured(_weights(ref), torch_prune.L1Unstructured, amount=0.6)
    for (a, _), (b, _) in zip(_weights(ours), _weights(ref), strict=True):
        assert torch.equal(a.weight_mask, b.weight_mask)
    total = sum(m.weight_mask.numel() for m, _ in _weights(ours))
    assert sum(int((m.weight_mask == 0).sum()) for m, _ in _weights(ours)) == round(0.8 * total)
    remove(ours)  # torch's containers with our method inside are removed by torch's remove
    assert not torch_prune.is_pruned(ours)


def test_ours_first_then_torch(make_mlp):
    model = make_mlp(0)
    prune(model, 0.5, scope="layer", protect=None)
    ours = {id(m): m.weight_mask.clone() for m, _ in _weights(model)}
    for module, name in _weights(model):
        torch_prune.l1_unstructured(module, name, amount=0.5)  # 50 % of the remaining
    for module, _ in _weights(model):
        mask = module.weight_mask.bool()
        assert not (mask & ~ours[id(module)].bool()).any()  # our zeros are kept by torch
        assert int((~mask).sum()) == round(0.5 * mask.numel()) + round(
            0.5 * (mask.numel() - round(0.5 * mask.numel())))
        assert pattern_label(module, "weight") == "torch:L1Unstructured"
    for module, name in _weights(model):
        torch_prune.remove(module, name)
    assert not torch_prune.is_pruned(model)


def test_remove_makes_masks_permanent(make_cnn):
    model = make_cnn(0)
    prune(model, 0.6, protect=None)
    torch_prune.l1_unstructured(model.fc, "bias", amount=0.5)  # a torch mask on another tensor
    effective = {t.qualname: effective_weight(t.module, t.param) for t in masked_tensors(model)}
    assert remove(model) is model
    assert not torch_prune.is_pruned(model) and masked_tensors(model) == []
    params = dict(model.named_parameters())
    for qualname, value in effective.items():
        assert isinstance(params[qualname], nn.Parameter)
        assert torch.equal(params[qualname].detach(), value)
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())


def test_mask_method_applies_once():
    method = MaskMethod(torch.ones(2, 2, dtype=torch.bool))
    method.compute_mask(torch.ones(2, 2), torch.ones(2, 2))
    with pytest.raises(RuntimeError, match="applies its mask once"):
        method.compute_mask(torch.ones(2, 2), torch.ones(2, 2))
