"""iterative_channel_prune: rounds of channel removal + fine-tuning, smaller model returned."""

import numpy as np
import pytest
import torch
from torch import nn

import sparseprune
from sparseprune.structured import count_params, plan
from sparseprune.workflow import FineTuneConfig, FineTuner, iterative_channel_prune
from sparseprune.workflow.data import Batches

from .conftest import blobs, tiny_mlp

OPTS = dict(round_to=1, min_channels=2)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_rounds_shrink_the_model_and_match_one_plan(tuner):
    torch.manual_seed(0)
    model = tiny_mlp()
    tuner.train(model, 3)
    before = _state(model)
    x = torch.randn(4, 8)
    small, h = iterative_channel_prune(model, x, 0.6, tuner.train, tuner.evaluate, steps=3,
                                       tolerance=None, progress=False, **OPTS)
    assert [r.target for r in h.rounds] == pytest.approx([0.0, 0.2, 0.4, 0.6])
    assert h.best == 3 and h.stopped == "target reached"
    sparsities = [r.sparsity for r in h.rounds]
    assert sparsities == sorted(sparsities) and sparsities[-1] > 0.5
    # physically smaller, with the widths a one-shot plan at the final amount gives
    ref = plan(model, x, amount=0.6, **OPTS).apply()
    assert [m.out_features for m in small if isinstance(m, nn.Linear)] == \
        [m.out_features for m in ref if isinstance(m, nn.Linear)]
    assert sum(p.numel() for p in small.parameters()) == h.final.params
    # the returned model is the evaluated one, and the input model is untouched
    assert tuner.evaluate(small) == pytest.approx(h.final.accuracy)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not sparseprune.pruning.masks.masked_tensors(small)


def test_batchnorm_cnn_equals_its_masked_rounds():
    x, y = blobs(256, features=8)
    xt, yt = blobs(128, features=8, seed=1)
    x, xt = x.reshape(-1, 2, 2, 2), xt.reshape(-1, 2, 2, 2)
    tuner = FineTuner(Batches(x, y, 32, shuffle=True), Batches(xt, yt, 128),
                      FineTuneConfig(lr=1e-2))
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 16, 1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Flatten(), nn.Linear(64, 3),
    )
    tuner.train(model, 3)
    small, h = iterative_channel_prune(model, xt[:2], [0.25, 0.5], tuner.train, tuner.evaluate,
                                       tolerance=None, progress=False, **OPTS)
    assert small[0].out_channels == 8 and small[4].num_features == 8
    assert small[7].in_features == 8 * 4
    assert tuner.evaluate(small) == pytest.approx(h.final.accuracy)
    assert h.final.accuracy > 50  # three easy blobs: fine-tuning keeps it far above chance


def test_tolerance_stops_and_keeps_the_last_good_round(tuner):
    torch.manual_seed(0)
    model = tiny_mlp()
    tuner.train(model, 3)
    calls = []

    def eval_fn(m):  # the second pruned round collapses
        calls.append(1)
        return 90.0 if len(calls) <= 2 else 10.0

    small, h = iterative_channel_prune(model, torch.randn(2, 8), [0.25, 0.5, 0.75],
                                       tuner.train, eval_fn, tolerance=1.0, progress=False,
                                       **OPTS)
    assert len(h.rounds) == 3 and h.best == 1 and "fell more than 1.0" in h.stopped
    assert small[0].out_features == 24  # the 25 % round: 32 -> 24

    def collapse(m):
        calls.append(1)
        return 90.0 if len(calls) == 4 else 0.0

    unpruned, h = iterative_channel_prune(model, torch.randn(2, 8), [0.5], tuner.train,
                                          collapse, progress=False, **OPTS)
    assert h.best == 0 and unpruned[0].out_features == 32


def test_bad_options(tuner):
    model = tiny_mlp()
    x = torch.randn(2, 8)
    args = (tuner.train, tuner.evaluate)
    with pytest.raises(ValueError, match="increase strictly"):
        iterative_channel_prune(model, x, [0.5, 0.3], *args)
    with pytest.raises(ValueError, match="increase strictly"):
        iterative_channel_prune(model, x, 1.0, *args)
    with pytest.raises(ValueError, match="steps"):
        iterative_channel_prune(model, x, 0.5, *args, steps=0)
    with pytest.raises(ValueError, match=r"does not take \['macs'\]"):
        iterative_channel_prune(model, x, 0.5, *args, macs=0.5)
    with pytest.raises(ValueError, match="random"):
        iterative_channel_prune(model, x, 0.5, *args, importance="random")
    with pytest.raises(ValueError, match="taylor"):
        iterative_channel_prune(model, x, 0.5, *args, importance="taylor")
    assert iterative_channel_prune(model, x, np.float32(0.25), *args, steps=1, tolerance=None,
                                   progress=False)[1].rounds[-1].target == 0.25
    torch.nn.utils.prune.l1_unstructured(model[0], "weight", 0.5)
    with pytest.raises(ValueError, match="unstructured|prune masks"):
        iterative_channel_prune(model, x, 0.5, *args)


def _one_step_train(model, epochs, lr_scale=1.0):
    opt = torch.optim.SGD(model.parameters(), lr=0.05 * lr_scale, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for _ in range(3 * epochs):
        x = torch.randn(2, 3, 32, 32, generator=g)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("name", ["vit", "vit_mha", "vit_rms", "mobilenetv2", "shufflenetv2"])
@pytest.mark.parametrize("scope", ["local", "global"])
def test_models_nest_and_stay_exact(name, scope):
    from tests.structured.models import MODELS, randomize_bn

    factory, example = MODELS[name]
    torch.manual_seed(0)
    model = randomize_bn(factory()).train()
    x = example()
    if x.shape[1:] != (3, 32, 32):
        x = torch.randn(2, 3, 32, 32)
    seen = []

    def eval_fn(m):  # records what it evaluated: the returned model must be the last one
        seen.append(m)
        return 1.0

    small, h = iterative_channel_prune(model, x, [0.25, 0.5], _one_step_train, eval_fn,
                                       tolerance=None, progress=False, round_to=1,
                                       min_channels=1, scope=scope)
    assert small is seen[-1] and h.best == 2
    # nested: the widths equal a one-shot plan's at 50 % on the same (trained) weights' shapes
    ref = plan(model, x, amount=0.5, round_to=1, min_channels=1, scope=scope)
    assert sum(p.numel() for p in small.parameters()) <= count_params(ref.apply())
    with torch.no_grad():
        assert torch.isfinite(small.eval()(x)).all()
    # no dead channel kept: a channel removed in round 1 was never brought back in round 2
    for name, m in small.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            rows = m.weight.detach().flatten(1).abs().sum(1)
            assert (rows > 0).all(), f"{name} kept {(rows == 0).sum()} zeroed channel(s)"
