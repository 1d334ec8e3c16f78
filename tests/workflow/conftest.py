"""Tiny models and data for the workflow tests: seconds, one thread."""

import pytest
import torch
from torch import nn

from sparseprune.workflow import FineTuneConfig, FineTuner
from sparseprune.workflow.data import Batches


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many threads on a small shared box are slower, not faster
    yield
    torch.set_num_threads(threads)


def blobs(n: int = 256, features: int = 8, classes: int = 3, seed: int = 0):
    """Gaussian blobs around fixed centers (``seed`` draws the samples): easy, deterministic."""
    centers = torch.randn(classes, features, generator=torch.Generator().manual_seed(0)) * 3
    g = torch.Generator().manual_seed(seed + 1)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, features, generator=g)
    return x, y


def tiny_mlp(features: int = 8, hidden: int = 32, classes: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.ReLU(), nn.Linear(hidden, classes))


@pytest.fixture
def tuner() -> FineTuner:
    x, y = blobs()
    xt, yt = blobs(128, seed=1)
    return FineTuner(Batches(x, y, 32, shuffle=True), Batches(xt, yt, 128),
                     FineTuneConfig(lr=1e-2))
