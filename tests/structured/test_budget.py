"""Budgets (channels, MACs, parameters), floors, rounding and argument errors."""

import pytest
import torch

from sparseprune.structured import count_macs, count_params, plan

from .models import MobileNetV2, ResNet18, randomize_bn


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = randomize_bn(ResNet18(width=32))
    x = torch.randn(1, 3, 32, 32)
    return model, x, plan(model, x, amount=0.0).graph


@pytest.fixture(scope="module")
def resnet_macs(resnet):
    model, x, _ = resnet
    return count_macs(model, x)


@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("metric,value", [("macs", 0.5), ("macs", 0.3), ("params", 0.4)])
def test_budget_met_within_a_few_percent(resnet, resnet_macs, metric, value, scope):
    model, x, graph = resnet
    p = plan(model, x, graph=graph, scope=scope, **{metric: value})
    small = p.apply()
    if metric == "macs":
        ratio = count_macs(small, x) / resnet_macs
    else:
        ratio = count_params(small) / count_params(model)
    assert value * 0.95 <= ratio <= value + 1e-6, (metric, value, scope, ratio)


def test_absolute_budget(resnet):
    model, x, graph = resnet
    p = plan(model, x, graph=graph, params=1_000_000)
    assert 950_000 <= count_params(p.apply()) <= 1_000_000


def test_widths_round_to_16_and_hold_floors(resnet):
    model, x, graph = resnet
    p = plan(model, x, graph=graph, macs=0.2, scope="global", importance="random",
             round_to=16, min_channels=16)
    for _name, before, after in p.widths():
        assert after % 16 == 0 or after == before
        assert after >= max(16, before // 8)


def test_global_pruning_does_not_collapse_a_layer(resnet):
    """One layer with tiny weights would be wiped out by a raw global ranking."""
    model, x, graph = resnet
    with torch.no_grad():
        model.layers[6].conv1.weight.mul_(1e-3)
    try:
        p = plan(model, x, graph=graph, amount=0.6, scope="global", importance="l2")
        widths = {n: (b, a) for n, b, a in p.widths()}
        b, a = widths["layers.6.conv1"]
        assert a >= b // 8 and a >= 16 and b == 256
    finally:
        with torch.no_grad():
            model.layers[6].conv1.weight.mul_(1e3)


def test_exact_channel_amount_without_rounding():
    torch.manual_seed(0)
    model = MobileNetV2()
    x = torch.randn(1, 3, 32, 32)
    p = plan(model, x, amount=0.3, round_to=1, min_channels=1)
    assert p.after["channels"] == pytest.approx(0.7 * p.before["channels"], rel=0.02)


@pytest.mark.parametrize("amount", [1.0, 1.5, -0.1])
def test_bad_amount(resnet, amount):
    model, x, graph = resnet
    with pytest.raises(ValueError, match="amount must be in"):
        plan(model, x, graph=graph, amount=amount)


def test_exactly_one_budget(resnet):
    model, x, graph = resnet
    with pytest.raises(ValueError, match="exactly one budget"):
        plan(model, x, graph=graph, amount=0.5, macs=0.5)
    with pytest.raises(ValueError, match="exactly one budget"):
        plan(model, x, graph=graph)


def test_unreachable_budget_names_the_floor(resnet):
    model, x, graph = resnet
    with pytest.raises(ValueError, match="unreachable"):
        plan(model, x, graph=graph, macs=0.001)


def test_plan_text_names_groups_and_kept_ops(resnet):
    model, x, graph = resnet
    text = str(plan(model, x, graph=graph, amount=0.5))
    assert "layers.6.conv1" in text and "256" in text and "128" in text
    assert "model output (protect_output=True)" in text


def test_mobilenetv2_amount_prunes_every_group_like_torch_pruning():
    """amount=0.5 with the default floors (none but 1/8 of a width) and no rounding: every
    prunable group keeps half of its width (Torch-Pruning's "50 % of channels"): expansion
    channels, residual-tied block outputs, the stem and the last 1x1 conv alike; only the
    classifier output is kept. With round_to=16 every width is a multiple of 16 (or the floor
    of 16 holds it)."""
    torch.manual_seed(0)
    model = randomize_bn(MobileNetV2(classes=1000, table=MobileNetV2.FULL))
    x = torch.randn(1, 3, 64, 64)
    p = plan(model, x, amount=0.5)
    widths = {name: (before, after) for name, before, after in p.widths()}
    for name, (before, after) in widths.items():
        assert abs(after - before / 2) <= 1, (name, before, after)
    assert widths["features.0.0"] == (32, 16) and widths["features.18.0"] == (1280, 640)
    assert [u.why for u in p.unprunable] == ["model output (protect_output=True)"]
    assert p.after["channels"] <= 0.5 * p.before["channels"]
    assert p.before["macs"] / p.after["macs"] > 3.4  # 3.48x here, 3.61x at 224x224 (as TP)
    p16 = plan(model, x, amount=0.5, round_to=16, min_channels=16)
    for name, before, after in p16.widths():
        half = 16 * max(1, round(before / 2 / 16))
        assert after % 16 == 0 and after <= max(16, half), (name, before, after)
        if before >= 32:
            assert after < before, (name, before, after)
    assert p16.before["macs"] / p16.after["macs"] > 3.1  # 3.29x at 224x224
