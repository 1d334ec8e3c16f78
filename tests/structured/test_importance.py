"""Importance criteria: registry, BatchNorm fallback, Taylor gradients, custom callables."""

import numpy as np
import pytest
import torch
from torch import nn

from sparseprune.structured import IMPORTANCE, plan

from .models import VGG, randomize_bn


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))


@pytest.mark.filterwarnings("ignore:importance 'bn'")
@pytest.mark.parametrize("name", sorted(IMPORTANCE))
def test_every_criterion_plans_an_exact_model(name):
    torch.manual_seed(0)
    model = randomize_bn(VGG(width=16))
    x = torch.randn(2, 3, 16, 16)
    if name == "taylor":
        model(x).pow(2).mean().backward()
    p = plan(model, x, amount=0.5, importance=name, round_to=1, min_channels=1)
    torch.testing.assert_close(p.apply()(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)


def test_l2_removes_the_weakest_channels():
    model = small_net()
    with torch.no_grad():
        model[0].weight[:16].mul_(1e-3)
    p = plan(model, torch.randn(2, 4), amount=0.5, importance="l2", round_to=1, min_channels=1)
    kept = p.keep_of(p.graph.attachments[("0.weight", 0)].atoms)
    assert kept[16:].all() and not kept[:16].any()


def test_bn_without_batchnorm_warns_and_falls_back():
    with pytest.warns(UserWarning, match="no BatchNorm"):
        plan(small_net(), torch.randn(2, 4), amount=0.5, importance="bn", round_to=1,
             min_channels=1)


def test_bn_ties_warn_and_fall_back():
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 4, 1))
    with pytest.warns(UserWarning, match="equal"):
        plan(model, torch.randn(1, 3, 8, 8), amount=0.5, importance="bn", round_to=1,
             min_channels=1)


def test_taylor_without_gradients_is_a_clear_error():
    with pytest.raises(ValueError, match="backward"):
        plan(small_net(), torch.randn(2, 4), amount=0.5, importance="taylor", min_channels=1)


def test_custom_callable():
    def last_first(graph, group):
        return np.arange(len(group), dtype=np.float64)

    p = plan(small_net(), torch.randn(2, 4), amount=0.5, importance=last_first, round_to=1,
             min_channels=1)
    kept = p.keep_of(p.graph.attachments[("0.weight", 0)].atoms)
    assert kept[16:].all() and not kept[:16].any()


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown importance"):
        plan(small_net(), torch.randn(2, 4), amount=0.5, importance="l3")
