"""Latency budget: per-layer table built once and cached; the measured ratio meets the budget.

Timing here is done by deterministic clocks (MACs and parameters), so the tests check the
planning and calibration logic, not this machine's speed (bench/ measures that).
"""

import json
import warnings

import numpy as np
import pytest
import torch

from sparseprune.structured import WallClock, count_macs, count_params, plan

from .models import ResNet18, ViT, randomize_bn


class MacClock(WallClock):
    """Layers alone cost their MACs; a whole model also pays per parameter and a fixed overhead
    (a quarter of the unpruned model's cost) that the per-layer table cannot see."""

    def __init__(self, param_cost: float = 30.0, overhead: float = 0.25) -> None:
        super().__init__()
        self.param_cost = param_cost
        self.overhead = overhead

    def cost(self, model, inputs) -> float:
        return (count_macs(model, inputs) + self.param_cost * count_params(model)) * 1e-9

    def layer(self, module, inputs) -> float:
        return count_macs(module, inputs) * 1e-9

    def split(self, model, inputs, names):
        """The whole model as ``layer`` prices it, and each named module by ``layer`` on the
        inputs it gets inside the model (deterministic, like ``layer``)."""
        seen: dict[str, list] = {}
        hooks = [model.get_submodule(n).register_forward_hook(
            lambda m, a, o, n=n: seen.setdefault(n, []).append((m, a))) for n in names]
        with torch.no_grad():
            model(*inputs)
        for h in hooks:
            h.remove()
        parts = {n: sum(self.layer(m, a) for m, a in calls) for n, calls in seen.items()}
        return self.layer(model, inputs), parts

    def ratio(self, small, big, inputs) -> float:
        big_cost = self.cost(big, inputs)
        extra = self.overhead * big_cost
        return (self.cost(small, inputs) + extra) / (big_cost + extra)


class SlowClock(MacClock):
    """Every plan measures over budget; the smaller the model, the faster (but never enough)."""

    def ratio(self, small, big, inputs) -> float:
        return 0.9 + 0.05 * count_params(small) / count_params(big)


class CountingClock(MacClock):
    def __init__(self) -> None:
        super().__init__()
        self.layers = 0

    def layer(self, module, inputs) -> float:
        self.layers += 1
        return super().layer(module, inputs)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEPRUNE_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def one_thread():
    # Two OpenMP threads on a shared 2-core machine make timings meaningless.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_latency_budget_uses_a_cached_table(cache, one_thread):
    torch.manual_seed(0)
    model = randomize_bn(ResNet18(width=32))
    x = torch.randn(1, 3, 64, 64)
    p = plan(model, x, latency=0.8, round_to=8, min_channels=8, calibrate=0, progress=False)
    assert p.after["latency_s"] <= 0.8 * p.before["latency_s"] * 1.0001
    assert p.after["macs"] < p.before["macs"]
    assert p.measured == {}
    assert len(list(cache.glob("latency-*.json"))) == 1
    clock = CountingClock()
    plan(model, x, latency=0.9, round_to=8, min_channels=8, calibrate=0, progress=False,
         timer=clock)
    # table reused: only the whole model with each layer inside it (to level the cached
    # curves) and the per-op probe are timed, not 9 points per distinct layer
    (path,) = cache.glob("latency-*.json")
    distinct = len(json.loads(path.read_text()))
    timed_calls = len({it.module for it in p.graph.macs_items if it.module in p.graph.layer_inputs})
    assert 1 < distinct < 20 and clock.layers == 1 + 1 + timed_calls
    small = p.apply()
    torch.testing.assert_close(small(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.7])
def test_calibration_meets_the_measured_budget(cache, budget):
    torch.manual_seed(0)
    model = randomize_bn(ResNet18(width=32))
    x = torch.randn(1, 3, 32, 32)
    clock = MacClock()
    p = plan(model, x, latency=budget, round_to=1, min_channels=4, timer=clock,
             progress=False)
    small = p.apply()
    measured = clock.ratio(small, model, (x,))
    assert measured == pytest.approx(p.measured["ratio"])
    assert budget * 0.97 <= measured <= budget * 1.03, p.measured
    first = p.measured["rounds"][0][1]
    assert abs(first - budget) > 0.03 * budget  # the table alone missed: calibration mattered
    assert "latency measured" in str(p)


