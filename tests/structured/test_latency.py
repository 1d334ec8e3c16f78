"""Latency budget: per-layer table built once, cached, and the predicted budget held."""

import pytest
import torch

from sparseprune.structured import plan

from .models import ResNet18, randomize_bn


@pytest.fixture
def one_thread():
    # Two OpenMP threads on a shared 2-core machine make timings meaningless.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_latency_budget_uses_a_cached_table(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("SPARSEPRUNE_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = randomize_bn(ResNet18(width=32))
    x = torch.randn(1, 3, 64, 64)
    p = plan(model, x, latency=0.8, round_to=8, min_channels=8)
    assert p.after["latency_s"] <= 0.8 * p.before["latency_s"] * 1.0001
    assert p.after["macs"] < p.before["macs"]
    files = list(tmp_path.glob("latency-*.json"))
    assert len(files) == 1
    size = files[0].stat().st_size
    plan(model, x, latency=0.9, round_to=8, min_channels=8)  # table reused, not re-measured
    assert files[0].stat().st_size == size
    small = p.apply()
    torch.testing.assert_close(small(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)
