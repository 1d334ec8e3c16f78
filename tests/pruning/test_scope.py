"""Scopes: target selection, per-layer rates, protection, global == torch global_unstructured."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from sparseprune.pruning import NM, Channel, Protect, prune
from sparseprune.pruning.scope import plan_rates, select_targets


def _pruned(module: nn.Module) -> int:
    mask = getattr(module, "weight_mask", None)  # a layer nothing was pruned from stays plain
    return 0 if mask is None else int((mask == 0).sum())


def test_default_targets_are_linear_and_conv_weights(make_cnn):
    model = nn.Sequential(make_cnn(0), nn.Conv1d(2, 2, 3), nn.Conv3d(2, 2, 1), nn.BatchNorm1d(2),
                          nn.ConvTranspose2d(2, 2, 3))
    names = [t.name for t in select_targets(model)]
    assert names == ["0.features.0", "0.features.2", "0.features.4", "0.fc", "1", "2"]


def test_include_exclude_by_name_type_glob_and_predicate(make_cnn):
    model = make_cnn(0)
    assert [t.name for t in select_targets(model, exclude=["features"])] == ["fc"]
    assert [t.name for t in select_targets(model, exclude=["features.[02]"])] == [
        "features.4", "fc"]
    assert [t.name for t in select_targets(model, include=[nn.Linear])] == ["fc"]
    assert [t.name for t in select_targets(model, include=["fc"], param="bias")] == ["fc"]
    pred = select_targets(model, include=lambda n, m: isinstance(m, nn.Conv2d) and m.groups == 1)
    assert len(pred) == 3
    with pytest.raises(ValueError, match=r"exclude name 'classifier' matches no prunable layer; "
                                         r"prunable layers: 'features.0', 'features.2'"):
        select_targets(model, exclude=["classifier"])
    with pytest.raises(ValueError, match="include name 'head' matches no module"):
        select_targets(model, include=["head"])
    with pytest.raises(ValueError, match="no layers left to prune"):
        select_targets(model, exclude=["features", "fc"])


def test_layer_sparsity_dict_and_function(make_cnn):
    model = make_cnn(0)
    report = prune(model, 0.5, scope="layer", protect=None,
                   layer_sparsity={"fc": 0.9, "features.*": 0.25})
    assert [(r.name, r.target) for r in report.layers] == [
        ("features.0", 0.25), ("features.2", 0.25), ("features.4", 0.25), ("fc", 0.9)]
    for r in report.layers:
        assert r.pruned == round(r.target * r.numel)

    model = make_cnn(0)
    prune(model, 0.5, scope="layer", protect=None,
          layer_sparsity=lambda name, m: 0.75 if isinstance(m, nn.Linear) else None)
    assert _pruned(model.fc) == round(0.75 * 640) and _pruned(model.features[2]) == 576
    with pytest.raises(ValueError, match="layer_sparsity key 'head' matches no prunable layer"):
        prune(make_cnn(0), 0.5, layer_sparsity={"head": 0.5})
    with pytest.raises(ValueError, match=r"layer_sparsity\['fc'\] must be in \[0, 1\), got 1.2"):
        prune(make_cnn(0), 0.5, layer_sparsity={"fc": 1.2})


def test_protect_defaults_first_conv_dense_last_linear_half(make_cnn, make_mlp):
    report = prune(make_cnn(0), 0.8, scope="layer")
    by_name = {r.name: r for r in report.layers}
    assert by_name["features.0"].pruned == 0 and "first conv" in by_name["features.0"].reason
    assert by_name["fc"].target == pytest.approx(0.4) and by_name["fc"].pruned == 256
    assert report.protected == ["features.0", "fc"]
    assert report.total_sparsity < 0.8 and report.pool_sparsity == pytest.approx(0.8, abs=1e-3)
    assert "protected: features.0, fc" in str(report)
    # An MLP has no conv: only its classifier is protected.
    assert prune(make_mlp(0), 0.8).protected == ["4"]
    # Configurable: both dense, or none.
    report = prune(make_cnn(0), 0.8, protect=Protect(first=0.0, last=0.0))
    assert [r.pruned for r in report.layers if r.name in ("features.0", "fc")] == [0, 0]
    assert prune(make_cnn(0), 0.8, protect=None).protected == []
    with pytest.raises(ValueError, match=r"Protect.last must be in \[0, 1\]"):
        Protect(last=2.0)


def test_protect_with_nm_or_output_channels_keeps_protected_layers_dense(make_mlp):
    targets = select_targets(make_mlp(0))
    plans = plan_rates(targets, 0.5, protect=Protect(), pattern=NM(2, 4))
    assert [p.rate for p in plans] == [None, None, 0.0]
    # Channel(0) on the classifier would delete classes; Channel(1) (its inputs) is fine.
    plans = plan_rates(targets, 0.5, protect=Protect(), pattern=Channel(0))
    assert [p.rate for p in plans] == [None, None, 0.0]
    plans = plan_rates(targets, 0.5, protect=Protect(), pattern=Channel(1))
    assert [p.rate for p in plans] == [None, None, 0.25]


@pytest.mark.parametrize("sparsity", [0.3, 0.6, 0.8])
def test_global_equals_torch_global_unstructured(make_cnn, sparsity):
    ours, ref = make_cnn(0), make_cnn(0)
    report = prune(ours, sparsity, scope="global", protect=None)
    params = [(m, "weight") for m in ref.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    torch_prune.global_unstructured(params, torch_prune.L1Unstructured, amount=sparsity)
    mods = [m for m in ours.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for a, (b, _) in zip(mods, params, strict=True):
        assert torch.equal(a.weight_mask, b.weight_mask)
    assert report.pruned == round(sparsity * report.numel)  # one count over the total


def test_global_ties_are_deterministic_and_exact():
    def make():
        model = nn.Sequential(nn.Linear(3, 5, bias=False), nn.Linear(5, 2, bias=False))
        with torch.no_grad():
            for layer in model:
                layer.weight.fill_(1.0)  # every score ties
        return model

    a, b = make(), make()
    prune(a, 0.4, scope="global", protect=None)
    prune(b, 0.4, scope="global", protect=None)
    assert _pruned(a[0]) + _pruned(a[1]) == round(0.4 * 25)
    # Ties go to layer order, then flat index: the first 10 weights of layer 0.
    assert _pruned(a[0]) == 10 and a[0].weight_mask.reshape(-1)[:10].sum() == 0
    assert torch.equal(a[0].weight_mask, b[0].weight_mask)
    assert not hasattr(a[1], "weight_mask")  # nothing pruned there: left a plain Parameter


def test_global_blocks_prune_exact_block_count(make_mlp):
    model = make_mlp(0)
    report = prune(model, 0.75, pattern="block2x4", protect=None)
    assert report.scope == "global"
    blocks = sum(r.numel // 8 for r in report.layers)
    assert report.pruned == 8 * round(0.75 * blocks)


def test_global_scope_refuses_nm_and_default_scope_per_pattern(make_mlp):
    with pytest.raises(ValueError, match="2:4 keeps a fixed share .* use scope='layer'"):
        prune(make_mlp(0), pattern="2:4", scope="global")
    assert prune(make_mlp(0), pattern="2:4").scope == "layer"
    assert prune(make_mlp(0), 0.5).scope == "global"
    assert prune(make_mlp(0), 0.5, pattern="channel").scope == "layer"
    with pytest.raises(ValueError, match="unknown scope 'local'; valid scopes: global, layer"):
        prune(make_mlp(0), 0.5, scope="local")


def test_a_lone_layer_is_not_protected():
    layer = nn.Linear(8, 4)
    report = prune(layer, 0.5)
    assert report.protected == [] and report.pruned == 16
    assert report.layers[0].name == "" and "weight  Linear" in str(report)
