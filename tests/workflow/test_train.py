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


def test_sharded_batches_give_every_rank_the_same_count():

    x, y = torch.arange(9.0), torch.arange(9)
    for shuffle in (False, True):
        shards = [Batches(x, y, 1, shuffle=shuffle, rank=r, world_size=2) for r in (0, 1)]
        got = [[int(b[1]) for b in s] for s in shards]
        assert len(got[0]) == len(got[1]) == len(shards[0]) == len(shards[1]) == 4
        assert not set(got[0]) & set(got[1])


def test_demo_iterative_budget_follows_the_schedule():
    from sparseprune.demo import iterative_budget
    from sparseprune.pruning import Geometric

    steps = Geometric.from_rate(0.9, 0.2).steps
    assert iterative_budget(30, 1) == (steps, 30 - steps)
    assert iterative_budget(5, 1) == (steps, 0)  # never a negative number of epochs


def test_evaluate_restores_train_mode_when_the_model_raises():
    model = tiny_mlp()

    def broken():
        yield torch.randn(2, 5), torch.zeros(2, dtype=torch.long)  # wrong feature count

    with pytest.raises(RuntimeError):
        evaluate(model, broken())
    assert model.training
