import pytest
import torch

from sparseprune.pruning.masks import current_mask, masked_tensors
from sparseprune.workflow import find_lottery_ticket, reinitialize
from sparseprune.workflow._state import snapshot

from .conftest import tiny_mlp


def test_survivors_are_rewound_to_theta0_each_round(tuner):
    model = tiny_mlp()
    theta0 = snapshot(model)
    starts = []

    def train(m, epochs, lr_scale=1.0):
        starts.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        tuner.train(m, epochs, lr_scale)

    result = find_lottery_ticket(model, [0.5, 0.8], train, tuner.evaluate, epochs=2,
                                 control=False, progress=False)
    assert result.control is None and len(result.ticket.rounds) == 3
    # call 0 trains from θ0 (dense); calls 1 and 2 are the rounds: they start at θ0 * mask
    for start in starts[1:]:
        for key, value in start.items():
            if key.endswith("_orig"):
                assert torch.equal(value, theta0[key[: -len("_orig")]]), key
            elif not key.endswith("_mask"):
                assert torch.equal(value, theta0[key]), key
    assert [r.target for r in result.ticket.rounds] == [0.0, 0.5, 0.8]


def test_rewind_to_an_early_epoch(tuner):
    model = tiny_mlp()
    theta0 = snapshot(model)
    starts = []

    def train(m, epochs, lr_scale=1.0):
        starts.append((epochs, {k: v.clone() for k, v in m.state_dict().items()}))
        tuner.train(m, epochs, lr_scale)

    find_lottery_ticket(model, [0.5], train, tuner.evaluate, epochs=3, rewind_epoch=1,
                        control=False, progress=False)
    assert [e for e, _ in starts] == [1, 2, 2]
    theta1 = starts[1][1]  # weights after the first epoch
    assert not torch.equal(theta1["0.weight"], theta0["0.weight"])
    assert torch.equal(starts[2][1]["0.weight_orig"], theta1["0.weight"])
    with pytest.raises(ValueError, match="rewind_epoch"):
        find_lottery_ticket(tiny_mlp(), [0.5], train, tuner.evaluate, epochs=1, rewind_epoch=1)


def test_control_uses_the_same_masks_and_a_fresh_init(tuner):
    model = tiny_mlp()
    controls = []

    def train(m, epochs, lr_scale=1.0):
        if masked_tensors(m) and m is not model:
            controls.append(m)
        tuner.train(m, epochs, lr_scale)

    seen = {}
    result = find_lottery_ticket(
        model, [0.5, 0.8], train, tuner.evaluate, epochs=2, control=[0.8], progress=False,
        protect=None, on_round=lambda r, m: seen.setdefault(r.target, r.params))
    assert set(seen) == {0.5, 0.8}
    assert [r.target for r in result.control.rounds] == [0.0, 0.8]
    assert set(result.gap()) == {0.8}
    (ctrl,) = controls
    for a, b in zip(masked_tensors(model), masked_tensors(ctrl), strict=True):
        assert torch.equal(current_mask(a.module, a.param), current_mask(b.module, b.param))
    with pytest.raises(ValueError, match="not in the schedule"):
        find_lottery_ticket(tiny_mlp(), [0.5], train, tuner.evaluate, epochs=1, control=[0.7])


def test_reinitialize_is_seeded_and_does_not_touch_the_global_rng():
    torch.manual_seed(5)
    a = reinitialize(tiny_mlp(), 3)
    after_a = torch.rand(1)
    torch.manual_seed(5)
    b = reinitialize(tiny_mlp(), 3)
    after_b = torch.rand(1)
    assert torch.equal(a[0].weight, b[0].weight) and torch.equal(after_a, after_b)
    assert not torch.equal(reinitialize(tiny_mlp(), 4)[0].weight, a[0].weight)


class _WithEmbedding(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.pos = torch.nn.Parameter(torch.randn(4, 8) * 0.02)  # no reset method of its own
        self.attn = torch.nn.MultiheadAttention(8, 2)  # _reset_parameters, not reset_parameters
        self.norm = torch.nn.LayerNorm(8)
        self.fc = torch.nn.Linear(8, 3)


def test_reinitialize_redraws_every_randomly_initialized_parameter():
    torch.manual_seed(0)
    model = _WithEmbedding()
    theta0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    reinitialize(model, 7)
    for name, p in model.named_parameters():
        if theta0[name].unique().numel() > 1:  # constant inits (LayerNorm, zero biases) stay
            assert not torch.equal(p, theta0[name]), name
    assert 0.5 < float(model.pos.detach().std() / theta0["pos"].std()) < 2.0  # same scale


def test_control_starts_from_other_weights_than_theta0(tuner):
    model = tiny_mlp()
    theta0 = snapshot(model)
    starts = []

    def train(m, epochs, lr_scale=1.0):
        if m is not model:
            starts.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        tuner.train(m, epochs, lr_scale)

    find_lottery_ticket(model, [0.5], train, tuner.evaluate, epochs=1, progress=False)
    (start,) = starts
    for key, value in theta0.items():
        got = start.get(key, start.get(f"{key}_orig"))
        assert got is not None and not torch.equal(got, value), key
