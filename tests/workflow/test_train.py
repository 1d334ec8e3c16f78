import pytest
import torch

from sparseprune.workflow import FineTuneConfig, evaluate, fit
from sparseprune.workflow.data import Batches
from sparseprune.workflow.train import call_train_fn

from .conftest import blobs, tiny_mlp


def test_fit_lowers_loss_and_evaluate_is_percent(tuner):
    model = tiny_mlp()
    before = tuner.evaluate(model)
    losses = tuner.train(model, 3)
    assert len(losses) == 3 and losses[-1] < losses[0]
    after = tuner.evaluate(model)
    assert 0.0 <= before <= 100.0 and after > 90.0
    assert not model.training


def test_fit_zero_epochs_and_bad_epochs():
    x, y = blobs(16)
    model = tiny_mlp()
    assert fit(model, Batches(x, y, 8), 0) == []
    with pytest.raises(ValueError, match="epochs"):
        fit(model, Batches(x, y, 8), -1)


def test_lr_scale_reaches_the_optimizer():
    seen = []

    def factory(params, lr):
        seen.append(lr)
        return torch.optim.SGD(params, lr=lr)

    x, y = blobs(16)
    fit(tiny_mlp(), Batches(x, y, 8), 1, FineTuneConfig(lr=0.5, optimizer=factory),
        lr_scale=0.1)
    assert seen == [pytest.approx(0.05)]


def test_call_train_fn_accepts_two_argument_callables():
    calls = []
    call_train_fn(lambda m, e: calls.append(e), tiny_mlp(), 2, 0.1)
    call_train_fn(lambda m, e, lr_scale=1.0: calls.append((e, lr_scale)), tiny_mlp(), 3, 0.1)
    call_train_fn(lambda m, e: calls.append(e), tiny_mlp(), 0, 0.1)  # 0 epochs: not called
    assert calls == [2, (3, 0.1)]


def test_batches_are_seeded_and_cover_the_data():
    x = torch.arange(10.0).unsqueeze(1)
    y = torch.arange(10)
    a = [b[1].tolist() for b in Batches(x, y, 4, shuffle=True, seed=3)]
    b = [b[1].tolist() for b in Batches(x, y, 4, shuffle=True, seed=3)]
    assert a == b and sorted(sum(a, [])) == list(range(10))
    shards = [sum((b[1].tolist() for b in Batches(x, y, 4, rank=r, world_size=2)), [])
              for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(10)) and not set(shards[0]) & set(shards[1])


def test_evaluate_empty_loader_raises():
    with pytest.raises(ValueError, match="no samples"):
        evaluate(tiny_mlp(), [])