def test_attention_is_in_the_latency_model(cache):
    torch.manual_seed(0)
    model = ViT().eval()
    x = torch.randn(2, 3, 32, 32)
    p = plan(model, x, latency=0.6, round_to=1, min_channels=1, timer=MacClock(0.0, 0.0),
             calibrate=0, progress=False)
    table = p.latency_table
    assert table.mac_items, "attention matmuls not charged"
    # With MAC-proportional timing the prediction is the MAC ratio: nothing treated as constant.
    assert p.after["latency_s"] / p.before["latency_s"] == pytest.approx(
        p.after["macs"] / p.before["macs"], rel=0.02)


def test_unmet_budget_warns_and_keeps_the_fastest(cache):
    torch.manual_seed(0)
    model = randomize_bn(ResNet18(width=32))
    x = torch.randn(1, 3, 32, 32)
    clock = SlowClock()
    with pytest.warns(UserWarning, match="not met by measurement"):
        p = plan(model, x, latency=0.5, round_to=1, min_channels=4, timer=clock,
                 calibrate=3, progress=False)
    rounds = [r for _, r in p.measured["rounds"]]
    assert len(rounds) == 3 and len(set(rounds)) == 3
    assert p.measured["ratio"] == min(rounds)
    assert clock.ratio(p.apply(), model, (x,)) == pytest.approx(min(rounds))


def test_budget_the_table_calls_unreachable_is_measured_first(cache):
    torch.manual_seed(0)
    model = randomize_bn(ResNet18(width=32))
    x = torch.randn(1, 3, 32, 32)
    kw = dict(round_to=1, min_channels=4, min_ratio=0.5, progress=False)
    with pytest.raises(ValueError, match="unreachable"):  # the table alone says no
        plan(model, x, latency=0.25, timer=MacClock(), calibrate=0, **kw)
    # this clock measures small models faster than the table predicts: the budget holds
    fast = MacClock(param_cost=0.0, overhead=-0.2)
    p = plan(model, x, latency=0.25, timer=fast, **kw)
    assert 0.25 * 0.97 <= p.measured["ratio"] <= 0.25 * 1.03
    assert len(p.measured["rounds"]) > 1  # started from the floor plan, then grew back
    with pytest.raises(ValueError, match="smallest plan the floors allow .* measured"):
        plan(model, x, latency=0.05, timer=fast, **kw)


def test_bad_calibration_options():
    with pytest.raises(ValueError, match="calibrate"):
        plan(ResNet18(), torch.randn(1, 3, 32, 32), latency=0.5, calibrate=-1)
    with pytest.raises(ValueError, match="tolerance"):
        plan(ResNet18(), torch.randn(1, 3, 32, 32), latency=0.5, tolerance=0)


def test_memory_items_skip_views_and_count_inplace_ops():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(inplace=True),
        torch.nn.Flatten(), torch.nn.Dropout(), torch.nn.Linear(8 * 6 * 6, 4),
    ).eval()
    from sparseprune.structured import trace

    graph = trace(model, torch.randn(2, 3, 8, 8))
    names = [it.module for it in graph.memory_items]
    # conv and linear are costed by MACs; flatten is a view; eval dropout hands x back
    assert names == ["1", "2"]
    bn = graph.memory_items[0]
    assert bn.base == 2 * 8 * 6 * 6 and len(bn.dims) == 1

    class Residual(torch.nn.Module):
        def forward(self, x):
            y = x.view(2, -1)
            y += 1.0
            return y.relu_()

    graph = trace(Residual(), torch.randn(2, 3, 4))
    assert len(graph.memory_items) == 2  # the in-place add and relu_, not the view


def test_fold_bn_budget_is_measured_folded(cache):
    from sparseprune.structured import fold_batchnorm

    torch.manual_seed(0)
    model = randomize_bn(ResNet18(width=32))
    x = torch.randn(1, 3, 32, 32)
    clock = MacClock()
    p = plan(model, x, latency=0.5, round_to=1, min_channels=4, fold_bn=True, timer=clock,
             progress=False)
    small = p.apply()  # folded by default, as it was measured
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in small.modules())
    assert p.apply(fold_bn=False).stem[1].__class__ is torch.nn.BatchNorm2d
    measured = clock.ratio(small, fold_batchnorm(model), (x,))
    assert measured == pytest.approx(p.measured["ratio"])
    assert 0.5 * 0.97 <= measured <= 0.5 * 1.03
    unfolded = plan(model, x, latency=0.5, round_to=1, min_channels=4, timer=clock, calibrate=0,
                    progress=False)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    # folded BatchNorms cost nothing in the table's model
    assert len(unfolded.latency_table.memory_items) - len(p.latency_table.memory_items) == n_bn


