"""Every test model prunes, equals its masked equivalent and keeps its output shape."""

import pytest
import torch

from sparseprune.structured import count_params, plan

from .models import MODELS, randomize_bn


@pytest.fixture(scope="module", params=sorted(MODELS))
def case(request):
    torch.manual_seed(0)
    factory, make_input = MODELS[request.param]
    model = randomize_bn(factory())
    x = make_input()
    p = plan(model, x, amount=0.5, round_to=1, min_channels=1)
    return request.param, model, x, p


def test_pruned_equals_masked(case):
    name, model, x, p = case
    small = p.apply()
    with torch.no_grad():
        ref = model(x)
        got = small(x)
        masked = p.masked_model()(x)
    assert got.shape == ref.shape, name
    torch.testing.assert_close(got, masked, atol=1e-5, rtol=1e-5)
    assert count_params(small) < count_params(model), name


def test_channels_actually_removed(case):
    name, _model, _x, p = case
    assert p.after["channels"] <= 0.5 * p.before["channels"] + 1, name
    assert p.after["macs"] < p.before["macs"], name


def test_original_untouched(case):
    name, model, x, p = case
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p.apply()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), (name, k)


def test_apply_twice_same_result(case):
    _name, _model, x, p = case
    a, b = p.apply(), p.apply()
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)


def test_zero_amount_is_identity(case):
    name, model, x, _p = case
    p0 = plan(model, x, amount=0.0, graph=_p.graph)
    small = p0.apply()
    assert count_params(small) == count_params(model), name
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), atol=0, rtol=0)


def test_pruning_a_pruned_model_again(case):
    """Re-planning the pruned model keeps it exact and never goes under the floors."""
    name, _model, x, p = case
    small = p.apply()
    p2 = plan(small, x, amount=0.3, round_to=1, min_channels=1)
    smaller = p2.apply()
    with torch.no_grad():
        torch.testing.assert_close(smaller(x), p2.masked_model()(x), atol=1e-5, rtol=1e-5)
    for g in p2.graph.groups:
        assert p2.kept_units(g) >= max(1, -(-len(g) // 8)), (name, g.name)
