import json

import pytest
import torch

import sparseprune
from sparseprune.pruning import Geometric
from sparseprune.pruning.masks import current_mask, masked_tensors
from sparseprune.workflow import History, iterative_prune, plot_histories

from .conftest import tiny_mlp


def _masks(model):
    return {t.qualname: current_mask(t.module, t.param).clone() for t in masked_tensors(model)}


def test_rounds_follow_the_geometric_schedule(tuner, tmp_path):
    model = tiny_mlp()
    tuner.train(model, 2)
    h = iterative_prune(model, 0.6, tuner.train, tuner.evaluate, rate=0.2, epochs=1,
                        tolerance=None, progress=False, protect=None)
    steps = Geometric.from_rate(0.6, 0.2).steps
    assert len(h.rounds) == steps + 1 and h.best == steps and h.stopped == "target reached"
    assert h.rounds[0].round == 0 and h.rounds[0].target == 0.0
    targets = [r.target for r in h.rounds[1:]]
    assert targets == sorted(targets) and targets[-1] == pytest.approx(0.6)
    sparsities = [r.sparsity for r in h.rounds]
    assert sparsities == sorted(sparsities)
    assert all(r.seconds >= 0 for r in h.rounds)
    assert sparseprune.summary(model).sparsity == pytest.approx(0.6, abs=1e-3)
    assert h.final.params == h.rounds[-1].params
    # JSON round trip and the plot
    path = tmp_path / "h.json"
    h.to_json(path)
    again = History.from_dict(json.loads(path.read_text()))
    assert again == h
    png = tmp_path / "h.png"
    plot_histories([h, again], png, title="t")
    assert png.read_bytes()[:4] == b"\x89PNG"
    h.plot(tmp_path / "h2.png")
    assert "baseline" in str(h)


def test_pruned_weights_stay_pruned_across_rounds(tuner):
    model = tiny_mlp()
    seen = []

    def train(m, epochs, lr_scale=1.0):
        tuner.train(m, epochs, lr_scale)
        seen.append(_masks(m))

    iterative_prune(model, [0.3, 0.6, 0.8], train, tuner.evaluate, epochs=1, tolerance=None,
                    progress=False)
    for earlier, later in zip(seen, seen[1:], strict=False):
        for k in earlier:
            assert not (later[k] & ~earlier[k]).any(), k  # nothing revived


def test_tolerance_stops_and_restores_the_best_round(tuner):
    model = tiny_mlp()
    scores = iter([90.0, 89.5, 89.0, 80.0, 95.0])  # baseline, round 1, 2, 3 (too low), ...
    h = iterative_prune(model, [0.2, 0.4, 0.6, 0.8], tuner.train, lambda m: next(scores),
                        epochs=0, tolerance=2.0, progress=False)
    assert len(h.rounds) == 4 and h.best == 2 and "fell more than 2" in h.stopped
    assert sparseprune.summary(model).sparsity == pytest.approx(h.rounds[2].target, abs=0.02)


def test_tolerance_missed_at_once_restores_the_dense_model(tuner):
    model = tiny_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = iter([90.0, 10.0])
    h = iterative_prune(model, [0.5, 0.9], tuner.train, lambda m: next(scores), epochs=0,
                        tolerance=1.0, progress=False)
    assert h.best == 0 and not masked_tensors(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_baseline_training_and_options_pass_through(tuner):
    model = tiny_mlp()
    h = iterative_prune(model, [0.5], tuner.train, tuner.evaluate, baseline_epochs=3,
                        final_epochs=1, scope="layer", protect=None, progress=False,
                        tolerance=None)
    assert h.baseline > 90.0
    for t in masked_tensors(model):
        assert (~current_mask(t.module, t.param)).float().mean() == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError):
        iterative_prune(tiny_mlp(), [0.5], tuner.train, tuner.evaluate, pattern="nope",
                        progress=False)


def test_progress_bar_and_quiet_mode(tuner, capsys):
    iterative_prune(tiny_mlp(), [0.5], tuner.train, tuner.evaluate, progress=False)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    iterative_prune(tiny_mlp(), [0.5], tuner.train, tuner.evaluate, progress=True)
    assert "round" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:fully pruned")
def test_restoring_a_round_before_a_layer_got_its_mask(tuner):
    # global scope: at 10 % only the small layer is pruned; at 95 % the big one gets a mask too
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    with torch.no_grad():
        model[0].weight.add_(model[0].weight.sign() * 10.0)  # far above every weight of 2
    scores = iter([90.0, 90.0, 10.0])
    h = iterative_prune(model, [0.1, 0.95], tuner.train, lambda m: next(scores), epochs=0,
                        tolerance=1.0, scope="global", protect=None, progress=False)
    assert h.best == 1 and "fell more than" in h.stopped
    assert [t.qualname for t in masked_tensors(model)] == ["2.weight"]
    assert not hasattr(model[0], "weight_orig") and model[0].weight.abs().min() > 0


def test_nan_accuracy_is_a_tolerance_failure(tuner):
    model = tiny_mlp()
    scores = iter([90.0, 90.0, float("nan")])
    h = iterative_prune(model, [0.2, 0.4], tuner.train, lambda m: next(scores), epochs=0,
                        tolerance=2.0, progress=False)
    assert h.best == 1 and "fell more than" in h.stopped