def test_functional_model_without_timed_layers(cache):
    class Functional(torch.nn.Module):  # matmuls written with F.linear: nothing to time alone
        def __init__(self) -> None:
            super().__init__()
            self.w1 = torch.nn.Parameter(torch.randn(64, 16))
            self.w2 = torch.nn.Parameter(torch.randn(4, 64))

        def forward(self, x):
            return torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(x, self.w1)),
                                              self.w2)

    model = Functional()
    x = torch.randn(8, 16)
    p = plan(model, x, latency=0.6, round_to=1, min_channels=1, timer=MacClock(0.0, 0.0),
             calibrate=0, progress=False)
    assert p.latency_table.items == [] and p.latency_table.mac_items
    assert p.after["latency_s"] <= 0.6 * p.before["latency_s"] * 1.0001
    assert p.apply().w1.shape[0] < 64


class TwiceAsSlowClock(MacClock):
    def layer(self, module, inputs) -> float:
        return 2 * super().layer(module, inputs)


def test_cached_table_is_scaled_to_the_machine_now(cache):
    """A table from the cache keeps its shape but takes its level from the layer's time inside
    the model now: on a machine twice as slow every prediction doubles (the remainder measured
    in the same runs stays consistent with it)."""
    torch.manual_seed(0)
    model = randomize_bn(ResNet18(width=32))
    x = torch.randn(1, 3, 32, 32)
    first = plan(model, x, latency=0.6, calibrate=0, timer=MacClock(), progress=False)
    again = plan(model, x, latency=0.6, calibrate=0, timer=TwiceAsSlowClock(), progress=False)
    assert again.before["latency_s"] == pytest.approx(2 * first.before["latency_s"])
    assert np.array_equal(again.keep, first.keep)
    table, fresh = first.latency_table, again.latency_table
    for (a, _, _), (b, _, _) in zip(table.items, fresh.items, strict=True):
        np.testing.assert_allclose(b, 2 * a)


def test_cache_key_tells_cpus_with_one_name_apart(monkeypatch):
    """Zen 3 and Zen 4 VMs both report "AMD EPYC": family, model and flags tell them apart."""
    from sparseprune.structured import latency

    def cpuinfo(model: str, flags: str) -> str:
        one = (f"processor\t: 0\ncpu family\t: 25\nmodel\t\t: {model}\nmodel name\t: AMD EPYC\n"
               f"stepping\t: 1\nflags\t\t: {flags}\n\n")
        return one + one.replace("processor\t: 0", "processor\t: 1")

    names = []
    for model, flags in (("1", "fpu avx2 fma"), ("17", "fpu avx2 fma avx512f"),
                         ("17", "fpu avx2 fma avx512f")):
        text = cpuinfo(model, flags)
        monkeypatch.setattr(latency.Path, "read_text", lambda self, text=text: text)
        names.append(latency._cpu_name())
    assert names[0] != names[1] and names[1] == names[2]
    assert names[0].startswith("25|1|AMD EPYC|1|flags ")


@pytest.mark.parametrize("bad", [[1.0, 2.0, 3.0], [[0.0] * 3] * 3, "x", None,
                                 [[float("nan")] * 3] * 3, [[1.0, 2.0], [3.0, 4.0]]])
def test_bad_cache_entries_are_measured_again(cache, bad):
    torch.manual_seed(0)
    model = randomize_bn(ResNet18(width=32))
    x = torch.randn(1, 3, 32, 32)
    first = plan(model, x, latency=0.6, calibrate=0, timer=MacClock(), progress=False)
    (path,) = cache.glob("latency-*.json")
    entries = json.loads(path.read_text())
    key = next(iter(entries))
    entries[key] = bad
    path.write_text(json.dumps(entries))
    clock = CountingClock()
    again = plan(model, x, latency=0.6, calibrate=0, timer=clock, progress=False)
    assert np.array_equal(again.keep, first.keep)
    remeasured = np.array(json.loads(path.read_text())[key])
    assert remeasured.shape == (3, 3) and (remeasured > 0).all()  # measured again, saved
    # the bad one timed again (its full width once, then each of the 8 other points against it
    # PAIRS times), the others not (the model split aside)
    from sparseprune.structured.latency_curves import PAIRS

    timed_calls = len({it.module for it in first.graph.macs_items
                       if it.module in first.graph.layer_inputs})
    assert clock.layers == 1 + 1 + timed_calls + 1 + 8 * 2 * PAIRS


