import pytest
import torch

import sparseprune
from sparseprune.workflow import Sensitivity, sensitivity

from .conftest import tiny_mlp


def _result():
    # layer "a" is fragile, "b" (the big one) is tolerant, "c" in between
    return Sensitivity(layers=("a", "b", "c"), params=(100, 1000, 100),
                       rates=(0.5, 0.8, 0.9, 0.95), baseline=90.0,
                       scores=((85.0, 60.0, 40.0, 20.0), (90.0, 90.0, 89.5, 88.0),
                               (89.0, 87.0, 80.0, 70.0)))


@pytest.mark.parametrize("target", [0.5, 0.7, 0.8, 0.85])
def test_layer_rates_meet_the_target_and_spare_fragile_layers(target):
    res = _result()
    rates = res.layer_rates(target)
    total = sum(rates[n] * p for n, p in zip(res.layers, res.params, strict=True)) / \
        sum(res.params)
    assert total == pytest.approx(target, abs=1e-6)
    assert rates["a"] <= rates["c"] <= rates["b"]
    assert all(0.0 <= r < 1.0 for r in rates.values())


def test_layer_rates_beyond_the_tried_rates_raise():
    with pytest.raises(ValueError, match="higher rates"):
        _result().layer_rates(0.97)


def test_drop_curve_is_monotone_and_table_prints():
    res = Sensitivity(layers=("x",), params=(10,), rates=(0.5, 0.9), baseline=50.0,
                      scores=((45.0, 48.0),))
    assert res.drop(0) == [5.0, 5.0]
    text = res.table(0.5)
    assert "rate@50%" in text and "x" in text
    assert res.to_dict()["scores"] == [[45.0, 48.0]]


def test_sensitivity_on_a_model_feeds_prune(tuner, tmp_path):
    model = tiny_mlp()
    tuner.train(model, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = sensitivity(model, tuner.evaluate, rates=(0.5, 0.9, 0.98))
    assert res.layers == ("0", "2", "4") and len(res.scores[0]) == 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # the model itself is not pruned
    rates = res.layer_rates(0.8)
    sparseprune.prune(model, 0.8, layer_sparsity=rates)
    assert sparseprune.summary(model).sparsity == pytest.approx(0.8, abs=0.01)
    res.plot(tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 0


def test_sensitivity_rejects_bad_rates(tuner):
    with pytest.raises(ValueError, match="ascending"):
        sensitivity(tiny_mlp(), tuner.evaluate, rates=(0.9, 0.5))


def test_each_trial_prunes_exactly_one_layer_at_its_rate(tuner):
    from sparseprune.pruning.masks import current_mask, masked_tensors

    model = tiny_mlp()
    tuner.train(model, 3)
    seen = []

    def evaluate(m):
        seen.append({t.name: float((~current_mask(t.module, t.param)).float().mean())
                     for t in masked_tensors(m)})
        return tuner.evaluate(m)

    rates = (0.5, 0.98)
    res = sensitivity(model, evaluate, rates=rates)
    assert seen[0] == {}  # the baseline
    trials = iter(seen[1:])
    for layer in res.layers:
        for r in rates:
            masked = next(trials)
            assert list(masked) == [layer] and masked[layer] == pytest.approx(r, abs=0.02)
    assert min(min(row) for row in res.scores) < res.baseline - 5.0