def test_wall_clock_ratio_stops_when_precise_or_out_of_time():
    """The real clock: a ratio of two real models, at least min_rounds pairs, at most
    max_time seconds; a loose error bound stops it at min_rounds."""
    torch.manual_seed(0)
    big, small = torch.nn.Linear(64, 64), torch.nn.Linear(64, 16)
    x = torch.randn(8, 64)
    calls = []
    hook = small.register_forward_hook(lambda *a: calls.append(1))
    loose = WallClock(min_time=0.0, min_rounds=5, rel_error=1e9)
    assert loose.ratio(small, big, (x,)) > 0
    assert len(calls) == 1 + 5  # warm-up, then min_rounds pairs
    calls.clear()
    strict = WallClock(min_time=0.0, min_rounds=3, rel_error=0.0, max_time=0.05)
    assert strict.ratio(small, big, (x,)) > 0
    # an error bound of 0 is never met: it went on past min_rounds, to max_time or 200 pairs
    assert 1 + 3 < len(calls) <= 1 + 200
    calls.clear()
    one = WallClock(min_time=0.0, min_rounds=1, rel_error=1e9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no spread of a single pair (ddof=1) is taken
        assert one.ratio(small, big, (x,)) > 0
    assert len(calls) == 1 + 2
    hook.remove()
    ts, tb = WallClock(min_time=0.0, min_rounds=4).times(small, big, (x,))
    assert ts > 0 and tb > 0


def test_grid_points_are_timed_against_the_full_width_so_drift_cancels():
    """A clock that runs 5 % slower on every call (a machine drifting while the table is
    measured): the curve, as ratios to the interleaved full-width timing, stays within one
    call's drift of the true shape; timed point by point it would be off by ~40 %."""
    from sparseprune.structured.latency import LatencyModel
    from sparseprune.structured.latency_curves import GRID

    class Drifting(MacClock):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def layer(self, module, inputs) -> float:
            self.calls += 1
            return super().layer(module, inputs) * (1 + 0.05 * self.calls)

    lin = torch.nn.Linear(64, 128)
    table = np.array(LatencyModel._measure(lin, (8, 64), Drifting(), False))
    exact = np.array(LatencyModel._measure(lin, (8, 64), MacClock(), False))
    assert table.shape == exact.shape == (len(GRID), len(GRID))
    np.testing.assert_allclose(table / table[-1, -1], exact / exact[-1, -1], rtol=0.06)
    assert exact[0, 0] < exact[-1, -1]


def test_noisy_grid_points_get_more_pairs_up_to_a_cap(monkeypatch):
    """A quiet clock stops each point at PAIRS pairs; one whose ratios scatter by ±20 % keeps
    timing until PAIRS_MAX, and the median stays near the true ratio."""
    from sparseprune.structured import latency_curves
    from sparseprune.structured.latency import LatencyModel
    from sparseprune.structured.latency_curves import PAIRS, PAIRS_MAX

    monkeypatch.setattr(latency_curves, "POINT_MAX_TIME", 1e9)  # a loaded machine: count, not time

    class Noisy(MacClock):
        def __init__(self, spread: float) -> None:
            super().__init__()
            self.calls, self.spread = 0, spread

        def layer(self, module, inputs) -> float:
            self.calls += 1
            wobble = (0.0, 1.0, -1.0, 0.5, -0.5)[self.calls % 5] * self.spread
            return super().layer(module, inputs) * (1 + wobble)

    lin = torch.nn.Linear(64, 128)
    quiet, noisy = Noisy(0.0), Noisy(0.2)
    exact = np.array(LatencyModel._measure(lin, (8, 64), quiet, False))
    table = np.array(LatencyModel._measure(lin, (8, 64), noisy, False))
    assert quiet.calls == 1 + 8 * 2 * PAIRS
    assert noisy.calls == 1 + 8 * 2 * PAIRS_MAX
    np.testing.assert_allclose(table / table[-1, -1], exact / exact[-1, -1], rtol=0.3)
